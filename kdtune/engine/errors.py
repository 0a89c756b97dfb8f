"""The one exception type for mistakes a user can make.

Library code raises `UserError` naming the bad value and what is allowed; the
scripts turn it into one line on stderr and a non-zero exit (see `kdtune.cli.args`).
Internal invariants use `assert` instead.
"""

from __future__ import annotations

import re
import reprlib

# Terminal escape sequences: CSI (colours, cursor moves), OSC (titles, links) and the two-byte ones.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without terminal escape sequences, and with every other control character (newlines too) as a
    space: what a one-line message may show of a library's text or of a hostile file name."""
    return _CONTROLS.sub(" ", _ESCAPES.sub("", text))


class UserError(Exception):
    """Bad input from the user: a flag, a file, a data folder, a checkpoint."""

    exit_code = 1

    def __init__(self, message: str):
        # Messages quote file and class names from the user's data: one with an escape sequence in its name must
        # not recolour or clear the terminal that prints the error.
        super().__init__(printable(str(message)))


class UsageError(UserError):
    """A bad command-line value; exits with the conventional usage code 2."""

    exit_code = 2


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """An exception's first line (its type's name when it says nothing), without control codes and at most
    `limit` characters, cut after a sentence or a word with '…': what a one-line error quotes of a library's
    message, which may run to pages."""
    text = _ESCAPES.sub("", str(error))
    lines = [" ".join(printable(line).split()) for line in text.splitlines()]
    line = next((line for line in lines if line), "" if isinstance(error, str) else type(error).__name__)
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    # A cut just after a sentence reads best, else after a word; only a long word without spaces is split.
    sentence = max(cut.rfind(". "), cut.rfind("; "))
    if sentence >= limit // 2:
        return cut[: sentence + 1] + " …"
    word = cut.rfind(" ")
    return (cut[:word] if word >= limit // 2 else cut).rstrip(" ,;:") + "…"


def quote(value, limit: int = 200) -> str:
    """`value`'s repr for an error line, at most `limit` characters: a bad value may be a whole file's worth.
    reprlib stops at a few items and levels, so that even a huge nested value costs little to quote."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 1000  # quote() cuts to its limit, keeping the start
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 20
_SHORT_REPR.maxlevel = 4
