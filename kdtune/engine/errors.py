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
