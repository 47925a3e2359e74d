"""The one retry policy, against a loopback server that fails on purpose."""

from __future__ import annotations

import asyncio
import time

import pytest

from evaluator.client import ChatClient, RetryPolicy, parse_retry_after
from evaluator.schema import ChatRequest, GenerationParams
from tests.faults import FaultServer

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, max_downtime_s=30)


def request(text: str = "hello", modality: str = "image") -> ChatRequest:
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    return ChatRequest(sample_key=f"t/-/test/{text}", modality=modality, messages=messages,
                       params=GenerationParams(model="fault-model"), digest="d")


async def send(server: FaultServer, req: ChatRequest | None = None, **kwargs):
    async with ChatClient([server.base_url], retry=kwargs.pop("retry", FAST), health_poll_s=0.05, **kwargs) as client:
        return await client.send(req or request()), client


@pytest.mark.parametrize("failures", [["429"], ["503"], ["500", "503"], ["drop"], ["drop", "429", "503"]])
async def test_transient_failures_are_retried_then_succeed(failures):
    with FaultServer(script=failures) as server:
        outcome, client = await send(server)
    assert outcome.status == "ok" and outcome.content == "ОТВЕТ A"
    assert outcome.attempts == len(failures) + 1
    assert server.chat_requests == len(failures) + 1


async def test_400_is_recorded_with_the_servers_message_and_not_retried():
    with FaultServer(script=["400"]) as server:
        outcome, _ = await send(server)
    assert outcome.status == "invalid_request" and outcome.http_status == 400
    assert "maximum context length" in outcome.error
    assert outcome.content is None  # never an empty answer to be scored
    assert server.chat_requests == 1


async def test_retries_exhausted_is_a_failure_not_an_answer():
    with FaultServer(default="503") as server:
        outcome, _ = await send(server)
    assert outcome.status == "failed" and outcome.http_status == 503 and outcome.attempts == FAST.max_attempts
    assert outcome.content is None


async def test_timeout_is_retried():
    with FaultServer(script=["slow:2"]) as server:
        outcome, _ = await send(server, timeouts={"image": 0.5})
    assert outcome.status == "ok" and outcome.attempts == 2


async def test_retry_after_is_honoured():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=10)
    assert policy.delay(1, retry_after=3.0) >= 3.0


async def test_endpoint_down_then_back_the_request_waits_and_completes():
    server = FaultServer().start()
    try:
        server.stop()  # the endpoint goes away: connection refused, /health refused

        async def bring_back():
            await asyncio.sleep(1.0)
            server.start()

        started = time.monotonic()
        (outcome, _), _ = await asyncio.gather(send(server), bring_back())
        assert outcome.status == "ok"
        assert time.monotonic() - started >= 0.9
        assert outcome.attempts <= 2  # waiting for the server does not spend the retry budget
    finally:
        server.close()


async def test_several_endpoints_share_the_load_and_skip_a_dead_one():
    with FaultServer() as a, FaultServer() as b:
        dead = FaultServer()  # never started: connection refused
        async with ChatClient([a.base_url, b.base_url, dead.base_url], retry=FAST, concurrency=8,
                              health_poll_s=0.05) as client:
            outcomes = await asyncio.gather(*(client.send(request(f"q{i}")) for i in range(24)))
        dead.close()
    assert all(o.status == "ok" for o in outcomes)
    assert a.chat_requests > 0 and b.chat_requests > 0
    assert a.chat_requests + b.chat_requests == 24
