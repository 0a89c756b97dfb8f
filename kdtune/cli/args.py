"""What every script shares: one-line errors and exit codes instead of tracebacks."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Callable

from kdtune.engine.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2) rather than usage plus error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def given_options(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> set[str]:
    """The dests of the options the user typed (abbreviated or not), whatever their defaults.

    `args` is `parser.parse_args(argv)`, which has reported any error.  A copy of the parser whose
    defaults are all a sentinel parses `argv` again; what differs from the sentinel was typed.
    """
    unset = object()

    class Unset(list):
        """The sentinel of an append option: argparse copies it and appends what was typed."""

    probe = copy.deepcopy(parser)
    appending = {a.dest for a in probe._actions if isinstance(a, argparse._AppendAction)}
    probe.set_defaults(**{dest: Unset() if dest in appending else unset for dest in vars(args)})
    return {dest for dest, value in vars(probe.parse_args(argv)).items()
            if value is not unset and not (isinstance(value, Unset) and not value)}


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a number > 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a number >= 0")
    return value


def unit_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a number in [0, 1]")
    return value


def smoothing(text: str) -> float:
    """A label-smoothing amount: in [0, 1)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a number in [0, 1)")
    return value


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {what}") from None


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main`; a UserError becomes 'error: ...' on stderr and its exit code, Ctrl-C exit 130."""
    try:
        code = main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted: stored teachers, logit caches and sweep checkpoints are kept (kdtune tune --resume "
              "finishes a sweep)", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
