"""Errors a `mera-serve` user can act on: one line naming the problem and the fix, no traceback.

Same contract as the evaluator's `evaluator.errors.UserError` (message, `fix`, `exit_code`,
`one_line()`). The server keeps its own base class because the server image ships `server/` only
(docker/server.Dockerfile), so it cannot import the evaluator package.
"""

from __future__ import annotations


class ServeError(Exception):
    exit_code: int = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text}; {self.fix}" if self.fix else text


class SettingsProblem(ServeError):
    """A setting (flag, MERA_SERVE_* variable, key file) is unknown or has a bad value."""


class LaunchError(ServeError):
    """The configuration is valid but cannot be served here (port taken, model folder missing, ...)."""
