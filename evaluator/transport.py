"""The evaluator's HTTP transport: aiohttp's connection pool under httpx's request/response types, and the
thin session (`HttpSession`) that `evaluator.http_policy.perform` sends through.

Why (measured, docs/benchmarks.md "HTTP transport"): httpcore 1.0.9's keep-alive pool re-scans every
queued request and every connection on each request it starts or finishes (`_assign_requests_to_connections`,
plus a `getpeername` and readability probe per idle connection), and a request that loses the race for
a connection loops inside the pool. At 64 in flight against an instant loopback endpoint that capped the
chat client at ~140 requests/s and ~4 ms CPU each; aiohttp's pool (what `vllm bench serve` uses) does the
same work at ~2000 requests/s and ~0.2 ms.

`evaluator.http_policy.perform` still builds an `httpx.Request`, reads an `httpx.Response` as a stream
and classifies `httpx` exceptions, so every policy rule (statuses, Retry-After, the streamed size cap,
the named timeouts, readiness, fail-over) is untouched and tests can still inject an
`httpx.MockTransport`. It sends through `HttpSession`, not `httpx.AsyncClient`: the client's request
path (URL merging, a cookie jar read and written per request, auth and redirect flows, event hooks) was
about a sixth of the evaluator's time per short request at 64 in flight (py-spy, docs/benchmarks.md),
and none of it is wanted here: the policy follows no redirect and keeps no cookie. This module maps
aiohttp's behaviour onto httpx's:

* timeouts from the request's httpx `Timeout`: connect (DNS + TCP + TLS), read (per read, so the first
  byte of a non-streamed completion, then each body chunk), write (per 256 KiB chunk of a large body;
  a body under 64 KiB goes into the socket buffer in one write and cannot stall), pool (a free slot);
* aiohttp exceptions -> the httpx exception httpcore would raise, the original chained as the cause
  (so `classify` still finds `ConnectionRefusedError`, `socket.gaierror`, `ssl.SSLError` in the chain);
* bodies are passed on undecoded (aiohttp's `auto_decompress` off): httpx decodes Content-Encoding and
  raises its own `DecodingError`, as before; redirects are not followed (the policy refuses them);
* a header value with CR/LF/NUL is refused as httpx (h11) refuses it: `LocalProtocolError`;
* proxies (`HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY`) and `SSL_CERT_FILE` / `SSL_CERT_DIR`
  from the environment are honoured, certifi's CA bundle otherwise (httpx's defaults); the proxy choice is
  made once per host and the TLS context on the first https request (aiohttp's own `trust_env` would read
  ~/.netrc and the proxy settings in a worker thread on every request: 2 thread hops per request).

Stale keep-alive connections: idle connections are closed after 4 s, under uvicorn's 5 s keep-alive
(vLLM's server). A server that closed a kept-alive connection just before it was reused (it restarted,
or its own idle timer won the race) makes that request fail before any reply byte (a disconnect, a reset,
or "cannot write request body"); httpcore avoids this by
polling an idle socket before reusing it, aiohttp checks only what the event loop has already seen. So a
request that fails that way on a *reused* connection is sent once more on a fresh one (re-sending a chat
completion is safe: it is a pure function of its request); on a new connection the failure is reported.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from yarl import URL

KEEPALIVE_S = 4.0  # below uvicorn's default 5 s keep-alive timeout
SMALL_BODY = 64 * 1024  # asyncio's default write high-water mark: written at once, never waits on drain
UPLOAD_CHUNK = 256 * 1024
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_FORBIDDEN = ("\r", "\n", "\0")


def _ssl_context() -> ssl.SSLContext:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _Upload:
    """A large body in chunks, each of which must be written within the write timeout."""

    def __init__(self, body: bytes, write_s: float | None) -> None:
        self.body = memoryview(body)
        self.write_s = write_s
        self.timer: asyncio.Timeout | None = None
        self.done = False

    async def chunks(self) -> AsyncIterator[memoryview]:
        loop = asyncio.get_running_loop()
        for start in range(0, len(self.body), UPLOAD_CHUNK):
            yield self.body[start:start + UPLOAD_CHUNK]  # a view: the body is not copied
            if self.timer is not None and self.write_s is not None:
                self.timer.reschedule(loop.time() + self.write_s)
        self.done = True
        if self.timer is not None:
            self.timer.reschedule(None)  # the body is sent: from here on only the read timeout applies


class _Body(httpx.AsyncByteStream):
    """The response body as aiohttp reads it, with aiohttp's errors as httpx's."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request, slot: asyncio.Semaphore) -> None:
        self._response, self._request, self._slot = response, request, slot
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except BaseException as exc:  # noqa: BLE001 - mapped or re-raised as is
            raise _mapped(exc, self._request, in_body=True) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._response.content.is_eof():
            self._response.release()  # fully read: the connection goes back to the pool
        else:
            self._response.close()  # refused or cut short: never reuse a half-read connection
        self._slot.release()


