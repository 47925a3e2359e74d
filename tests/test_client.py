"""The chat client against the loopback fault server: the one policy on real HTTP, every reply shape given a
status, the size cap, timeouts that say what timed out, latency measured from the send. Backoff sleeps go
through a fake clock: only the timeout tests wait (fractions of a second), because a socket timeout is real."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import textwrap

import pytest

from evaluator.client import ChatClient, completion_outcome
from evaluator.http_policy import Attempt, AuthError, EndpointError, RetryPolicy, Timeouts
from evaluator.schema import ChatRequest, GenerationParams
from tests.fake_clock import FakeClock
from tests.faults import FaultServer
from tests.server_process import PROJECT_ROOT, child_env

POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=4.0, max_downtime_s=300)


def request(text: str = "hello", modality: str = "image") -> ChatRequest:
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    return ChatRequest(sample_key=f"t/-/test/{text}", modality=modality, messages=messages,
                       params=GenerationParams(model="fault-model"), digest="d")


def client_for(*servers: FaultServer, **kwargs) -> ChatClient:
    kwargs.setdefault("retry", POLICY)
    kwargs.setdefault("clock", FakeClock())
    return ChatClient([s.base_url for s in servers], **kwargs)


# --- the policy on the wire ------------------------------------------------------------------------------
@pytest.mark.parametrize("failures", [["429"], ["503"], ["500", "520"], ["drop"], ["501", "507"], ["408", "524"]])
async def test_transient_failures_are_retried_then_succeed(failures):
    with FaultServer(script=failures) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == len(failures) + 1
    assert outcome.status == "ok" and outcome.content == "ОТВЕТ A"
    assert outcome.attempts == len(failures) + 1 and client.retries == len(failures)


async def test_a_520_from_a_cdn_is_retried():
    with FaultServer(script=["520"]) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
    assert outcome.status == "ok" and outcome.attempts == 2


async def test_retries_exhausted_is_a_failure_with_the_last_error_not_an_answer():
    with FaultServer(default="503") as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == POLICY.max_attempts
    assert outcome.status == "failed" and outcome.http_status == 503 and outcome.content is None
    assert outcome.error == "HTTP 503: injected 503 (after 3 attempts)"


@pytest.mark.parametrize("header", ["5", "date+15"])
async def test_retry_after_seconds_and_dates_are_waited_on_the_clock(header):
    clock = FakeClock()
    with FaultServer(script=[f"429:{header}"]) as server:
        async with client_for(server, clock=clock) as client:
            outcome = await client.send(request())
    assert outcome.status == "ok"
    assert len(clock.sleeps) == 1 and clock.sleeps[0] >= (5 if header == "5" else 13)
    assert outcome.wait_s == pytest.approx(clock.sleeps[0])  # the backoff is wait time, not latency


@pytest.mark.parametrize("status", ["400", "413", "422"])
async def test_the_requests_own_fault_is_recorded_once_with_the_servers_message(status):
    with FaultServer(script=[status]) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == 1
    assert outcome.status == "invalid_request" and outcome.http_status == int(status) and outcome.content is None
    assert outcome.error == ("This model's maximum context length is 10 tokens" if status == "400"
                             else f"injected {status}")


async def test_a_refused_key_raises_after_one_request_instead_of_a_stored_401():
    with FaultServer(api_key="s3cret") as server:
        async with client_for(server, api_key="s3cret") as client:
            assert (await client.send(request())).status == "ok"
        async with client_for(server, api_key="wrong") as client:
            with pytest.raises(AuthError, match="answered 401 \\(Unauthorized\\)") as refused:
                await client.send(request())
        assert server.chat_requests == 2
    assert refused.value.one_line().endswith("check --api-key / MERA_API_KEY")


async def test_an_unknown_model_or_route_and_a_redirect_end_the_run():
    with FaultServer(script=["404", "redirect"]) as server:
        async with client_for(server) as client:
            with pytest.raises(EndpointError, match="answered 404"):
                await client.send(request())
            with pytest.raises(EndpointError, match="redirects \\(307\\) to https://"):
                await client.send(request())


# --- every reply shape has a status --------------------------------------------------------------------
@pytest.mark.parametrize(("behaviour", "status", "message"), [
    ("null", "no_content", "message.content is null (finish_reason: length)"),
    ("nochoices", "no_choices", "the reply has no choices"),
    ("garbage", "no_choices", "the reply has no choices"),
    ("notjson", "not_json", "the reply is not JSON (text/html)"),
])
async def test_a_200_that_is_not_an_answer_has_its_own_status_and_evidence(behaviour, status, message):
    with FaultServer(script=[behaviour]) as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == 1  # deterministic generation: the same request gets the same reply
    assert outcome.status == status and outcome.content is None and outcome.http_status == 200
    assert outcome.error == message
    assert outcome.evidence["bytes"] > 0 and outcome.evidence["excerpt"]


async def test_a_cut_off_body_is_retried_then_recorded_as_truncated_with_sizes():
    with FaultServer(default="truncate") as server:
        async with client_for(server) as client:
            outcome = await client.send(request())
        assert server.chat_requests == POLICY.max_attempts
    assert outcome.status == "truncated" and outcome.content is None
    assert outcome.evidence["bytes"] * 2 in (outcome.evidence["content_length"], outcome.evidence["content_length"] - 1)
    assert "the reply was cut off after" in outcome.error


@pytest.mark.parametrize("behaviour", ["huge:40", "hugechunked:40"])
async def test_an_oversized_reply_is_refused_at_the_cap_without_being_read_whole(behaviour):
    cap = 2 * 1024 * 1024
    with FaultServer(script=[behaviour]) as server:
        async with client_for(server, retry=POLICY.model_copy(update={"max_reply_bytes": cap})) as client:
            outcome = await client.send(request())
        assert server.chat_requests == 1
    assert outcome.status == "oversized" and outcome.content is None
    assert "over the 2.0 MiB cap" in outcome.error
    assert outcome.evidence["bytes"] <= cap + 1024 * 1024  # at most one chunk past the cap was read
    if behaviour == "huge:40":
        assert outcome.evidence["content_length"] == 40 * 1024 * 1024 and outcome.evidence["bytes"] == 0


def test_a_100_mb_reply_keeps_the_evaluator_under_its_memory_bound():
    """The issue's case: a 200 with a 100 MB body. Default cap 8 MiB; the client process's peak RSS grows
    by less than 3 x the cap (measured in a fresh process so the test's own memory does not count)."""
    with FaultServer(default="hugechunked:100") as server:
        script = textwrap.dedent(f"""
            import asyncio, json, resource
            from evaluator.client import ChatClient
            from evaluator.schema import ChatRequest, GenerationParams
            async def main():
                req = ChatRequest(sample_key="t/-/test/1", modality="image", params=GenerationParams(model="m"),
                                  messages=[{{"role": "user", "content": "hi"}}], digest="d")
                async with ChatClient([{server.base_url!r}]) as client:
                    await client.wait_ready(5)
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    outcomes = [await client.send(req) for _ in range(2)]
                    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                print(json.dumps({{"statuses": [o.status for o in outcomes], "grew_kb": after - before}}))
            asyncio.run(main())
        """)
        proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=child_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert server.chat_requests == 2
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["statuses"] == ["oversized", "oversized"]
    assert result["grew_kb"] < 3 * 8 * 1024, result  # the issue measured 3.1 GB for 2 such samples
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_completion_parsing_takes_text_parts_and_refuses_other_content():
    def attempt(body: dict) -> Attempt:
        return Attempt(url="u", sent_at=0, status=200, body=json.dumps(body).encode())

    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]}}]}
    assert completion_outcome(attempt(parts)).content == "AB"
    number = completion_outcome(attempt({"choices": [{"message": {"content": 3}}]}))
    assert number.status == "no_content" and "a int, not text" in number.error
    empty = completion_outcome(attempt({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}))
    assert empty.status == "ok" and empty.content == ""  # an empty answer is an answer (scored, wrong)
    error = completion_outcome(attempt({"error": {"message": "upstream exploded"}}))
    assert error.status == "no_choices" and error.error == "the reply has no choices: upstream exploded"


