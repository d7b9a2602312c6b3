"""`python -m toolkit` (also what torchrun launches: torchrun --nproc_per_node N -m toolkit train ...)."""

from toolkit.cli import main

main()
