"""Read a request body under a size limit and a total deadline, without ever holding more than
the limit: a declared Content-Length over the limit is refused before the first byte is read.

The deadline is for the whole body, not per chunk: a client trickling one byte every few seconds
would otherwise hold a connection (and its buffered body) open forever.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive

from server.guard.errors import GuardError


class ClientDisconnected(Exception):
    """The client went away while sending its body; there is nobody to answer."""


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def too_large(limit: int) -> GuardError:
    return GuardError(
        413,
        f"request body exceeds the server's limit of {limit} bytes ({_mib(limit)})",
        "request_too_large",
        close_connection=True,
    )


def check_declared_length(content_length: str | None, limit: int) -> int | None:
    """The declared body size, refused with 413 when it is over the limit."""
    if content_length is None:
        return None
    try:
        declared = int(content_length)
    except ValueError:
        raise GuardError(
            400, "invalid Content-Length header", "invalid_content_length", close_connection=True
        ) from None
    if declared > limit:
        raise too_large(limit)
    return declared


async def read_body(receive: Receive, limit: int, deadline_s: float) -> bytes:
    """The whole body, counting bytes as they arrive (chunked uploads have no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise GuardError(
            408,
            f"request body not received within {deadline_s:g} s (received {size} bytes)",
            "body_timeout",
            close_connection=True,
        ) from None