def _mapped(exc: BaseException, request: httpx.Request, *, in_body: bool = False) -> BaseException:
    """The httpx exception for an aiohttp (or socket) failure; anything else (cancellation) unchanged."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        said = exc.os_error
        mapped = httpx.ConnectError(str(said) or type(said).__name__, request=request)  # without aiohttp's key dump
        if exc.ssl is not False and isinstance(exc.os_error, ConnectionResetError | ConnectionAbortedError) \
                and request.url.scheme == "https":
            # asyncio reports a hang-up during the TLS handshake as a plain reset; ssl (as httpx saw it) as EOF
            hangup = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] the server closed the connection "
                                        "during the TLS handshake")
            hangup.__cause__ = exc
            mapped.__cause__ = hangup
            return mapped
        return mapped
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):  # a reset or broken pipe
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.TransportError(message, request=request)
    return exc


async def _on_reuse(session: aiohttp.ClientSession, context: object, params: object) -> None:
    context.reused = True  # type: ignore[attr-defined]


class _Trace:
    reused = False


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one aiohttp session (created in the running loop on first use)."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._proxies = {k: v for k, v in urllib.request.getproxies_environment().items() if k != "no"}
        self._proxy_for: dict[tuple[str, str], str | None] = {}

    def resize(self, max_connections: int) -> None:
        """A new connection limit (before requests are in flight: the old slots are dropped)."""
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    def _proxy(self, url: URL) -> str | None:
        key = (url.scheme, url.host or "")
        if key not in self._proxy_for:
            proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
            if proxy and urllib.request.proxy_bypass_environment(url.host or ""):
                proxy = None
            self._proxy_for[key] = proxy
        return self._proxy_for[key]

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S)
            reuse = aiohttp.TraceConfig(trace_config_ctx_factory=lambda trace_request_ctx: trace_request_ctx)
            reuse.on_connection_reuseconn.append(_on_reuse)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trace_configs=[reuse],
                                                  skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = []
        for name, value in request.headers.multi_items():
            if any(c in value or c in name for c in _FORBIDDEN):
                raise httpx.LocalProtocolError(f"Illegal header value {value.encode()!r}")
            if name.lower() not in _SKIP_HEADERS:
                headers.append((name, value))
        body = await request.aread()
        if len(body) > SMALL_BODY:  # sent in chunks: say the length, or aiohttp would switch to chunked encoding
            headers.append(("Content-Length", str(len(body))))
        url = URL(str(request.url), encoded=True)
        tls = None
        if url.scheme == "https":
            self._ssl = self._ssl or _ssl_context()
            tls = self._ssl
        connect_s, read_s = timeout.get("connect"), timeout.get("read")
        client_timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s, sock_read=read_s)
        slots = self._slots  # released to the semaphore it was taken from, even after a resize
        try:
            async with asyncio.timeout(timeout.get("pool")):
                await slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection", request=request) from None
        upload = _Upload(body, timeout.get("write")) if len(body) > SMALL_BODY else None
        try:
            async with asyncio.timeout(upload.write_s if upload else None) as timer:
                if upload is not None:
                    upload.timer = timer
                for _ in range(self.max_connections + 1):  # each stale connection fails once and is dropped
                    trace = _Trace()
                    try:
                        response = await self._session_now().request(
                            request.method, url, data=upload.chunks() if upload else (body or None), headers=headers,
                            allow_redirects=False, timeout=client_timeout, proxy=self._proxy(url),
                            ssl=tls if tls is not None else True, trace_request_ctx=trace)
                        break
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):  # closed, reset, broken pipe
                        if not trace.reused:
                            raise
                        if upload is not None:
                            upload = _Upload(body, upload.write_s)
                            upload.timer = timer
            if upload is not None:
                upload.timer = None  # the server may answer before the upload ends; the timer is over
        except BaseException as exc:
            slots.release()
            if upload is not None:
                upload.timer = None
                if timer.expired() and not upload.done:
                    raise httpx.WriteTimeout("the request body could not be sent in time", request=request) from exc
            if isinstance(exc, OSError | aiohttp.ClientError):
                mapped = _mapped(exc, request)
                if isinstance(mapped, httpx.ReadError) and upload is not None and not upload.done:
                    raise httpx.WriteError(str(exc), request=request) from exc
                if mapped.__cause__ is not None:  # a cause set by _mapped (the TLS hang-up) is kept
                    raise mapped from mapped.__cause__
                raise mapped from exc
            raise
        return httpx.Response(
            response.status, headers=list(response.raw_headers), stream=_Body(response, request, slots),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# What httpx.AsyncClient sends by default (Connection is aiohttp's to set).
DEFAULT_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate",
                   "user-agent": f"python-httpx/{httpx.__version__}"}
_URL_CACHE = 256  # parsed URLs kept per session: a run asks a handful (each endpoint's routes)


class HttpSession:
    """One transport and its default headers: what `http_policy.perform` needs of an HTTP client."""

    def __init__(self, transport: httpx.AsyncBaseTransport, headers: Mapping[str, str] | None = None) -> None:
        self.transport = transport
        self.headers = httpx.Headers(DEFAULT_HEADERS)
        self.headers.update(headers or {})
        self._urls: dict[str, httpx.URL] = {}
        self._closed = False

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)  # raises httpx.InvalidURL
            if parsed.scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."
                                                if not parsed.scheme else
                                                f"Request URL has an unsupported protocol '{parsed.scheme}://'.")
            if len(self._urls) < _URL_CACHE:
                self._urls[url] = parsed
        return parsed

    def build_request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: Mapping[str, str] | None = None, timeout: httpx.Timeout) -> httpx.Request:
        merged = self.headers.copy()
        if headers:
            merged.update(headers)
        return httpx.Request(method, self._url(url), headers=merged, content=content,
                             extensions={"timeout": timeout.as_dict()})

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response with its body unread (read it with `aiter_bytes`, then `aclose`)."""
        if self._closed:
            raise RuntimeError("the HTTP session is closed")
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        self._closed = True
        await self.transport.aclose()

    async def __aenter__(self) -> HttpSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
