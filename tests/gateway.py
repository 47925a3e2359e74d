"""A tiny loopback reverse proxy like an API gateway: `<prefix>/v1/*` is forwarded to an upstream server's
`/v1/*` (headers and body as they came, the key included); every other path, `/health` at the root and
under the prefix too, is 404. It shows that the evaluator works with a base URL that carries a path and
with a server that has no health route of its own.
"""

from __future__ import annotations

import asyncio
import threading

import httpx

from tests.server_process import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


class PrefixGateway:
    def __init__(self, upstream: str, prefix: str = "/openai") -> None:
        self.upstream = upstream.rstrip("/")
        self.prefix = prefix
        self.port = free_port()
        self.forwarded = 0
        self.not_found: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}/v1"

    def __enter__(self) -> PrefixGateway:
        async def start():
            self._http = httpx.AsyncClient(timeout=600)
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._server.close()
            await self._http.aclose()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if path.startswith(self.prefix + "/v1/"):
                    self.forwarded += 1
                    upstream = await self._http.request(
                        method, self.upstream + path.removeprefix(self.prefix), content=body,
                        headers={k: v for k, v in headers.items() if k not in HOP_BY_HOP})
                    status, data, kind = upstream.status_code, upstream.content, upstream.headers.get("content-type", "")
                else:
                    self.not_found.append(path)
                    status, data, kind = 404, b'{"message": "no route"}', "application/json"
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n\r\n"
                             .encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
