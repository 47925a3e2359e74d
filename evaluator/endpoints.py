"""Endpoints of any OpenAI-compatible server: their URLs, readiness, downtime and fail-over, and the one
call loop (`call`) that the chat client and the judge client share.

* A base URL may carry a path prefix: `http://host:8000`, `http://host:8000/v1`,
  `http://gw/openai/v1` and `http://gw/openai` all work; routes are `{base}/v1/...`.
* Ready means "the API answers": `GET {base}/v1/models` (with the key), falling back to
  `{base}/health` when the server has no model list — never `/health` at the host root alone, which
  a gateway may not have or may answer for a different service.
* What waiting cannot fix ends the wait at once with the fix: no scheme, an unknown host, TLS against
  a plain-HTTP server, 404 on the API, 401/403. What it can (refused, timeouts, 5xx, a server still
  loading) is waited for up to the caller's limit, saying what it waits for and why at least every
  10 s through `on_notice`.
* During a run, a connection failure makes the client ask the endpoint: if it does not answer, the
  endpoint is down, requests go to the others (fail-over) or wait for it without spending their retry
  budget, and a watcher polls it until it is back or `max_downtime_s` has passed (then the run stops).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from evaluator.http_policy import (
    FATAL_FAILURES,
    SYSTEM_CLOCK,
    Attempt,
    Clock,
    Decision,
    EndpointError,
    EndpointNotReady,
    EndpointsDown,
    MiB,
    RetryPolicy,
    Timeouts,
    error_message,
    fatal_error,
    perform,
    status_error,
)

if TYPE_CHECKING:
    from evaluator.transport import HttpSession

log = logging.getLogger(__name__)

NOTICE_EVERY_S = 10.0
PROBE_TIMEOUTS = Timeouts(connect_s=5.0, write_s=10.0, first_byte_s=10.0, body_s=10.0, pool_s=10.0)
MAX_FREE_DOWNTIME_CYCLES = 20  # a flapping endpoint must not keep one request alive forever
Notice = Callable[[str], None]


def normalise_endpoint(raw: str) -> str:
    """`raw` as a base URL without a trailing `/v1` (or `/v1/chat/completions`); a local check, no network."""
    text = raw.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        bare = text.split("://", 1)[-1]
        raise EndpointError(f"endpoint {raw!r} is not an http:// or https:// URL",
                            fix=f"write it with its scheme, e.g. http://{bare or 'localhost:8000'}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise EndpointError(f"endpoint {raw!r} has an invalid port ({exc})", fix="use a port from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise EndpointError(f"endpoint {raw!r} has a query or fragment", fix="give the base URL only, e.g. http://host:8000")
    path = parts.path.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1").rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _seconds(value: float) -> str:
    return f"{value / 60:.0f} min" if value >= 120 else f"{value:.0f} s"


# --- readiness -----------------------------------------------------------------------------------------
@dataclass
class Probe:
    state: Literal["ready", "waiting", "fatal"]
    reason: str = ""
    error: EndpointError | None = None
    models: list[str] | None = None  # from /v1/models; None when only /health answered


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = normalise_endpoint(url)
        self.in_flight = 0
        self.down_since: float | None = None
        self.dead = False  # down longer than max_downtime_s: not used again in this run
        self.fatal: EndpointError | None = None
        self.last_problem = ""
        self.recovered = asyncio.Event()
        self.recovered.set()
        self.checking = asyncio.Lock()

    def api(self, path: str) -> str:
        return self.url + path

    @property
    def up(self) -> bool:
        return self.down_since is None and not self.dead and self.fatal is None


async def probe(http: HttpSession, endpoint: Endpoint, clock: Clock = SYSTEM_CLOCK) -> Probe:
    """Does the API answer? `GET /v1/models`, then `/health` under the same base if there is no list."""
    models = await perform(http, "GET", endpoint.api("/v1/models"), timeouts=PROBE_TIMEOUTS, max_bytes=MiB, clock=clock)
    if models.failure in FATAL_FAILURES:
        return Probe("fatal", error=fatal_error(models.failure, models))
    if models.failure is not None:
        return Probe("waiting", models.problem)
    status = models.status or 0
    if 200 <= status < 300:
        return Probe("ready", models=_model_ids(models))
    if status == 404:
        health = await perform(http, "GET", endpoint.api("/health"), timeouts=PROBE_TIMEOUTS, max_bytes=MiB, clock=clock)
        if health.failure is None and health.status == 200:
            return Probe("ready")
        if health.failure is None and health.status in (404, 405):
            return Probe("fatal", error=EndpointError(
                f"{endpoint.api('/v1/models')} and {endpoint.api('/health')} answer 404: no OpenAI-compatible API "
                f"under {endpoint.url}",
                fix="give the base URL the API lives under (e.g. http://host:8000, or http://host/openai/v1 behind a "
                "gateway)"))
        return Probe("waiting", health.problem or f"{endpoint.api('/health')} answered {health.status}")
    if (fatal := status_error(models)) is not None:
        return Probe("fatal", error=fatal)
    message = f"answered {status} ({error_message(status, models.body)})"
    if RetryPolicy.transient_status(status):
        return Probe("waiting", message)
    return Probe("fatal", error=EndpointError(f"{models.url} {message}", fix="check the endpoint URL"))


def _model_ids(attempt: Attempt) -> list[str]:
    try:
        return [str(m["id"]) for m in json.loads(attempt.body)["data"]]
    except (ValueError, KeyError, TypeError):
        return []


# --- a set of endpoints --------------------------------------------------------------------------------
class EndpointPool:
    """The endpoints of one client: readiness before a run, downtime and fail-over during it."""

    def __init__(self, urls: list[str], http: HttpSession, policy: RetryPolicy, clock: Clock = SYSTEM_CLOCK,
                 on_notice: Notice | None = None) -> None:
        if not urls:
            raise ValueError("at least one endpoint is required")
        self.endpoints = [Endpoint(u) for u in urls]
        self.http = http
        self.policy = policy
        self.clock = clock
        self.on_notice = on_notice or (lambda message: log.warning("%s", message))
        self.models: list[str] | None = None
        self.ready: Probe | None = None  # the probe that ended `wait_ready`
        self._watchers: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def wait_ready(self, wait_s: float) -> Probe:
        """Until one endpoint's API answers (returns its probe), an endpoint is unusable (raises), or
        `wait_s` has passed (raises EndpointNotReady). Says what it waits for at least every 10 s."""
        started = self.clock.monotonic()
        last_notice: float | None = None
        delay = 0.5
        while True:
            probes = await asyncio.gather(*(probe(self.http, e, self.clock) for e in self.endpoints))
            for p in probes:
                if p.state == "fatal":
                    raise p.error
            ready = [p for p in probes if p.state == "ready"]
            if ready:
                for endpoint, p in zip(self.endpoints, probes, strict=True):
                    if p.state != "ready":  # the others join when they come up
                        self._mark_down(endpoint, p.reason)
                self.ready, self.models = ready[0], ready[0].models
                return ready[0]
            now = self.clock.monotonic()
            elapsed = now - started
            reasons = "; ".join(f"{e.url}: {p.reason}" for e, p in zip(self.endpoints, probes, strict=True))
            if elapsed >= wait_s:
                raise EndpointNotReady(f"not ready after {_seconds(elapsed)} ({reasons})",
                                       fix="start the server or check the URL, or wait longer with --wait")
            if last_notice is None or now - last_notice >= NOTICE_EVERY_S - 1e-6:
                self.on_notice(f"waiting for {reasons} ({elapsed:.0f} s, up to {_seconds(wait_s)})")
                last_notice = now
            # never sleep past the end of the wait or past the next message due
            await self.clock.sleep(min(delay, wait_s - elapsed, last_notice + NOTICE_EVERY_S - now))
            delay = min(delay * 1.5, 5.0)

    async def pick(self) -> Endpoint:
        """The least busy endpoint that is up; if none is, wait for one to come back."""
        while True:
            for endpoint in self.endpoints:
                if endpoint.fatal is not None:
                    raise endpoint.fatal
            up = [e for e in self.endpoints if e.up]
            if up:
                return min(up, key=lambda e: e.in_flight)
            if all(e.dead for e in self.endpoints):
                raise EndpointsDown(
                    "every endpoint has been down for more than " + _seconds(self.policy.max_downtime_s) + " ("
                    + "; ".join(f"{e.url}: {e.last_problem}" for e in self.endpoints) + ")",
                    fix="restart the server; the run is resumable (the same command sends only what is missing)")
            waiters = [asyncio.create_task(e.recovered.wait()) for e in self.endpoints if not e.dead]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waiters:
                    task.cancel()

    async def report_unreachable(self, endpoint: Endpoint, attempt: Attempt) -> bool:
        """After a connection failure: True if the endpoint is down (the request waits without spending
        its retry budget), False if it answers (the failure was this request's)."""
        async with endpoint.checking:
            if not endpoint.up:
                return True
            result = await probe(self.http, endpoint, self.clock)
            if result.state == "fatal":
                endpoint.fatal = result.error
                raise result.error
            if result.state == "ready":
                return False
            self._mark_down(endpoint, f"{attempt.problem}; the API does not answer: {result.reason}")
            return True

    def _mark_down(self, endpoint: Endpoint, problem: str) -> None:
        if endpoint.down_since is not None or endpoint.dead:
            return
        endpoint.down_since = self.clock.monotonic()
        endpoint.last_problem = problem
        endpoint.recovered.clear()
        self.on_notice(f"{endpoint.url} is down ({problem}); waiting for it, up to "
                       f"{_seconds(self.policy.max_downtime_s)}")
        task = asyncio.get_running_loop().create_task(self._watch(endpoint))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, endpoint: Endpoint) -> None:
        delay, last_notice = 0.5, self.clock.monotonic()
        try:
            while True:
                await self.clock.sleep(min(delay, max(0.0, last_notice + NOTICE_EVERY_S - self.clock.monotonic())))
                delay = min(delay * 1.5, 5.0)
                result = await probe(self.http, endpoint, self.clock)
                now = self.clock.monotonic()
                down_for = now - (endpoint.down_since or now)
                if result.state == "ready":
                    self.on_notice(f"{endpoint.url} is back after {down_for:.0f} s")
                    endpoint.down_since = None
                    return
                if result.state == "fatal":
                    endpoint.fatal = result.error
                    return
                endpoint.last_problem = result.reason
                if down_for > self.policy.max_downtime_s:
                    endpoint.dead = True
                    self.on_notice(f"{endpoint.url}: down for {_seconds(down_for)}; giving up on it")
                    return
                if now - last_notice >= NOTICE_EVERY_S - 1e-6:
                    self.on_notice(f"waiting for {endpoint.url}: {result.reason} (down {down_for:.0f} s)")
                    last_notice = now
        finally:
            if endpoint.down_since is not None and endpoint.fatal is None:
                endpoint.dead = True  # cancelled (the client is closing) while still down
            endpoint.recovered.set()  # wake every waiter: back, dead or unusable, `pick` tells them which


