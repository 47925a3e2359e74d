"""OpenAI-style error bodies and the exception the guard's checks raise.

Clients (the openai SDK, our evaluator) read `error.message`; `param` points at the offending
content part (`messages[2].content[1]`) and `code` is a short machine-readable reason.
"""

from __future__ import annotations

import json

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "server_error",
    504: "timeout_error",
}


class GuardError(Exception):
    """A request the guard answers itself, with `status` and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | int,
        param: str | None = None,
        *,
        close_connection: bool = False,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or _TYPES.get(status, "invalid_request_error")
        # 413/408 leave an unread body on the socket: the connection cannot be reused.
        self.close_connection = close_connection

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return GuardError(status, message, code, param).body()
