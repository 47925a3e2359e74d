"""The one HTTP call policy of the evaluator: chat, judge and readiness calls all go through it.

Two parts, kept apart so each can be tested alone:

* `perform` makes one HTTP exchange and says what it came to (an `Attempt`): the status and body, or
  which failure it was, named the way a user can act on — connect / write / first-byte / body timeouts
  with their limits, connection refused, a dropped connection, a body cut off, a body over the size
  cap (read as a stream and refused as soon as it is over, never held whole), DNS, TLS, a malformed
  URL. Every httpx error class maps to one of these.
* `RetryPolicy.decide` turns an attempt into what to do next: `ok`, `retry` (after a backoff that
  honours `Retry-After`), `check_endpoint` (the server may be down: the caller asks the endpoint,
  and downtime does not spend the retry budget), `record` (a per-request failure with its status),
  or `abort` (a failure every request would hit: a wrong key, a wrong URL — the run stops with one
  line naming it).

Semantics (after openai-python's `_should_retry` and Inspect AI's `openai_should_retry`):
transient = 408, 409 (openai-python retries lock-timeout conflicts; a chat completion is a pure
function of its request, so re-sending is safe), 425, 429 and the whole 5xx range (501/505 from a
proxy, 507, 520-524 from CDNs), timeouts, dropped connections, cut-off bodies; an `x-should-retry`
header overrides. 401/403/404 and 3xx abort the run. Any other 4xx is the request's own fault:
recorded with the server's message, never retried.

Time comes from an injectable `Clock`, so the policy's tests run without sleeping. No retry library
is used: tenacity/stamina would give the backoff loop only, while the parts that matter here (an
attempt that spends no budget while the endpoint is down, fail-over to another endpoint, per-phase
timeout messages, the streamed size cap) are the project's own either way.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import random
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec
from pydantic import BaseModel, Field

from evaluator.errors import UserError

if TYPE_CHECKING:  # the transport module imports aiohttp (~0.2 s): only a run that sends needs it
    from evaluator.transport import HttpSession

MiB = 1024 * 1024
# A chat reply for max_tokens=10000 is at most ~1 MB even when every character is JSON-escaped
# (10000 tokens x ~16 chars x 6 bytes); 8 MiB leaves room for logprobs asked for via --extra-body
# while bounding what 64 concurrent requests can hold (64 x 8 MiB = 512 MiB in the worst case).
DEFAULT_MAX_REPLY_BYTES = 8 * MiB
EXCERPT_CHARS = 300
# Request bodies: compact UTF-8 JSON, byte for byte what json.dumps(ensure_ascii=False, separators=(",", ":"))
# writes, ~8x faster on base64 media (a 4 MB image body: ~2 ms instead of ~17 ms on the event loop). Not moved to
# a thread: the encoder holds the GIL, so a thread would only lengthen the loop's stalls to the 5 ms switch interval.
_JSON = msgspec.json.Encoder()


# --- time ------------------------------------------------------------------------------------------
class Clock:
    """Monotonic time, wall time and sleeping; tests inject a fake that advances instead of sleeping."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = Clock()


# --- errors that end a run or a scoring pass -------------------------------------------------------
class EndpointError(UserError):
    """The endpoint cannot be used and waiting will not change that (wrong URL, scheme, TLS, host)."""


class AuthError(EndpointError):
    """The endpoint refused the API key (401/403)."""


class EndpointNotReady(EndpointError):
    """The endpoint did not become ready within the wait the user allowed."""


class EndpointsDown(EndpointError):
    """Every endpoint has been down longer than the policy's `max_downtime_s` during a run."""


# --- one attempt -----------------------------------------------------------------------------------
Failure = Literal[
    "refused", "dns", "tls", "bad_url", "proxy", "local_protocol", "redirects", "connect_timeout",
    "write_timeout", "first_byte_timeout", "body_timeout", "pool_timeout", "dropped", "truncated",
    "oversized", "decoding",
]
FATAL_FAILURES = frozenset({"dns", "tls", "bad_url", "proxy", "local_protocol", "redirects"})
UNREACHABLE_FAILURES = frozenset({"refused", "connect_timeout", "dropped"})  # is the server down?


