"""Endpoints of any OpenAI-compatible server: base URLs with path prefixes, readiness ("the API answers"),
what waiting cannot fix, the waiting messages, downtime that does not spend the retry budget, fail-over.
Against the loopback fault server and a loopback gateway; every wait runs on a fake clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from evaluator.client import ChatClient
from evaluator.endpoints import normalise_endpoint
from evaluator.http_policy import AuthError, EndpointError, EndpointNotReady, EndpointsDown, RetryPolicy
from evaluator.judge import JudgeClient, JudgeConfig
from evaluator.schema import ChatRequest, GenerationParams
from tests.fake_clock import FakeClock
from tests.faults import FaultServer
from tests.gateway import PrefixGateway

POLICY = RetryPolicy(max_attempts=2, base_delay_s=1.0, max_delay_s=2.0, max_downtime_s=300)


def request(text: str = "hello") -> ChatRequest:
    return ChatRequest(sample_key=f"t/-/test/{text}", modality="image", params=GenerationParams(model="fault-model"),
                       messages=[{"role": "user", "content": [{"type": "text", "text": text}]}], digest="d")


def client(urls: list[str], clock: FakeClock | None = None, notices: list | None = None, **kw) -> ChatClient:
    kw.setdefault("retry", POLICY)
    return ChatClient(urls, clock=clock or FakeClock(), on_notice=(notices.append if notices is not None else None),
                      **kw)


# --- base URLs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "base"), [
    ("http://h:8000", "http://h:8000"), ("http://h:8000/", "http://h:8000"), ("http://h:8000/v1/", "http://h:8000"),
    ("http://gw/openai/v1", "http://gw/openai"), ("http://gw/openai", "http://gw/openai"),
    ("https://gw/openai/v1/chat/completions", "https://gw/openai"), (" http://h:8000 ", "http://h:8000"),
])
def test_base_urls_keep_their_path_prefix(given, base):
    assert normalise_endpoint(given) == base


@pytest.mark.parametrize(("given", "fix"), [
    ("localhost:8000", "http://localhost:8000"), ("127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("ftp://h/v1", "http://h/v1"), ("http://", "http://localhost:8000"), ("http://h:99999", "1 to 65535"),
    ("http://h:8000/v1?x=1", "base URL only"),
])
def test_a_url_that_is_not_an_http_base_is_refused_before_any_network(given, fix):
    with pytest.raises(EndpointError) as err:
        normalise_endpoint(given)
    assert fix in err.value.one_line()


# --- readiness --------------------------------------------------------------------------------------------
async def test_ready_means_the_api_answers_with_the_key_and_gives_the_models():
    with FaultServer(api_key="k") as server:
        server.models_need_key = True
        server.health_status = 503  # the root /health is not what decides
        async with client([server.base_url], api_key="k") as c:
            probe = await c.wait_ready(0)
            assert probe.models == ["fault-model"] and await c.served_model() == "fault-model"
        assert server.models_requests == 1 and server.health_checks == 0


async def test_a_server_without_a_model_list_is_ready_when_its_health_route_answers():
    with FaultServer() as server:
        server.models_status = 404
        async with client([server.base_url]) as c:
            assert (await c.wait_ready(0)).models is None
            with pytest.raises(EndpointError, match="lists no model") as err:
                await c.served_model()
        assert err.value.fix == "pass --model" and server.health_checks == 1


async def test_a_path_prefix_gateway_without_health_works():
    with FaultServer() as upstream, PrefixGateway(upstream.base_url) as gateway:
        async with client([gateway.base_url]) as c:
            await c.wait_ready(0)
            outcome = await c.send(request())
        assert outcome.status == "ok" and outcome.endpoint == gateway.base_url.removesuffix("/v1")
        assert upstream.chat_requests == 1 and upstream.health_checks == 0 and gateway.not_found == []


async def test_no_api_under_the_url_ends_the_wait_at_once_with_the_fix():
    with FaultServer() as upstream, PrefixGateway(upstream.base_url) as gateway:
        wrong = gateway.base_url.replace("/openai/", "/oai/")
        async with client([wrong]) as c:
            started = time.monotonic()
            with pytest.raises(EndpointError, match="answer 404: no OpenAI-compatible API under") as err:
                await c.wait_ready(600)
        assert time.monotonic() - started < 5
    assert "/openai/v1" in err.value.fix


async def test_a_refused_key_on_the_model_list_ends_the_wait_at_once():
    with FaultServer(api_key="right") as server:
        server.models_need_key = True
        async with client([server.base_url], api_key="wrong") as c:
            with pytest.raises(AuthError) as err:
                await c.wait_ready(600)
        assert server.chat_requests == 0
    assert "/v1/models answered 401" in err.value.one_line() and "--api-key" in err.value.one_line()


async def test_https_against_a_plain_http_server_says_use_http():
    with FaultServer() as server:
        async with client([server.base_url.replace("http://", "https://")]) as c:
            with pytest.raises(EndpointError) as err:
                await c.wait_ready(600)
    assert "TLS handshake failed" in str(err.value) and "use http:// instead of https://" in err.value.fix


async def test_an_unknown_host_ends_the_wait_at_once():
    async with client(["http://no-such-host.invalid:8000"]) as c:
        with pytest.raises(EndpointError, match="cannot resolve the host name 'no-such-host.invalid'"):
            await c.wait_ready(600)


async def test_a_closed_port_is_waited_for_saying_why_at_least_every_10_s_then_gives_up():
    dead = FaultServer()  # never started
    clock, notices = FakeClock(), []
    stamps: list[float] = []
    async with client([dead.base_url], clock=clock, notices=notices) as c:
        c.pool.on_notice = lambda message: (notices.append(message), stamps.append(clock.now))
        with pytest.raises(EndpointNotReady) as err:
            await c.wait_ready(95)
    dead.close()
    assert notices[0] == f"waiting for {dead.base_url}: connection refused (0 s, up to 95 s)"
    assert stamps[0] == 1000.0 and all(b - a <= 10.0 + 1e-9 for a, b in zip(stamps, stamps[1:], strict=False))
    assert len(notices) == 10 and notices[-1].endswith("connection refused (90 s, up to 95 s)")
    assert str(err.value).startswith("not ready after 95 s") and "connection refused" in str(err.value)
    assert "--wait" in err.value.fix and clock.now - 1000.0 == pytest.approx(95, abs=1e-6)


async def test_a_server_still_starting_is_waited_for_until_it_answers():
    server = FaultServer()
    clock = FakeClock()
    clock.at(42, server.start)  # it comes up 42 s into the wait
    try:
        async with client([server.base_url], clock=clock) as c:
            await c.wait_ready(600)
            assert (await c.send(request())).status == "ok"
        assert 42 <= clock.now - 1000 <= 48
    finally:
        server.close()


async def test_a_server_answering_503_while_it_loads_is_waited_for():
    with FaultServer() as server:
        server.models_status = 503
        clock, notices = FakeClock(), []
        clock.at(20, lambda: setattr(server, "models_status", 200))
        async with client([server.base_url], clock=clock, notices=notices) as c:
            await c.wait_ready(600)
    assert "answered 503 (models 503)" in notices[0]


# --- downtime during a run -------------------------------------------------------------------------------
async def test_endpoint_down_then_back_the_request_waits_without_spending_its_budget():
    """Down for longer than max_attempts backoffs would last: the request still succeeds, and says so."""
    server = FaultServer().start()
    clock, notices = FakeClock(), []
    try:
        async with client([server.base_url], clock=clock, notices=notices) as c:
            await c.wait_ready(0)
            server.stop()  # it crashes
            clock.at(120, server.start)  # and is back two minutes later
            outcome = await c.send(request())
        assert outcome.status == "ok" and outcome.attempts == 1
        assert outcome.wait_s >= 120 and outcome.latency_s < 5  # the downtime is wait time, not latency
        assert any(n.startswith(f"{server.base_url} is down (connection refused") for n in notices)
        assert any(n.startswith(f"{server.base_url} is back after") for n in notices)
    finally:
        server.close()


async def test_downtime_longer_than_the_limit_stops_the_run_not_each_sample():
    server = FaultServer().start()
    clock = FakeClock()
    try:
        async with client([server.base_url], clock=clock) as c:
            await c.wait_ready(0)
            server.stop()
            with pytest.raises(EndpointsDown) as err:
                await c.send(request())
        assert "more than 5 min" in str(err.value) and "resumable" in err.value.fix
        assert clock.now - 1000 >= POLICY.max_downtime_s
    finally:
        server.close()


async def test_a_dead_endpoint_is_skipped_while_another_serves():
    with FaultServer() as live, FaultServer() as dying:
        async with client([live.base_url, dying.base_url], concurrency=4) as c:
            await c.wait_ready(0)
            first = await asyncio.gather(*(c.send(request(f"a{i}")) for i in range(8)))
            dying.stop()
            second = await asyncio.gather(*(c.send(request(f"b{i}")) for i in range(8)))
    assert all(o.status == "ok" for o in first + second)
    assert dying.chat_requests > 0  # it did share the load while alive
    assert all(o.endpoint == live.base_url for o in second) and all(o.attempts == 1 for o in second)


async def test_an_endpoint_down_at_the_start_joins_when_it_comes_up():
    with FaultServer() as up:
        late = FaultServer()
        clock = FakeClock()
        clock.at(30, late.start)
        try:
            async with client([up.base_url, late.base_url], clock=clock, concurrency=8) as c:
                await c.wait_ready(0)  # one ready endpoint is enough
                assert not c.endpoints[1].up
                await c.pool._watchers.copy().pop()  # the watcher brings it back
                assert c.endpoints[1].up
                outcomes = await asyncio.gather(*(c.send(request(f"q{i}")) for i in range(16)))
            assert {o.endpoint for o in outcomes} == {up.base_url, late.base_url}
        finally:
            late.close()


# --- the judge follows the same rules ----------------------------------------------------------------------
async def test_the_judge_uses_the_same_readiness_rules():
    with FaultServer(api_key="right") as server:
        server.models_need_key = True
        async with JudgeClient(JudgeConfig(url=server.base_url + "/v1", api_key="wrong"), clock=FakeClock()) as judge:
            with pytest.raises(AuthError):
                await judge.wait_ready()
    dead = FaultServer()
    async with JudgeClient(JudgeConfig(url=dead.base_url, wait_s=30), clock=FakeClock()) as judge:
        with pytest.raises(EndpointNotReady, match="connection refused"):
            await judge.wait_ready()
    dead.close()
