"""The `kdtune` command: `kdtune train|tune|report ...`, one module per subcommand.

`scripts/main.py`, `scripts/tune.py` and `scripts/report.py` run the same modules from a checkout.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kdtune import __version__
from kdtune.cli.args import ArgumentParser, run_cli

COMMANDS = {
    "train": "train a teacher, a student or a distilled student",
    "tune": "sweep temperature and alpha with Ray Tune",
    "report": "tables and figures of an experiment",
}


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="kdtune", description="Knowledge-distillation sweeps over temperature and alpha.",
                       epilog="commands:\n" + "\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())
                       + "\n\n'kdtune COMMAND --help' lists a command's flags.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kdtune {__version__}")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv[:1])  # what follows the command is the command's own
    command = importlib.import_module(f"kdtune.cli.{args.command}")
    sys.argv[0] = f"kdtune {args.command}"  # argparse names the program after it: "kdtune tune: error: ..."
    run_cli(command.main, argv[1:])
