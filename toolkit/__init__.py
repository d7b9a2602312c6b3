"""The face of the project: the Typer CLI, recipe loading, run directories, the pipeline.

Thin: each command calls library code in distill/, export/ and runtime/. No library imports toolkit.
"""

__version__ = "0.1.0"
