"""`GuardMiddleware`: the pure ASGI guard vLLM installs with `--middleware server.guard.app.GuardMiddleware`.

vLLM calls `app.add_middleware(GuardMiddleware)` with no arguments, after its own middleware, so
the guard is the outermost user middleware: it answers bad requests before vLLM's auth, CORS or
routes see them. Configuration comes from the environment of vLLM's process: `MERA_GUARD_CONFIG`
(GuardSettings JSON) and `VLLM_API_KEY`.

Order per HTTP request: request id -> auth -> body (limit, idle timeout) -> content parts of chat
requests -> vLLM with the (possibly rewritten) body replayed. Responses stream through untouched
except for added headers (`x-request-id`, `x-mera-audio-truncated`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import msgspec
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.guard.access_log import access_logger, log_access, request_id
from server.guard.auth import ApiKeyCheck
from server.guard.body import ClientDisconnected, check_declared_length, read_body
from server.guard.config import GuardSettings
from server.guard.content import INLINE_THRESHOLD, ContentValidator
from server.guard.errors import GuardError, error_body
from server.guard.remote import MediaFetcher

AUDIO_TRUNCATED_HEADER = b"x-mera-audio-truncated"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: GuardSettings | None = None,
        api_key: str | None = None,
        fetcher: MediaFetcher | None = None,
    ) -> None:
        self.app = app
        self.settings = settings if settings is not None else GuardSettings.from_env()
        key = api_key if api_key is not None else os.environ.get("VLLM_API_KEY")
        self.auth = ApiKeyCheck(key or None, self.settings)
        s = self.settings
        self.fetcher = fetcher or MediaFetcher(
            s.allowed_media_hosts, s.media_fetch_timeout_s, s.max_body_bytes
        )
        self.validator = ContentValidator(s, self.fetcher)
        self.log = access_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.settings.enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            headers = Headers(scope=scope)
            if not self.auth.is_open(_route(scope), "GET") and not self.auth.authorized(
                headers.get("authorization")
            ):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, receive, send).run()


def _parse_json(body: bytes) -> Any:
    """msgspec (a vLLM dependency) parses 3x faster than json; both keep the last duplicate key,
    and whatever msgspec refuses (NaN literals) gets the standard library's verdict, as vLLM does."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return json.loads(body)


def _route(scope: Scope) -> str:
    return scope["path"].removeprefix(scope.get("root_path", "")) or "/"


class _Exchange:
    """One HTTP request/response, with what the access log needs."""

    def __init__(self, guard: GuardMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard = guard
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = Headers(scope=scope)
        self.request_id = request_id(self.headers.get("x-request-id"))
        self.started = time.perf_counter()
        self.status = 0
        self.body_bytes = 0
        self.response_bytes = 0
        self.guard_code: str | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []

    async def run(self) -> None:
        g = self.guard
        method = self.scope["method"]
        route = _route(self.scope)
        try:
            try:
                if not g.auth.is_open(route, method) and not g.auth.authorized(
                    self.headers.get("authorization")
                ):
                    raise GuardError(
                        401,
                        "missing or invalid API key (send 'Authorization: Bearer <key>')",
                        "invalid_api_key",
                    )
                body = None
                if (
                    method in BODY_METHODS
                    or "content-length" in self.headers
                    or "transfer-encoding" in self.headers
                ):
                    check_declared_length(self.headers.get("content-length"), g.settings.max_body_bytes)
                    body = await read_body(
                        self.receive, g.settings.max_body_bytes, g.settings.body_read_timeout_s
                    )
                    self.body_bytes = len(body)
                    if method == "POST":
                        body = await self._validate(body)
            except ClientDisconnected:
                self.status = 499  # nginx's "client closed request"; nothing is sent
                return
            except GuardError as exc:
                self.guard_code = exc.code
                await self._reply_error(exc)
                return
            await g.app(
                self._forwarded_scope(body),
                self._replay(body) if body is not None else self.receive,
                self._send_wrapped,
            )
        except BaseException:
            if not self.status:
                self.status = 500
            raise
        finally:
            log_access(
                g.log,
                request_id=self.request_id,
                method=method,
                route=route,
                status=self.status,
                duration_ms=round((time.perf_counter() - self.started) * 1000, 2),
                body_bytes=self.body_bytes,
                response_bytes=self.response_bytes,
                guard=self.guard_code,
            )

    async def _validate(self, body: bytes) -> bytes:
        """Chat payloads are checked; anything that is not a JSON object goes to vLLM as is."""
        if not body:
            return body
        try:
            # No textual pre-filter: JSON escapes ("\u006dessages") would slip past one.
            if len(body) > INLINE_THRESHOLD:
                payload: Any = await asyncio.to_thread(_parse_json, body)
            else:
                payload = _parse_json(body)
        except ValueError:
            return body  # vLLM answers malformed JSON with its own 400
        if not isinstance(payload, dict):
            return body
        outcome = await self.guard.validator.validate(payload)
        if outcome.audio_truncated:
            self.extra_headers.append((AUDIO_TRUNCATED_HEADER, str(outcome.audio_truncated).encode()))
        if outcome.rewritten:
            body = (await asyncio.to_thread(json.dumps, payload)).encode()
        return body

    def _forwarded_scope(self, body: bytes | None) -> Scope:
        """The request id travels inward too, so vLLM's own X-Request-Id middleware agrees with ours;
        a rewritten body needs its new length."""
        drop = (
            (b"x-request-id", b"content-length", b"transfer-encoding")
            if body is not None
            else (b"x-request-id",)
        )
        raw = [(k, v) for k, v in self.scope["headers"] if k not in drop]
        raw.append((b"x-request-id", self.request_id.encode()))
        if body is not None:
            raw.append((b"content-length", str(len(body)).encode()))
        return {**self.scope, "headers": raw}

    def _replay(self, body: bytes) -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await self.receive()  # afterwards: wait for the client's disconnect, as vLLM expects

        return receive

    async def _send_wrapped(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", self.request_id.encode()))
            headers.extend(self.extra_headers)
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
        await self.send(message)

    async def _reply_error(self, exc: GuardError) -> None:
        body = error_body(exc.status, exc.message, exc.code, exc.param)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.request_id.encode()),
        ]
        if exc.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if exc.close_connection:
            headers.append((b"connection", b"close"))
        self.status = exc.status
        self.response_bytes = len(body)
        await self.send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
