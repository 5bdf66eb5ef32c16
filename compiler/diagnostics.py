"""Source locations and the one error type every stage raises for user-facing problems."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """Where an op came from: `file:line:col` of a text file, or a layer of an imported model."""

    file: str = "<unknown>"
    line: int = 0
    col: int = 0
    layer: str | None = None
    # The source line, kept for the caret display; not part of the identity of a location.
    line_text: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        if self.layer is not None:
            return f"{self.file}: layer '{self.layer}'"
        if self.line:
            return f"{self.file}:{self.line}:{self.col}"
        return self.file

    def caret(self) -> str:
        """The source line and a caret under the column, or '' when the text is unknown."""
        if self.line_text is None or not self.col:
            return ""
        return f"{self.line_text}\n{' ' * (self.col - 1)}^"


UNKNOWN_LOC = Loc()


class CompileError(Exception):
    """A problem in the user's input or options, reported as `loc: error: message`."""

    def __init__(self, message: str, loc: Loc | None = None, note: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc or UNKNOWN_LOC
        self.note = note

    def one_line(self) -> str:
        # Errors about options (a pass pipeline, a flag) have no place in a file to point at.
        text = f"{self.loc}: error: {self.message}" if self.loc != UNKNOWN_LOC else f"error: {self.message}"
        if self.note:
            text += f" ({self.note})"
        return text

    def render(self) -> str:
        """GCC style: the one-line error, then the source line with a caret when known."""
        caret = self.loc.caret()
        return self.one_line() + ("\n" + caret if caret else "")

    def __str__(self) -> str:
        return self.one_line()


def read_text(path: str) -> str:
    """A text file's content ('-' is stdin), or a one-line error naming the file."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CompileError("no such file", Loc(path)) from None
    except UnicodeDecodeError as e:
        raise CompileError(f"not a text file ({e.reason} at byte {e.start})", Loc(path)) from None
