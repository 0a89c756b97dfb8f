"""The one exception type for mistakes a user can make.

Library code raises `UserError` naming the bad value and what is allowed; the
scripts turn it into one line on stderr and a non-zero exit (see `kdtune.cli.args`).
Internal invariants use `assert` instead.
"""


class UserError(Exception):
    """Bad input from the user: a flag, a file, a data folder, a checkpoint."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line value; exits with the conventional usage code 2."""

    exit_code = 2


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first line, at most `limit` characters (its type's name when it says nothing): what a
    one-line error quotes of a library's message, which may run to pages."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "…"
