"""`python -m kdtune train|tune|report ...`, the same as the `kdtune` command."""

from kdtune.cli import main

main()
