"""The chat client: bounded concurrency over one or more endpoints, every request under the one HTTP call
policy (`evaluator.http_policy`), every reply shape given a status.

A request waits for a concurrency slot first (`queue_s`); its latency is measured from the moment it
is sent, per attempt; backoff sleeps and waiting for a down endpoint are `wait_s`. A 200 is an answer
only if it is a JSON completion whose first choice has text: `content: null` (`no_content`), no
choices (`no_choices`), a body that is not JSON (`not_json`), cut off (`truncated`) or over the size
cap (`oversized`) are failures with their evidence, never scored and re-sent by `--retry-errors`.
The openai SDK's hidden retries are not used: httpx's request and response types over aiohttp's pool
(`evaluator.transport`), one policy.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from evaluator.endpoints import EndpointPool, Notice, Probe, call
from evaluator.http_policy import (
    SYSTEM_CLOCK,
    Attempt,
    Clock,
    EndpointError,
    RetryPolicy,
    Timeouts,
    error_message,
    parse_retry_after,
)
from evaluator.schema import ChatRequest

__all__ = ["ChatClient", "Outcome", "RetryPolicy", "DEFAULT_TIMEOUTS", "error_message", "parse_retry_after"]

DEFAULT_TIMEOUTS: dict[str, float] = {"image": 600.0, "audio": 600.0, "video": 1200.0}  # first byte, per modality


@dataclass
class Outcome:
    """What one request came to. `status`: ok, invalid_request (4xx), failed (retries exhausted), or one
    of the reply-shape failures (no_content, no_choices, not_json, truncated, oversized)."""

    status: str
    content: str | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0
    latency_s: float | None = None  # the last attempt, from sending to the last byte
    queue_s: float | None = None  # waiting for a concurrency slot
    wait_s: float | None = None  # backoff and endpoint downtime between attempts
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    endpoint: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def completion_outcome(attempt: Attempt) -> Outcome:
    """A 200's body -> `ok` with the text, or the reply-shape failure it is."""
    def bad(status: str, error: str, **extra: Any) -> Outcome:
        return Outcome(status, http_status=attempt.status, error=error, evidence={**attempt.evidence(), **extra})

    try:
        body = json.loads(attempt.body)
    except ValueError:
        kind = attempt.headers.get("content-type", "no content type")
        return bad("not_json", f"the reply is not JSON ({kind})")
    if not isinstance(body, dict):
        return bad("not_json", f"the reply is JSON but not an object ({type(body).__name__})")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        said = f": {error_message(attempt.status, attempt.body)}" if "error" in body else ""
        return bad("no_choices", f"the reply has no choices{said}", keys=sorted(body)[:20])
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return bad("no_choices", "choices[0] has no message")
    finish = choice.get("finish_reason")
    content = message.get("content")
    if isinstance(content, list):  # content parts from a server that answers that way
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(texts) if texts else None
    if not isinstance(content, str):
        what = "null" if content is None else f"a {type(content).__name__}, not text"
        return bad("no_content", f"message.content is {what} (finish_reason: {finish})", message_keys=sorted(message))
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Outcome("ok", content=content, finish_reason=finish, http_status=attempt.status,
                   prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))


class ChatClient:
    def __init__(self, endpoints: list[str], *, api_key: str | None = None, concurrency: int = 64,
                 timeouts: dict[str, float] | None = None, retry: RetryPolicy | None = None,
                 clock: Clock | None = None, on_notice: Notice | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self.clock = clock or SYSTEM_CLOCK
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        # imported here: aiohttp's import (~0.2 s) only for a run that sends
        from evaluator.transport import AiohttpTransport, HttpSession

        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        # probes run outside the slots: a few connections more than `concurrency`
        self._transport = transport or AiohttpTransport(max_connections=concurrency + 8)
        self._http = HttpSession(self._transport, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.pool = EndpointPool(endpoints, self._http, self.retry, self.clock, on_notice)
        self.endpoints = self.pool.endpoints
        self.retries = 0  # transient failures seen, for the summary

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self._http.aclose()

    # --- readiness ------------------------------------------------------------------------------
    async def wait_ready(self, wait_s: float = 600.0) -> Probe:
        """Until an endpoint's API answers; raises what waiting cannot fix, or EndpointNotReady."""
        return await self.pool.wait_ready(wait_s)

    async def served_model(self) -> str:
        """The first model of the ready endpoint's /v1/models (call `wait_ready` first)."""
        if self.pool.ready is None:
            await self.wait_ready(0)
        if not self.pool.models:
            raise EndpointError(f"{self.endpoints[0].url}/v1/models lists no model", fix="pass --model")
        return self.pool.models[0]

    def set_concurrency(self, concurrency: int) -> None:
        """The requests in flight from now on (called once, before any `send`: after asking the server)."""
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        if hasattr(self._transport, "resize"):  # ours (an injected test transport has no pool to size)
            self._transport.resize(concurrency + 8)

    def timeouts_for(self, modality: str) -> Timeouts:
        first_byte = self.timeouts.get(modality, max(self.timeouts.values()))
        return Timeouts(write_s=first_byte, first_byte_s=first_byte)

    # --- one request ----------------------------------------------------------------------------
    async def send(self, request: ChatRequest) -> Outcome:
        payload = request.payload()
        timeouts = self.timeouts_for(request.modality)
        queued = self.clock.monotonic()
        async with self._slots:
            queue_s = self.clock.monotonic() - queued
            result = await call(self.pool, lambda e: ("POST", e.api("/v1/chat/completions"), payload), timeouts,
                                on_retry=self._count_retry)
        attempt = result.attempt
        if result.decision.action == "ok":
            outcome = completion_outcome(attempt)
        else:
            outcome = Outcome(result.decision.status or "failed", http_status=attempt.status,
                              error=result.decision.message, evidence=attempt.evidence() if attempt.failure else {})
        outcome.attempts, outcome.endpoint = result.attempts, result.endpoint.url
        outcome.latency_s, outcome.queue_s, outcome.wait_s = attempt.latency_s, queue_s, result.waited_s
        return outcome

    def _count_retry(self) -> None:
        self.retries += 1
