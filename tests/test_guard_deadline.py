"""Slow clients and failing apps against a real uvicorn server (in process, on loopback), with the
guard installed as vLLM installs it: inside the app, the server in `app.state.server`.

A request head trickled in or never sent is closed at the header deadline; a body trickled in is
answered 408 at the body deadline, however often bytes arrive; an exception inside the app is
answered on a connection that serves the next request.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.guard.app import GuardMiddleware
from server.guard.config import GuardSettings
from server.guard.deadline import with_header_deadline

HEADER_S, BODY_S = 0.5, 1.0
seen_ports: list[int] = []


async def ok(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"port": request.client.port})


async def explode(request: Request) -> JSONResponse:
    seen_ports.append(request.client.port)
    raise RuntimeError("boom")


@pytest.fixture
async def server():
    app = Starlette(routes=[Route("/ok", ok, methods=["GET", "POST"]), Route("/explode", explode, methods=["POST"])])
    app.add_middleware(GuardMiddleware, settings=GuardSettings(header_timeout_s=HEADER_S, body_timeout_s=BODY_S),
                       api_key="")  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    served = uvicorn.Server(config)
    app.state.server = served  # as vLLM's serve_http does before serving
    task = asyncio.create_task(served.serve())
    while not served.started:
        await asyncio.sleep(0.01)
    yield port, config
    served.should_exit = True
    await task


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    return await asyncio.wait_for(reader.read(), limit)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float, times: int) -> None:
    """Send `data` every `every_s` seconds until the server hangs up."""
    for _ in range(times):
        await asyncio.sleep(every_s)
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            return


async def test_the_guard_installs_the_header_deadline_at_startup(server):
    _, config = server
    assert config.http_protocol_class.header_timeout_s == HEADER_S


async def test_a_trickled_partial_header_is_answered_408_and_closed(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    sender = asyncio.create_task(trickle(writer, b"a", 0.15, 20))  # never finishes the header line
    reply = await read_until_closed(reader, 5)
    sender.cancel()
    assert reply.startswith(b"HTTP/1.1 408") and HEADER_S <= loop.time() - started < HEADER_S + 2
    writer.close()


async def test_a_connection_that_never_sends_is_closed(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await read_until_closed(reader, HEADER_S + 2) == b""
    writer.close()


async def test_a_trickled_body_gets_408_at_the_total_deadline(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    sender = asyncio.create_task(trickle(writer, b" ", 0.1, 40))  # never idle long, never done
    reply = await read_until_closed(reader, 5)
    sender.cancel()
    assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply
    assert BODY_S <= loop.time() - started < BODY_S + 2
    writer.close()


async def http(reader, writer, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split()[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return status, json.loads(await reader.readexactly(length))


async def test_an_exception_in_the_app_leaves_the_connection_usable(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, failed = await http(reader, writer, "POST", "/explode", b"{}")
    assert status == 500 and failed["error"]["message"]
    status, fine = await http(reader, writer, "GET", "/ok")  # same connection, after the header deadline too
    assert status == 200 and fine["port"] == seen_ports[-1]
    await asyncio.sleep(HEADER_S / 2)
    assert (await http(reader, writer, "GET", "/ok"))[0] == 200
    writer.close()


def test_wrapping_twice_replaces_the_deadline():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    once = with_header_deadline(H11Protocol, 1.0)
    twice = with_header_deadline(once, 2.0)
    assert twice.header_timeout_s == 2.0 and twice.__mro__[1] is H11Protocol