# --- timing ---------------------------------------------------------------------------------------------
async def test_timeouts_say_what_timed_out_and_after_how_long():
    with FaultServer(default="hang") as server:
        async with ChatClient([server.base_url], retry=POLICY.model_copy(update={"max_attempts": 1}),
                              timeouts={"image": 0.3}) as client:
            outcome = await client.send(request())
    assert outcome.status == "failed"
    assert outcome.error == "no reply within 0.3 s of sending the request (first-byte timeout) (after 1 attempts)"


async def test_a_stalled_body_times_out_as_a_body_timeout():
    with FaultServer(default="stall") as server:
        async with ChatClient([server.base_url], retry=POLICY.model_copy(update={"max_attempts": 1})) as client:
            client.timeouts_for = lambda modality: Timeouts(first_byte_s=0.5, body_s=0.3)
            outcome = await client.send(request())
    assert outcome.status == "failed" and "body did not arrive within 0.3 s" in outcome.error


async def test_timeouts_are_per_modality():
    with FaultServer(script=["slow:0.6", "slow:0.6"]) as server:
        async with ChatClient([server.base_url], retry=POLICY.model_copy(update={"base_delay_s": 0.01}),
                              timeouts={"image": 0.2, "video": 5.0}) as client:
            video = await client.send(request("v", modality="video"))
            image = await client.send(request("i", modality="image"))
    assert video.status == "ok" and video.attempts == 1
    assert image.status == "ok" and image.attempts == 2  # the first try timed out at 0.2 s


async def test_latency_is_measured_from_the_send_and_queueing_apart():
    """One slot, two requests to a server that takes 0.3 s: the second waits ~0.3 s for the slot, and its
    latency is its own exchange, not the wait plus the exchange."""
    with FaultServer(default="slow:0.3") as server:
        async with ChatClient([server.base_url], concurrency=1, retry=POLICY) as client:
            first, second = await asyncio.gather(client.send(request("a")), client.send(request("b")))
    assert first.queue_s < 0.1 and 0.25 < first.latency_s < 1.0
    assert second.queue_s > 0.25 and 0.25 < second.latency_s < second.queue_s + 0.3
    assert second.wait_s < 0.01  # no backoff, no downtime


async def test_a_request_that_queued_longer_than_the_downtime_limit_is_still_retried():
    """The downtime clock starts at the send, not when the request was queued (it used to fail at once)."""
    clock = FakeClock()
    policy = POLICY.model_copy(update={"max_downtime_s": 10})
    with FaultServer(script=["503"]) as server:
        async with client_for(server, clock=clock, retry=policy, concurrency=1) as client:
            await client._slots.acquire()  # another request holds the only slot ...
            pending = asyncio.create_task(client.send(request()))
            await asyncio.sleep(0.05)
            clock.advance(60)  # ... for a minute
            client._slots.release()
            outcome = await pending
    assert outcome.status == "ok" and outcome.attempts == 2 and outcome.queue_s == 60


async def test_concurrency_is_bounded():
    with FaultServer(default="slow:0.2") as server:
        async with client_for(server, concurrency=3) as client:
            outcomes = await asyncio.gather(*(client.send(request(f"q{i}")) for i in range(12)))
        assert server.max_in_flight == 3
    assert all(o.status == "ok" for o in outcomes)