@dataclass(frozen=True)
class Timeouts:
    """Limits for each phase of one exchange, in seconds. `first_byte_s` covers the generation (a
    non-streamed completion sends nothing until it is done); `body_s` is the whole body after the
    headers arrived."""

    connect_s: float = 10.0
    write_s: float = 600.0
    first_byte_s: float = 600.0
    body_s: float = 120.0
    pool_s: float = 60.0

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=self.first_byte_s, write=self.write_s, pool=self.pool_s)


@dataclass
class Attempt:
    """What one HTTP exchange came to: a response (status, headers, body) or a named failure."""

    url: str
    sent_at: float
    finished_at: float = 0.0
    status: int | None = None
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""
    failure: Failure | None = None
    problem: str = ""  # one sentence for the failure, with the limit or sizes involved
    declared_bytes: int | None = None  # Content-Length, when the server sent one
    read_bytes: int = 0
    cause: BaseException | None = None

    @property
    def latency_s(self) -> float:
        return self.finished_at - self.sent_at

    @property
    def host(self) -> str:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL:
            return self.url
        if not url.host:
            return self.url
        return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"

    def evidence(self) -> dict[str, Any]:
        """Sizes and a short excerpt of what came back, for a stored failure."""
        out: dict[str, Any] = {"bytes": self.read_bytes}
        if self.declared_bytes is not None:
            out["content_length"] = self.declared_bytes
        if self.headers.get("content-type"):
            out["content_type"] = self.headers["content-type"]
        if self.body:
            out["excerpt"] = self.body[:EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
        return out


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def classify(exc: BaseException, attempt: Attempt, timeouts: Timeouts, *, in_body: bool,
             request_bytes: int = 0) -> tuple[Failure, str]:
    """An httpx exception (during the send or while reading the body) -> a failure kind and a sentence."""
    chain = _chain(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout", f"no connection within {timeouts.connect_s:g} s (connect timeout)"
    if isinstance(exc, httpx.ReadTimeout):
        if in_body:
            return "body_timeout", f"the reply body stalled after {_size(attempt.read_bytes)} (read timeout)"
        return "first_byte_timeout", (f"no reply within {timeouts.first_byte_s:g} s of sending the request "
                                      "(first-byte timeout)")
    if isinstance(exc, httpx.WriteTimeout):
        return "write_timeout", f"could not send the {_size(request_bytes)} request within {timeouts.write_s:g} s (write timeout)"
    if isinstance(exc, httpx.PoolTimeout):
        return "pool_timeout", f"no free connection in the client's pool within {timeouts.pool_s:g} s (pool timeout)"
    if isinstance(exc, httpx.ConnectError):
        for link in chain:
            if isinstance(link, socket.gaierror):
                if link.errno == socket.EAI_AGAIN:  # a resolver that is not answering yet: worth waiting for
                    return "refused", f"the host name could not be resolved yet ({link.strerror})"
                return "dns", f"cannot resolve the host name {httpx.URL(attempt.url).host!r} ({link.strerror})"
            if isinstance(link, ssl.SSLError):
                return "tls", f"TLS handshake failed ({getattr(link, 'reason', None) or link})"
            if isinstance(link, ConnectionRefusedError):
                return "refused", "connection refused"
        return "refused", f"cannot connect ({exc})"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
        if in_body:
            expected = f" of {_size(attempt.declared_bytes)}" if attempt.declared_bytes else ""
            return "truncated", f"the reply was cut off after {_size(attempt.read_bytes)}{expected}"
        if isinstance(exc, httpx.WriteError):
            return "dropped", "the server closed the connection while the request was being sent"
        return "dropped", "the server closed the connection without answering"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "bad_url", f"{attempt.url!r} is not an http:// or https:// URL ({exc})"
    if isinstance(exc, httpx.ProxyError):
        return "proxy", f"the HTTP proxy in the environment refused the request ({exc})"
    if isinstance(exc, httpx.LocalProtocolError):
        return "local_protocol", f"the request could not be formed ({exc})"
    if isinstance(exc, httpx.TooManyRedirects):
        return "redirects", "too many redirects"
    if isinstance(exc, httpx.DecodingError):
        return "decoding", f"the reply body could not be decoded ({exc})"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return ("truncated", f"the reply was cut off after {_size(attempt.read_bytes)}") if in_body else \
               ("dropped", "the server reset the connection")
    return "dropped", f"{type(exc).__name__}: {exc}"


async def perform(http: HttpSession, method: str, url: str, *, body: Any = None, timeouts: Timeouts,
                  max_bytes: int = DEFAULT_MAX_REPLY_BYTES, clock: Clock = SYSTEM_CLOCK) -> Attempt:
    """One exchange. The body is read as a stream and refused as soon as it exceeds `max_bytes` (or at
    once when Content-Length says it will), so an oversized reply is never held whole."""
    attempt = Attempt(url=url, sent_at=clock.monotonic())
    content = None if body is None else _JSON.encode(body)
    headers = {"content-type": "application/json"} if content is not None else None
    try:
        request = http.build_request(method, url, content=content, headers=headers, timeout=timeouts.for_httpx())
        response = await http.send(request)
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        attempt.failure, attempt.problem = classify(exc, attempt, timeouts, in_body=False,
                                                    request_bytes=len(content or b""))
        attempt.cause = exc
        attempt.finished_at = clock.monotonic()
        return attempt
    attempt.status, attempt.headers = response.status_code, response.headers
    try:
        declared = response.headers.get("content-length", "")
        attempt.declared_bytes = int(declared) if declared.isdigit() else None
        if attempt.declared_bytes is not None and attempt.declared_bytes > max_bytes:
            attempt.failure = "oversized"
            attempt.problem = (f"the reply is {_size(attempt.declared_bytes)}, over the {_size(max_bytes)} cap "
                               "(refused unread)")
            return attempt
        chunks: list[bytes] = []
        async with asyncio.timeout(timeouts.body_s):
            async for chunk in response.aiter_bytes():
                attempt.read_bytes += len(chunk)
                if attempt.read_bytes > max_bytes:
                    attempt.failure = "oversized"
                    attempt.problem = (f"the reply is over the {_size(max_bytes)} cap (refused after reading "
                                       f"{_size(attempt.read_bytes)})")
                    attempt.body = b"".join(c for c in chunks[:4])[:EXCERPT_CHARS * 4]  # an excerpt, not a copy
                    return attempt
                chunks.append(chunk)
        attempt.body = b"".join(chunks)
    except TimeoutError:
        attempt.failure = "body_timeout"
        attempt.problem = (f"the reply body did not arrive within {timeouts.body_s:g} s of its headers "
                           f"({_size(attempt.read_bytes)} read; body timeout)")
    except (httpx.HTTPError, OSError) as exc:
        attempt.failure, attempt.problem = classify(exc, attempt, timeouts, in_body=True)
        attempt.cause = exc
    finally:
        await response.aclose()
        attempt.finished_at = clock.monotonic()
    return attempt


# --- what the server said --------------------------------------------------------------------------
def parse_retry_after(value: str | None, clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or malformed."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # a malformed header must not crash the request: plain backoff then
        return None
    return max(0.0, parsed.timestamp() - clock.time()) if parsed else None


def error_message(status: int | None, body: bytes, reason: str = "") -> str:
    """The server's own words for an error reply (OpenAI, FastAPI or plain text), at most 2000 chars."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:8000].decode("utf-8", "replace").strip()
        return text[:2000] or reason or f"HTTP {status}"
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:2000]
    return str(err)[:2000]


# --- the decision ----------------------------------------------------------------------------------
Action = Literal["ok", "retry", "check_endpoint", "record", "abort"]


@dataclass
class Decision:
    action: Action
    status: str | None = None  # the reply status to record (`record`)
    message: str = ""
    delay_s: float = 0.0  # before the next try (`retry`)
    error: UserError | None = None  # what ends the run (`abort`)


def fatal_error(failure: Failure, attempt: Attempt) -> EndpointError:
    """The run-ending error for a failure in FATAL_FAILURES, with its fix."""
    reason = f"{attempt.url}: {attempt.problem}"
    if failure == "tls":
        said = " ".join(str(x) for x in _chain(attempt.cause)) if attempt.cause else ""
        if "WRONG_VERSION_NUMBER" in said or "record layer" in said:  # the answer to the hello was not TLS
            fix = "the server speaks plain HTTP: use http:// instead of https://"
        elif "UNEXPECTED_EOF" in said:  # the server hung up on the hello
            fix = "the server closed the TLS handshake: if it speaks plain HTTP, use http:// instead of https://"
        else:
            fix = "check the scheme (http:// or https://) and the server's certificate (SSL_CERT_FILE for a private CA)"
        return EndpointError(reason, fix=fix)
    fixes = {
        "dns": "check the host name in the URL",
        "bad_url": "write the endpoint as a full URL, e.g. http://localhost:8000",
        "proxy": "check HTTP_PROXY / HTTPS_PROXY / NO_PROXY in the environment",
        "local_protocol": "check --api-key for stray characters such as a newline",
        "redirects": "use the address the server redirects to",
    }
    return EndpointError(reason, fix=fixes.get(failure))


def status_error(attempt: Attempt) -> EndpointError | None:
    """The statuses no retry can fix and every request would get: 401/403, 404, 3xx."""
    status, message = attempt.status or 0, error_message(attempt.status, attempt.body)
    if status in (401, 403):
        return AuthError(f"{attempt.url} answered {status} ({message})", fix="check --api-key / MERA_API_KEY")
    if status == 404:
        return EndpointError(f"{attempt.url} answered 404 ({message})",
                             fix="check the endpoint URL (the base the OpenAI API lives under, e.g. http://host:8000 "
                             "or http://host/openai/v1) and --model")
    if 300 <= status < 400:
        where = attempt.headers.get("location", "?")
        return EndpointError(f"{attempt.url} redirects ({status}) to {where}", fix="use that address as the endpoint")
    return None


class RetryPolicy(BaseModel):
    """Retry vs record vs abort for every HTTP call the evaluator makes (one instance per client)."""

    max_attempts: int = Field(6, ge=1, description="Tries per request for transient errors (not counting downtime).")
    base_delay_s: float = Field(1.0, gt=0)
    max_delay_s: float = Field(60.0, gt=0)
    max_downtime_s: float = Field(1800.0, gt=0, description="Longest wait for a dead endpoint to come back.")
    max_reply_bytes: int = Field(DEFAULT_MAX_REPLY_BYTES, gt=0, description="Replies over this are refused unread.")

    @staticmethod
    def transient_status(status: int) -> bool:
        return status in (408, 409, 425, 429) or 500 <= status <= 599

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff; Retry-After is a floor, itself capped at 5 x max_delay_s."""
        backoff = (rng or random).uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))
        return max(backoff, min(retry_after or 0.0, self.max_delay_s * 5))

    def decide(self, attempt: Attempt, number: int, clock: Clock = SYSTEM_CLOCK,
               rng: random.Random | None = None, *, endpoint_up: bool = False) -> Decision:
        """What to do after try `number` of a request. `endpoint_up`: the caller checked the endpoint after
        an unreachable failure and it answers, so the failure counts as a transient one of this request."""
        failure = attempt.failure
        if failure is None and attempt.status is not None and 200 <= attempt.status < 300:
            return Decision("ok")
        if failure in FATAL_FAILURES:
            return Decision("abort", error=fatal_error(failure, attempt))
        if failure == "oversized":  # generation is deterministic: the same request gets the same size again
            return Decision("record", status="oversized", message=attempt.problem)
        if failure in UNREACHABLE_FAILURES and not endpoint_up:
            return Decision("check_endpoint", message=attempt.problem)
        retry_after = None
        if failure is not None:
            message = attempt.problem
            exhausted_status = "truncated" if failure == "truncated" else "failed"
            retryable = True
        else:
            status = attempt.status or 0
            if (fatal := status_error(attempt)) is not None:
                return Decision("abort", error=fatal)
            message = error_message(status, attempt.body)
            should = attempt.headers.get("x-should-retry", "").lower()
            retryable = should == "true" or (should != "false" and self.transient_status(status))
            if not retryable:
                return Decision("record", status="invalid_request", message=message)
            message = f"HTTP {status}: {message}"
            exhausted_status = "failed"
            retry_after = parse_retry_after(attempt.headers.get("retry-after"), clock)
        if number >= self.max_attempts:
            return Decision("record", status=exhausted_status, message=f"{message} (after {number} attempts)")
        return Decision("retry", message=message, delay_s=self.delay(number, retry_after, rng))
