"""The async HTTP loop: endpoints, bounded concurrency, the single retry policy, health waiting.

Semantics (after Inspect AI's, see docs/peers.md): connection errors, timeouts, 408/429/5xx are
transient and retried with capped exponential backoff and jitter, honouring Retry-After; any other
4xx is the request's own fault, recorded with the server's message and never retried. When an
endpoint stops answering altogether, requests to it wait for its `/health` (with backoff, without
spending their retry budget) and carry on once it is back. The openai SDK's hidden retries are not
used: httpx directly, one policy, here.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, Field

from evaluator.schema import ChatRequest

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class RetryPolicy(BaseModel):
    max_attempts: int = Field(6, ge=1, description="Tries per request for transient errors (not counting downtime).")
    base_delay_s: float = Field(1.0, gt=0)
    max_delay_s: float = Field(60.0, gt=0)
    max_downtime_s: float = Field(1800.0, gt=0, description="Longest wait for a dead endpoint to come back.")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter exponential backoff; Retry-After is a floor."""
        backoff = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))
        return max(backoff, min(retry_after or 0.0, self.max_delay_s * 5))


DEFAULT_TIMEOUTS: dict[str, float] = {"image": 600.0, "audio": 600.0, "video": 1200.0}


@dataclass
class Outcome:
    """What one request came to. `status`: ok / invalid_request (4xx) / failed (retries exhausted)."""

    status: str
    content: str | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    endpoint: str | None = None


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    down_since: float | None = None
    recovered: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/").removesuffix("/v1")
        self.recovered.set()


def parse_retry_after(value: str | None) -> float | None:
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
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    except ValueError:
        return response.text[:2000] or response.reason_phrase


class ChatClient:
    def __init__(self, endpoints: list[str], *, api_key: str | None = None, concurrency: int = 64,
                 timeouts: dict[str, float] | None = None, retry: RetryPolicy | None = None,
                 health_poll_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self.endpoints = [Endpoint(url) for url in endpoints]
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.health_poll_s = health_poll_s
        self._slots = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        )
        self.retries = 0  # transient failures seen, for the summary

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- endpoints ------------------------------------------------------------------------------
    async def _pick(self) -> Endpoint:
        """The least busy endpoint that is up; if all are down, wait for the first to recover."""
        while True:
            up = [e for e in self.endpoints if e.down_since is None]
            if up:
                return min(up, key=lambda e: e.in_flight)
            waiters = [asyncio.create_task(e.recovered.wait()) for e in self.endpoints]
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async def healthy(self, endpoint: Endpoint) -> bool:
        try:
            return (await self._http.get(endpoint.url + "/health", timeout=10)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _mark_down(self, endpoint: Endpoint) -> None:
        """Called after a connection failure: if /health fails too, the endpoint is down until it answers."""
        if endpoint.down_since is not None or await self.healthy(endpoint):
            return
        if endpoint.down_since is None:
            endpoint.down_since = time.monotonic()
            endpoint.recovered.clear()
            asyncio.get_running_loop().create_task(self._watch(endpoint))

    async def _watch(self, endpoint: Endpoint) -> None:
        delay = self.health_poll_s
        while not await self.healthy(endpoint):
            if time.monotonic() - (endpoint.down_since or 0) > self.retry.max_downtime_s:
                break  # give up waiting: requests fail with the connection error, the run continues
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 30.0)
        endpoint.down_since = None
        endpoint.recovered.set()

    async def wait_healthy(self, timeout: float = 600.0) -> None:
        """Block until at least one endpoint answers /health (used before a run starts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for endpoint in self.endpoints:
                if await self.healthy(endpoint):
                    return
            await asyncio.sleep(self.health_poll_s)
        raise ConnectionError(f"no endpoint healthy after {timeout:.0f}s: {', '.join(e.url for e in self.endpoints)}")

    async def served_model(self) -> str:
        for endpoint in self.endpoints:
            try:
                reply = await self._http.get(endpoint.url + "/v1/models", timeout=30)
                if reply.status_code in (401, 403):  # say so: "pass --model" would not help here
                    raise ConnectionError(f"{endpoint.url}/v1/models answered {reply.status_code} "
                                          f"({error_message(reply)}): check --api-key / MERA_API_KEY")
                reply.raise_for_status()
                return reply.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                continue
        raise ConnectionError("could not read the served model from /v1/models; pass --model")

    # --- one request ----------------------------------------------------------------------------
    async def send(self, request: ChatRequest) -> Outcome:
        payload = request.payload()
        timeout = self.timeouts.get(request.modality, max(self.timeouts.values()))
        attempts = 0
        last_error = ""
        last_status: int | None = None
        started = time.monotonic()
        async with self._slots:
            while True:
                endpoint = await self._pick()
                attempts += 1
                endpoint.in_flight += 1
                try:
                    response = await self._http.post(endpoint.url + "/v1/chat/completions", json=payload,
                                                     timeout=httpx.Timeout(timeout, connect=10.0))
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    last_error, last_status, retry_after = f"{type(exc).__name__}: {exc}", None, None
                    if isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError):
                        await self._mark_down(endpoint)
                        if endpoint.down_since is not None:
                            attempts -= 1  # the server is down: waiting for it is not the request's fault
                else:
                    if response.status_code == 200:
                        return self._parse_ok(response, attempts, started, endpoint)
                    last_status, last_error = response.status_code, error_message(response)
                    if response.status_code not in RETRY_STATUSES:
                        return Outcome("invalid_request", http_status=last_status, error=last_error, attempts=attempts,
                                       latency_s=time.monotonic() - started, endpoint=endpoint.url)
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                finally:
                    endpoint.in_flight -= 1
                gave_up_waiting = time.monotonic() - started > self.retry.max_downtime_s
                if attempts >= self.retry.max_attempts or gave_up_waiting:
                    return Outcome("failed", http_status=last_status, error=last_error, attempts=attempts,
                                   latency_s=time.monotonic() - started, endpoint=endpoint.url)
                self.retries += 1
                if endpoint.down_since is None:
                    await asyncio.sleep(self.retry.delay(attempts, retry_after))

    @staticmethod
    def _parse_ok(response: httpx.Response, attempts: int, started: float, endpoint: Endpoint) -> Outcome:
        try:
            body: dict[str, Any] = response.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Outcome("ok", content=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                           http_status=200, attempts=attempts, latency_s=time.monotonic() - started,
                           prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                           endpoint=endpoint.url)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Outcome("failed", http_status=200, error=f"malformed completion: {exc!r}: {response.text[:500]}",
                           attempts=attempts, latency_s=time.monotonic() - started, endpoint=endpoint.url)
