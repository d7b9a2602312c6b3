"""Torch training: students, transforms, the trainer (single process or DDP), checkpoints.

Imports point down only: distill may import runtime, never toolkit or export.
"""
