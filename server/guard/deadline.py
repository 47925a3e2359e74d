"""A deadline for the request head (request line and headers), which uvicorn lacks.

uvicorn closes idle keep-alive connections, but a request head that arrives slowly is never timed
out: a client that opens a connection and trickles a partial header line holds it forever
(slowloris). `with_header_deadline` wraps uvicorn's HTTP protocol class: a timer starts when a
connection opens and when a response completes, and stops once a request's headers are in. When it
fires, the connection is answered 408 (if part of a request had arrived) and closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
log = logging.getLogger("mera.guard")


def with_header_deadline(protocol_class: type[asyncio.Protocol], timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's protocol (httptools or h11) with a header deadline of `timeout_s` seconds."""
    if getattr(protocol_class, "header_timeout_s", None) is not None:
        protocol_class = protocol_class.__mro__[1]  # already wrapped: replace its deadline

    class HeaderDeadline(protocol_class):  # type: ignore[misc, valid-type]
        header_timeout_s = timeout_s
        _header_timer: asyncio.TimerHandle | None = None
        _partial_head = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self._header_timer is None:
                return
            upgraded = self.transport.get_protocol() is not self  # a websocket took the connection over
            if upgraded or self.cycle is not cycle:  # a request's headers are complete
                self._disarm_header_deadline()
            else:
                self._partial_head = True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self.cycle is None or self.cycle.response_complete  # no pipelined request running
            if idle and not self.transport.is_closing():
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._partial_head = False
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

        def _disarm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline_passed(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._partial_head:
                self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{protocol_class.__name__}"
    return HeaderDeadline


def install(app: Any, timeout_s: float) -> bool:
    """Wrap the protocol of the uvicorn server that serves `app` (vLLM keeps it in
    `app.state.server` before the lifespan starts, and uvicorn reads the protocol class per
    connection). False when there is no such server (the app is not served by vLLM's launcher)."""
    server = getattr(getattr(app, "state", None), "server", None)
    config = getattr(server, "config", None)
    protocol = getattr(config, "http_protocol_class", None)
    if protocol is None:
        log.warning("header deadline not installed: no uvicorn server found in app.state.server")
        return False
    config.http_protocol_class = with_header_deadline(protocol, timeout_s)
    return True
