"""The one exception type for mistakes a user can make.

Library code raises `UserError` naming the bad value and what is allowed; the
scripts turn it into one line on stderr and a non-zero exit (see `kdtune.cli.args`).
Internal invariants use `assert` instead.
"""

import reprlib


class UserError(Exception):
    """Bad input from the user: a flag, a file, a data folder, a checkpoint."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line value; exits with the conventional usage code 2."""

    exit_code = 2


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """An exception's (or a message's) first line, at most `limit` characters (an exception's type's name when it
    says nothing): what a one-line error quotes of a library's message, which may run to pages."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def quote(value, limit: int = 200) -> str:
    """`value`'s repr for an error line, at most `limit` characters: a bad value may be a whole file's worth.
    reprlib stops at a few items and levels, so that even a huge nested value costs little to quote."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 1000  # quote() cuts to its limit, keeping the start
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 20
_SHORT_REPR.maxlevel = 4
