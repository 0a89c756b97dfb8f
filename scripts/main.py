"""`kdtune train` from a checkout: the command lives in kdtune/cli/train.py (see its --help)."""

from __future__ import annotations

from kdtune.cli.args import run_cli
from kdtune.cli.train import main, parse_args  # noqa: F401  (tests and users import them from here)

if __name__ == "__main__":
    run_cli(main)
