"""A small OpenAI-ish HTTP server on loopback that misbehaves on purpose (fault injection only).

It speaks just enough HTTP/1.1 for httpx: `/health`, `/v1/models`, `/v1/chat/completions`. Each
chat request takes the next behaviour from a script (then `default`):
  "ok" (echo a completion), "429" (with Retry-After: 0), "400" (with an OpenAI error message), any
  other status code ("503", "401", "520", ...; with an error message), "<code>:<retry-after>" (that
  status with a Retry-After of seconds, or "date+N": an HTTP date N s ahead), "drop" (close the
  connection without answering), "slow:<seconds>" (then ok), "hang" (never answer),
  "garbage" (200 JSON that is not a completion), "null" (a completion with `content: null`),
  "nochoices" (`choices: []`), "notjson" (200 with an HTML page), "truncate" (Content-Length says
  more than is sent, then the connection closes), "stall" (headers and half a body, then nothing),
  "huge:<MB>" (a 200 of that size, with Content-Length), "hugechunked:<MB>" (the same, chunked:
  no length announced), "badgzip" (a body that says gzip and is not), "redirect" (307 to https://).
With `api_key` set, chat requests without that bearer key get 401 (counted, like vLLM's auth), and
so does `/v1/models` when `models_need_key`. `models_status` / `health_status` change what those
routes answer (404 = the route does not exist, as on a gateway without them).
`max_in_flight` is the most chat requests it held at once (checks the client's concurrency bound).
It counts requests per distinct message list (media included) so tests can prove nothing was
sent twice. `stop()`/`start()` take it off the network and back, as a crashed server would be;
`healthy = False` makes `/health` answer 503 (a server that is up but not ready).

With `keep_bodies=False` and only "ok", it answers without even parsing the body (benchmark echo).
Standalone (an instantly answering echo endpoint for bench/, in its own process):
    python -m tests.faults --port 8123
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import threading
import time
from collections import Counter, deque

from tests.server_process import free_port


class FaultServer:
    def __init__(self, script: list[str] | None = None, default: str = "ok", port: int | None = None,
                 answers: list[str] | None = None, keep_bodies: bool = True, api_key: str | None = None) -> None:
        self.answers = answers or ["ОТВЕТ A"]  # completions, cycled
        self.script: deque[str] = deque(script or [])
        self.default = default
        self.port = port or free_port()
        self.chat_requests = 0
        self.per_prompt: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.keep_bodies = keep_bodies  # off for long benchmark runs: bodies carry base64 media
        self.healthy = True
        self.health_status: int | None = None  # overrides `healthy` when set (404: no /health route)
        self.models_status = 200
        self.metrics: str | None = None  # a Prometheus page for /metrics (vLLM's); None: 404, as a gateway answers
        self.models_need_key = False
        self.models_requests = 0
        self.api_key = api_key
        self.in_flight = 0
        self._writers: set[asyncio.StreamWriter] = set()  # open connections, cut on stop() like a crash
        self.max_in_flight = 0
        self.health_checks = 0
        self.headers: list[dict[str, str]] = []  # each request's headers (names lower-cased), in arrival order
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle (callable from any thread) ----------------------------------------------------
    def start(self) -> FaultServer:
        async def _start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        asyncio.run_coroutine_threadsafe(_start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def _stop():
            if self._server is not None:
                self._server.close()
                for writer in list(self._writers):  # kept-alive connections die with the server too
                    writer.transport.abort()
                await self._server.wait_closed()
                self._server = None

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)

    def drop_connections(self) -> None:
        """Close every kept-alive connection but keep listening (the server's idle timeout, or a proxy's)."""
        async def _drop():
            for writer in list(self._writers):
                writer.close()

        asyncio.run_coroutine_threadsafe(_drop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()  # the loop thread is a daemon: closing it here would race connections still closing

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- HTTP ------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.headers.append(headers)
                if not await self._respond(method, path, body, writer, headers):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter,
                       headers: dict[str, str] | None = None) -> bool:
        authorized = not self.api_key or (headers or {}).get("authorization") == f"Bearer {self.api_key}"
        if path == "/health":
            self.health_checks += 1
            return self._send(writer, self.health_status or (200 if self.healthy else 503), {})
        if path == "/v1/models":
            self.models_requests += 1
            if self.models_need_key and not authorized:
                return self._send(writer, 401, {"error": "Unauthorized"})
            if self.models_status != 200:
                return self._send(writer, self.models_status, {"error": {"message": f"models {self.models_status}"}})
            return self._send(writer, 200, {"object": "list", "data": [{"id": "fault-model", "object": "model"}]})
        if path == "/metrics" and self.metrics is not None:
            return self._send_raw(writer, 200, self.metrics.encode(), {"Content-Type": "text/plain; version=0.0.4"})
        if path != "/v1/chat/completions":
            return self._send(writer, 404, {"error": {"message": "not found"}})
        if not self.keep_bodies and self.default == "ok" and not self.script:  # benchmark echo: answer at once
            self.chat_requests += 1
            return self._send(writer, 200, _completion(None, self.answers[0]))
        payload = json.loads(body)
        with self._lock:
            self.chat_requests += 1
            if self.keep_bodies:
                self.bodies.append(payload)
            if not authorized:
                return self._send(writer, 401, {"error": "Unauthorized"})
            behaviour = self.script.popleft() if self.script else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._behave(behaviour, payload, writer)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _behave(self, behaviour: str, payload: dict, writer: asyncio.StreamWriter) -> bool:
        prompt = hashlib.sha256(json.dumps(payload.get("messages"), sort_keys=True).encode()).hexdigest()
        if behaviour == "drop":
            return False
        if behaviour.startswith("slow:"):
            await asyncio.sleep(float(behaviour.split(":", 1)[1]))
            behaviour = "ok"
        code, _, retry_after = behaviour.partition(":")
        if code.isdigit() and len(code) == 3:
            extra = {}
            if retry_after.startswith("date+"):
                extra["Retry-After"] = email.utils.formatdate(time.time() + float(retry_after[5:]), usegmt=True)
            elif retry_after or code == "429":
                extra["Retry-After"] = retry_after or "0"
            if code == "400":
                return self._send(writer, 400, {"error": {"message": "This model's maximum context length is 10 tokens",
                                                          "type": "BadRequestError", "code": 400}})
            if code == "429":
                return self._send(writer, 429, {"error": {"message": "rate limited"}}, extra)
            return self._send(writer, int(code), {"error": {"message": f"injected {code}"}}, extra)
        if behaviour == "hang":
            await asyncio.sleep(3600)
            return False
        if behaviour == "garbage":
            return self._send(writer, 200, {"not": "a completion"})
        if behaviour == "null":
            body = _completion(payload.get("model"), "")
            body["choices"][0]["message"]["content"] = None
            body["choices"][0]["finish_reason"] = "length"
            return self._send(writer, 200, body)
        if behaviour == "nochoices":
            return self._send(writer, 200, {"id": "chatcmpl-fault", "object": "chat.completion", "choices": []})
        if behaviour == "notjson":
            page = b"<html><body><h1>502 Bad Gateway</h1> but with status 200</body></html>"
            return self._send_raw(writer, 200, page, {"Content-Type": "text/html"})
        if behaviour == "badgzip":  # a body that claims gzip and is not: httpx raises DecodingError
            return self._send_raw(writer, 200, b"\x1f\x8bnot gzip at all", {"Content-Type": "application/json",
                                                                            "Content-Encoding": "gzip"})
        if behaviour == "redirect":
            return self._send(writer, 307, {}, {"Location": f"https://127.0.0.1:{self.port}/v1/chat/completions"})
        if behaviour in ("truncate", "stall"):
            data = json.dumps(_completion(payload.get("model"), self.answers[0] * 50)).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            writer.write(head.encode() + data[: len(data) // 2])
            await writer.drain()
            if behaviour == "stall":
                await asyncio.sleep(3600)
            return False
        if behaviour.startswith(("huge:", "hugechunked:")):
            await self._send_huge(writer, int(float(behaviour.split(":", 1)[1]) * 1024 * 1024),
                                  chunked=behaviour.startswith("hugechunked"))
            return False
        with self._lock:
            self.per_prompt[prompt] += 1
            answer = self.answers[(sum(self.per_prompt.values()) - 1) % len(self.answers)]
        return self._send(writer, 200, _completion(payload.get("model"), answer))

    @classmethod
    def _send(cls, writer: asyncio.StreamWriter, status: int, body: dict, headers: dict | None = None) -> bool:
        return cls._send_raw(writer, status, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                                          **(headers or {})})

    @staticmethod
    def _send_raw(writer: asyncio.StreamWriter, status: int, data: bytes, headers: dict) -> bool:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        return True

    @staticmethod
    async def _send_huge(writer: asyncio.StreamWriter, size: int, *, chunked: bool) -> None:
        """A JSON completion of `size` bytes, generated as it is written (never held whole here either)."""
        prefix = b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "'
        suffix = b'"}, "finish_reason": "stop"}]}'
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        block = b"A" * (1024 * 1024)
        pieces = [prefix] + [block] * ((size - len(prefix) - len(suffix)) // len(block))
        pieces.append(b"A" * (size - len(prefix) - len(suffix) - len(block) * (len(pieces) - 1)) + suffix)
        for piece in pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


def _completion(model: str | None, answer: str) -> dict:
    return {
        "id": "chatcmpl-fault", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }  # fmt: skip


def main() -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Run the fault server alone (default: an instant echo).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--default", default="ok", help='behaviour for every chat request ("ok", "slow:0.1", ...)')
    args = parser.parse_args()
    server = FaultServer(default=args.default, port=args.port, keep_bodies=False).start()
    print(f"fault server on {server.base_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    print(f"served {server.chat_requests} chat requests", flush=True)
    server.close()


if __name__ == "__main__":
    main()
