"""`GuardMiddleware`: the pure ASGI guard vLLM installs with `--middleware server.guard.app.GuardMiddleware`.

vLLM calls `app.add_middleware(GuardMiddleware)` with no arguments, after its own middleware, so
the guard is the outermost user middleware: it answers bad requests before vLLM's auth, CORS or
routes see them. Configuration comes from the environment of vLLM's process: `MERA_GUARD_CONFIG`
(GuardSettings JSON) and `VLLM_API_KEY`.

Order per HTTP request: request id -> auth -> route (refused routes answered here) -> body (size
limit, total deadline) -> JSON depth -> the route's content parts and budgets -> vLLM with the
(possibly rewritten) body replayed. Responses stream through untouched except for added headers
(`x-request-id`, `x-mera-audio-truncated`). An exception inside vLLM's app or the guard becomes a
JSON 500 on a connection that stays usable, where no response had started yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import msgspec
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.guard import deadline
from server.guard.access_log import access_logger, log_access, request_id
from server.guard.auth import ApiKeyCheck
from server.guard.body import ClientDisconnected, check_declared_length, read_body
from server.guard.budgets import json_deeper_than
from server.guard.config import GuardSettings
from server.guard.content import INLINE_THRESHOLD, ContentValidator
from server.guard.errors import GuardError
from server.guard.remote import MediaFetcher
from server.guard.routes import REFUSED_BECAUSE, ROUTES, Shape, route_template

AUDIO_TRUNCATED_HEADER = b"x-mera-audio-truncated"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
log = logging.getLogger("mera.guard")


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
        self.fetcher = fetcher or MediaFetcher(s.allowed_media_hosts, s.media_fetch_timeout_s, s.max_body_bytes)
        self.validator = ContentValidator(s, self.fetcher)
        self.log = access_logger()
        self._deadline_installed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.settings.enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan" and not self._deadline_installed:
            # Before uvicorn accepts the first connection: give its protocol the header deadline.
            self._deadline_installed = deadline.install(scope.get("app"), self.settings.header_timeout_s)
        if scope["type"] == "websocket":
            route = _route(scope)
            headers = Headers(scope=scope)
            refused = ROUTES.get(route_template(route) or "") is Shape.REFUSED
            if refused or (
                not self.auth.is_open(route, "GET") and not self.auth.authorized(headers.get("authorization"))
            ):
                await send({"type": "websocket.close", "code": 1008})
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, receive, send).run()


def _parse_json(body: bytes, max_depth: int) -> Any:
    """msgspec (a vLLM dependency) parses 3x faster than json; both keep the last duplicate key,
    and whatever msgspec refuses (NaN literals) gets the standard library's verdict, as vLLM does.
    Raises ValueError for malformed JSON and GuardError for JSON nested deeper than `max_depth`."""
    try:
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            payload = json.loads(body)
    except RecursionError:
        payload = None
    if payload is None or json_deeper_than(payload, max_depth):
        raise GuardError(
            400, f"JSON body is nested deeper than {max_depth} levels (setting MERA_SERVE_GUARD__MAX_JSON_DEPTH)",
            "json_too_deep",
        )  # fmt: skip
    return payload


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
        self.response_started = False
        self.response_complete = False
        self.body_bytes = 0
        self.response_bytes = 0
        self.guard_code: str | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []

    async def run(self) -> None:
        method = self.scope["method"]
        route = _route(self.scope)
        try:
            try:
                body = await self._admit(method, route)
            except Exception:  # a bug in the guard: the client still gets an answer
                log.exception("guard failed on %s %s (request id %s)", method, route, self.request_id)
                if not self.response_started:
                    await self._reply_error(_internal_error(self.request_id))
                return
            if body is not _ANSWERED:
                await self._call_app(body)
        finally:
            log_access(
                self.guard.log,
                request_id=self.request_id,
                method=method,
                route=route,
                status=self.status,
                duration_ms=round((time.perf_counter() - self.started) * 1000, 2),
                body_bytes=self.body_bytes,
                response_bytes=self.response_bytes,
                guard=self.guard_code,
            )

    async def _admit(self, method: str, route: str) -> Any:
        """The body to forward (None: the request has none), or _ANSWERED when the guard replied."""
        g = self.guard
        has_body = method in BODY_METHODS or "content-length" in self.headers or "transfer-encoding" in self.headers
        try:
            if not g.auth.is_open(route, method, self.headers) and not g.auth.authorized(
                self.headers.get("authorization")
            ):
                raise GuardError(
                    401, "missing or invalid API key (send 'Authorization: Bearer <key>')", "invalid_api_key"
                )
            template = route_template(route)
            shape = ROUTES.get(template) if template else None
            if shape is Shape.REFUSED:
                raise GuardError(
                    403, f"this server does not serve {template}: {REFUSED_BECAUSE[template]}", "route_refused",
                    close_connection=has_body,  # its body stays unread on the socket
                )  # fmt: skip
            if not has_body:
                return None
            check_declared_length(self.headers.get("content-length"), g.settings.max_body_bytes)
            body = await read_body(self.receive, g.settings.max_body_bytes, g.settings.body_timeout_s)
            self.body_bytes = len(body)
            return await self._validate(shape, template or route, body) if body else body
        except ClientDisconnected:
            self.status = 499  # nginx's "client closed request"; nothing is sent
            return _ANSWERED
        except GuardError as exc:
            self.guard_code = exc.code
            await self._reply_error(exc)
            return _ANSWERED

    async def _validate(self, shape: Shape | None, route: str, body: bytes) -> bytes:
        """JSON bodies are checked by their route's shape (None: a route the guard does not know)."""
        depth = self.guard.settings.max_json_depth
        try:
            # No textual pre-filter: JSON escapes ("\u006dessages") would slip past one.
            if len(body) > INLINE_THRESHOLD:
                payload: Any = await asyncio.to_thread(_parse_json, body, depth)
            else:
                payload = _parse_json(body, depth)
        except ValueError:
            if shape is None:
                raise GuardError(
                    415, f"{route} is not a route this server knows, and its body is not JSON the guard can inspect",
                    "unsupported_body",
                ) from None  # fmt: skip
            return body  # vLLM answers malformed JSON with its own 400
        if not isinstance(payload, dict):
            payload = {"body": payload} if shape is None else None
            if payload is None:
                return body  # vLLM's own 400 for a body that is not an object
        outcome = await self.guard.validator.validate(shape, route, payload)
        if outcome.audio_truncated:
            self.extra_headers.append((AUDIO_TRUNCATED_HEADER, str(outcome.audio_truncated).encode()))
        if outcome.rewritten:
            body = (await asyncio.to_thread(json.dumps, payload)).encode()
        return body

    async def _call_app(self, body: bytes | None) -> None:
        try:
            await self.guard.app(
                self._forwarded_scope(body),
                self._replay(body) if body is not None else self.receive,
                self._send_wrapped,
            )
        except Exception as exc:
            # Starlette answers an unhandled exception and re-raises it, and uvicorn then drops the
            # connection, so the client's next request on it fails. Answer here instead, as vLLM's own
            # exception handler would; a response already finished stays as sent.
            log.exception("vLLM's app failed on %s %s (request id %s)", self.scope["method"], self.scope["path"],
                          self.request_id)  # fmt: skip
            if self.response_started and not self.response_complete:
                raise
            if not self.response_started:
                await self._reply_error(_app_error(exc, self.request_id))

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
            self.response_started = True
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", self.request_id.encode()))
            headers.extend(self.extra_headers)
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.response_complete = True
        await self.send(message)

    async def _reply_error(self, exc: GuardError) -> None:
        body = exc.body()
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
        self.response_started = True
        await self.send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.response_complete = True


_ANSWERED = object()


def _app_error(exc: Exception, request_id: str) -> GuardError:
    """The answer vLLM's exception handler gives for `exc` (its status and message)."""
    try:
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    except ImportError:  # the guard around another app (tests, benchmarks)
        return _internal_error(request_id)
    info = create_error_response(exc).error
    return GuardError(info.code, info.message or type(exc).__name__, info.code, info.param, error_type=info.type)


def _internal_error(request_id: str) -> GuardError:
    return GuardError(
        500, f"internal server error (request id {request_id}; the server log has the details)", "internal_error"
    )