# --- the call loop -------------------------------------------------------------------------------------
@dataclass
class CallResult:
    """The last attempt of a call and what the policy made of it (`ok` or `record`)."""

    attempt: Attempt
    decision: Decision
    endpoint: Endpoint
    attempts: int
    waited_s: float  # backoff sleeps and waiting for a down endpoint, not the exchanges themselves


async def call(pool: EndpointPool, build: Callable[[Endpoint], tuple[str, str, Any]], timeouts: Timeouts,
               on_retry: Callable[[], None] | None = None) -> CallResult:
    """One logical request under the pool's policy: pick an endpoint, send, decide, repeat. Raises the
    policy's abort errors (and EndpointsDown); returns the final attempt otherwise."""
    policy, clock = pool.policy, pool.clock
    attempts = free_cycles = 0
    waited = 0.0
    while True:
        before = clock.monotonic()
        endpoint = await pool.pick()
        waited += clock.monotonic() - before
        attempts += 1
        method, url, body = build(endpoint)
        endpoint.in_flight += 1
        try:
            attempt = await perform(pool.http, method, url, body=body, timeouts=timeouts,
                                    max_bytes=policy.max_reply_bytes, clock=clock)
        finally:
            endpoint.in_flight -= 1
        decision = policy.decide(attempt, attempts, clock)
        if decision.action == "check_endpoint":
            if free_cycles < MAX_FREE_DOWNTIME_CYCLES and await pool.report_unreachable(endpoint, attempt):
                attempts -= 1  # the server is down: waiting for it is not this request's fault
                free_cycles += 1
                if on_retry:
                    on_retry()
                continue
            decision = policy.decide(attempt, attempts, clock, endpoint_up=True)
        if decision.action == "abort":
            raise decision.error
        if decision.action == "retry":
            if on_retry:
                on_retry()
            before = clock.monotonic()
            await clock.sleep(decision.delay_s)
            waited += clock.monotonic() - before
            continue
        return CallResult(attempt, decision, endpoint, attempts, waited)
