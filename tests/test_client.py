"""The client's retry policy and endpoint handling, piece by piece (the loopback fault server where
HTTP is needed; tests/test_client_faults.py has the 429/503/drop/400 scenarios)."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from evaluator.client import (
    RETRY_STATUSES,
    ChatClient,
    Endpoint,
    RetryPolicy,
    error_message,
    parse_retry_after,
)
from evaluator.schema import ChatRequest, GenerationParams
from tests.faults import FaultServer

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_downtime_s=30)


def request(text: str = "hello", modality: str = "image") -> ChatRequest:
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    return ChatRequest(sample_key=f"t/-/test/{text}", modality=modality, messages=messages,
                       params=GenerationParams(model="fault-model"), digest="d")


def client_for(*servers: FaultServer, **kwargs) -> ChatClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("health_poll_s", 0.05)
    return ChatClient([s.base_url for s in servers], **kwargs)


# --- the policy itself ----------------------------------------------------------------------------
def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.7  # the range is used ...
        assert len(set(delays)) > 250  # ... randomly (jitter: clients do not retry in lock-step)


def test_retry_after_is_a_floor_but_bounded():
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=2.0)
    assert all(policy.delay(1, retry_after=5.0) >= 5.0 for _ in range(50))
    assert policy.delay(1, retry_after=10_000) == 10.0  # a silly Retry-After cannot park the run for hours


def test_parse_retry_after_seconds_dates_and_junk():
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("-4") == 0.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon-ish") is None  # malformed: plain backoff, never a crash


def test_which_statuses_are_transient():
    assert {408, 429, 500, 502, 503, 504} <= RETRY_STATUSES
    assert not {400, 401, 403, 404, 413, 422} & RETRY_STATUSES


def test_error_message_takes_the_servers_words():
    def resp(status: int, **kwargs) -> httpx.Response:
        return httpx.Response(status, **kwargs)

    assert error_message(resp(400, json={"error": {"message": "too long", "type": "BadRequestError"}})) == "too long"
    assert error_message(resp(422, json={"detail": "field required"})) == "field required"  # FastAPI style
    assert error_message(resp(401, json={"error": "Unauthorized"})) == "Unauthorized"  # vLLM's auth middleware
    assert error_message(resp(413, text="<html>Request Entity Too Large</html>")) == "<html>Request Entity Too Large</html>"


def test_endpoint_urls_are_normalised():
    assert Endpoint("http://h:8000/v1/").url == "http://h:8000"
    assert Endpoint("http://h:8000").url == "http://h:8000"
    with pytest.raises(ValueError):
        ChatClient([])


# --- against the fault server -----------------------------------------------------------------------
@pytest.mark.parametrize("status", ["408", "502", "504"])
async def test_other_transient_statuses_are_retried(status):
    with FaultServer(script=[status]) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
    assert outcome.status == "ok" and outcome.attempts == 2 and client.retries == 1


@pytest.mark.parametrize("status", ["401", "404", "413", "422"])
async def test_other_client_errors_are_recorded_once(status):
    with FaultServer(script=[status]) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == 1
    assert outcome.status == "invalid_request" and outcome.http_status == int(status)
    assert outcome.error == f"injected {status}" and outcome.content is None


async def test_retry_after_from_the_server_is_waited():
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.5)  # Retry-After capped at 5 x 0.5 s
    with FaultServer(script=["429:1"]) as server:
        async with client_for(server, retry=policy) as client:
            started = time.monotonic()
            outcome = await client.send(request())
    assert outcome.status == "ok" and time.monotonic() - started >= 1.0


async def test_a_malformed_completion_is_a_failure_not_an_answer():
    with FaultServer(default="garbage") as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
    assert outcome.status == "failed" and outcome.content is None and "malformed completion" in outcome.error


async def test_the_api_key_is_sent_and_a_wrong_one_is_not_retried():
    with FaultServer(api_key="s3cret") as server:
        async with client_for(server, api_key="s3cret") as client:
            assert (await client.send(request())).status == "ok"
        async with client_for(server, api_key="wrong") as client:
            outcome = await client.send(request())
        assert server.chat_requests == 2
    assert outcome.status == "invalid_request" and outcome.http_status == 401


async def test_concurrency_is_bounded():
    with FaultServer(default="slow:0.2") as server:
        async with client_for(server, concurrency=3) as client:
            outcomes = await asyncio.gather(*(client.send(request(f"q{i}")) for i in range(12)))
        assert server.max_in_flight == 3
    assert all(o.status == "ok" for o in outcomes)


async def test_timeouts_are_per_modality():
    with FaultServer(script=["slow:1", "slow:1"]) as server:
        async with client_for(server, timeouts={"image": 0.3, "video": 5.0}) as client:
            video = await client.send(request("v", modality="video"))
            image = await client.send(request("i", modality="image"))
    assert video.status == "ok" and video.attempts == 1
    assert image.status == "ok" and image.attempts == 2  # the first try timed out at 0.3 s


async def test_wait_healthy_waits_for_health_then_times_out_when_it_never_comes():
    with FaultServer() as server:
        server.healthy = False
        async with client_for(server) as client:
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, setattr, server, "healthy", True)
            started = time.monotonic()
            await client.wait_healthy(timeout=10)
            assert time.monotonic() - started >= 0.4
            server.healthy = False
            with pytest.raises(ConnectionError, match="no endpoint healthy"):
                await client.wait_healthy(timeout=0.3)


async def test_served_model_is_read_from_v1_models():
    with FaultServer() as server:
        async with client_for(server) as client:
            assert await client.served_model() == "fault-model"
    dead = FaultServer()
    async with client_for(dead) as client:
        with pytest.raises(ConnectionError, match="--model"):
            await client.served_model()
    dead.close()


async def test_a_dead_endpoint_is_skipped_while_another_serves():
    """One of two servers dies: requests move to the live one without waiting for the dead one."""
    with FaultServer() as live, FaultServer() as dying:
        async with client_for(live, dying, concurrency=4) as client:
            first = await asyncio.gather(*(client.send(request(f"a{i}")) for i in range(8)))
            dying.stop()
            started = time.monotonic()
            second = await asyncio.gather(*(client.send(request(f"b{i}")) for i in range(8)))
            elapsed = time.monotonic() - started
    assert all(o.status == "ok" for o in first + second)
    assert dying.chat_requests > 0  # it did share the load while alive
    assert all(o.endpoint == live.base_url for o in second)
    assert elapsed < 5


async def test_downtime_does_not_spend_the_retry_budget():
    """Down for longer than max_attempts backoffs would last: the request still succeeds."""
    server = FaultServer().start()
    try:
        server.stop()
        policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, max_downtime_s=30)
        async with ChatClient([server.base_url], retry=policy, health_poll_s=0.05) as client:
            asyncio.get_running_loop().call_later(1.5, server.start)
            outcome = await client.send(request())
        assert outcome.status == "ok" and outcome.attempts <= 2
        assert server.health_checks >= 1  # it came back through /health
    finally:
        server.close()


async def test_downtime_longer_than_the_limit_fails_the_request():
    server = FaultServer()  # never started
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, max_downtime_s=0.5)
    async with ChatClient([server.base_url], retry=policy, health_poll_s=0.05) as client:
        started = time.monotonic()
        outcome = await client.send(request())
    assert outcome.status == "failed" and "ConnectError" in outcome.error and outcome.content is None
    assert time.monotonic() - started < 10
    server.close()
