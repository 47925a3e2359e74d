"""The one base class for errors a user can act on.

A `UserError` is a mistake or a condition outside the program (a typo in a flag, a missing folder, a dead
endpoint, a full disk): the CLI prints `mera-eval <command>: <message>` on one line, no traceback (unless
`--debug`), and exits with `exit_code`. The message names the problem and, where there is one, the fix.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    exit_code: int = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def one_line(self) -> str:
        text = str(self).strip()
        return f"{text}; {self.fix}" if self.fix else text
