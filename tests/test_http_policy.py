"""The one HTTP call policy, decision by decision, with a fake clock and hand-made attempts: nothing here
sleeps or touches the network (tests/test_client.py drives the same policy through a real loopback server)."""

from __future__ import annotations

import email.utils
import random
import socket
import ssl

import httpx
import pytest

from evaluator.http_policy import (
    Attempt,
    AuthError,
    EndpointError,
    RetryPolicy,
    Timeouts,
    classify,
    error_message,
    parse_retry_after,
)
from tests.fake_clock import FakeClock

POLICY = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=8.0)
URL = "http://127.0.0.1:8000/v1/chat/completions"


def reply(status: int, body: bytes | dict = b"", **headers: str) -> Attempt:
    data = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    return Attempt(url=URL, sent_at=0.0, finished_at=1.0, status=status, body=data,
                   headers=httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()}))


def failed(exc: BaseException, *, in_body: bool = False, read: int = 0, declared: int | None = None) -> Attempt:
    attempt = Attempt(url=URL, sent_at=0.0, read_bytes=read, declared_bytes=declared)
    attempt.failure, attempt.problem = classify(exc, attempt, Timeouts(first_byte_s=600, connect_s=10), in_body=in_body,
                                                request_bytes=3 * 1024 * 1024)
    attempt.cause = exc
    return attempt


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


# --- backoff ---------------------------------------------------------------------------------------
def test_backoff_is_exponential_with_full_jitter_and_capped():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [POLICY.delay(attempt, rng=rng) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.7  # the range is used ...
        assert len(set(delays)) > 250  # ... randomly (jitter: clients do not retry in lock-step)


def test_retry_after_is_a_floor_but_bounded():
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=2.0)
    assert all(policy.delay(1, retry_after=5.0) >= 5.0 for _ in range(50))
    assert policy.delay(1, retry_after=10_000) == 10.0  # a silly Retry-After cannot park the run for hours


def test_parse_retry_after_seconds_dates_and_junk_on_the_injected_clock():
    clock = FakeClock(wall=1_700_000_000.0)  # whole seconds: HTTP dates have no fractions
    assert parse_retry_after("3", clock) == 3.0 and parse_retry_after("0.5", clock) == 0.5
    assert parse_retry_after(None, clock) is None and parse_retry_after("", clock) is None
    assert parse_retry_after("-4", clock) == 0.0
    assert parse_retry_after(email.utils.formatdate(clock.time() + 30, usegmt=True), clock) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", clock) == 0.0  # in the past
    assert parse_retry_after("soon-ish", clock) is None  # malformed: plain backoff, never a crash


# --- statuses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 409, 425, 429, *range(500, 600)])
def test_every_transient_status_is_retried_then_recorded_as_failed(status):
    early = POLICY.decide(reply(status, {"error": {"message": "busy"}}), 1)
    assert early.action == "retry" and early.message == f"HTTP {status}: busy"
    last = POLICY.decide(reply(status, {"error": {"message": "busy"}}), POLICY.max_attempts)
    assert last.action == "record" and last.status == "failed" and "after 4 attempts" in last.message


def test_the_statuses_proxies_and_cdns_send_are_transient():
    for status in (501, 505, 507, 520, 521, 522, 523, 524):  # recorded as "rejected (4xx)" before
        assert POLICY.decide(reply(status), 1).action == "retry"


@pytest.mark.parametrize("status", [400, 405, 410, 413, 415, 422, 451])
def test_the_requests_own_fault_is_recorded_once_with_the_servers_message(status):
    decision = POLICY.decide(reply(status, {"error": {"message": "too long", "type": "BadRequestError"}}), 1)
    assert decision.action == "record" and decision.status == "invalid_request" and decision.message == "too long"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_aborts_with_the_fix(status):
    decision = POLICY.decide(reply(status, {"error": "Unauthorized"}), 1)
    assert decision.action == "abort" and isinstance(decision.error, AuthError)
    assert f"answered {status} (Unauthorized)" in decision.error.one_line() and "--api-key" in decision.error.one_line()


def test_404_and_redirects_abort_naming_the_url():
    missing = POLICY.decide(reply(404, {"error": {"message": "The model `x` does not exist."}}), 1)
    assert missing.action == "abort" and "does not exist" in str(missing.error) and "--model" in missing.error.fix
    moved = POLICY.decide(reply(308, b"", location="https://gw/v1/chat/completions"), 1)
    assert moved.action == "abort" and "redirects (308) to https://gw/v1/chat/completions" in str(moved.error)


def test_x_should_retry_overrides_the_status():
    assert POLICY.decide(reply(400, b"", x_should_retry="true"), 1).action == "retry"
    assert POLICY.decide(reply(503, b"", x_should_retry="false"), 1).action == "record"


def test_retry_after_from_a_429_and_an_http_date_sets_the_delay():
    clock = FakeClock(wall=1_700_000_000.0)  # whole seconds: HTTP dates have no fractions
    assert POLICY.decide(reply(429, b"", retry_after="7"), 1, clock).delay_s >= 7
    date = email.utils.formatdate(clock.time() + 20, usegmt=True)
    assert 20 <= POLICY.decide(reply(503, b"", retry_after=date), 1, clock).delay_s <= 40  # capped at 5 x 8 s


def test_a_2xx_is_ok():
    assert POLICY.decide(reply(200, {"choices": []}), 1).action == "ok"


# --- every httpx error class -------------------------------------------------------------------------
def test_connection_failures_ask_whether_the_endpoint_is_down_first():
    refused = chained(httpx.ConnectError("All connection attempts failed"), ConnectionRefusedError(111, "refused"))
    for exc in (refused, httpx.ConnectTimeout("t"), httpx.RemoteProtocolError("Server disconnected"),
                httpx.ReadError("reset"), httpx.WriteError("broken pipe")):
        attempt = failed(exc)
        assert POLICY.decide(attempt, 1).action == "check_endpoint", exc
        # the endpoint answers: then it was this request's transient failure
        assert POLICY.decide(attempt, 1, endpoint_up=True).action == "retry"
    assert failed(refused).problem == "connection refused"
    assert failed(httpx.ConnectTimeout("t")).problem == "no connection within 10 s (connect timeout)"


def test_timeouts_say_which_phase_and_after_how_long():
    first = failed(httpx.ReadTimeout("t"))
    assert first.failure == "first_byte_timeout"
    assert first.problem == "no reply within 600 s of sending the request (first-byte timeout)"
    body = failed(httpx.ReadTimeout("t"), in_body=True, read=2048)
    assert body.failure == "body_timeout" and "stalled after 2.0 KiB" in body.problem
    assert "3.0 MiB request within 600 s (write timeout)" in failed(httpx.WriteTimeout("t")).problem
    assert "pool timeout" in failed(httpx.PoolTimeout("t")).problem
    for attempt in (first, body):
        decision = POLICY.decide(attempt, 1)
        assert decision.action == "retry"
        assert POLICY.decide(attempt, 4).message.endswith("(after 4 attempts)")  # never "ReadTimeout: " alone


def test_a_body_cut_off_is_retried_then_recorded_as_truncated():
    attempt = failed(httpx.RemoteProtocolError("peer closed connection"), in_body=True, read=500, declared=1000)
    assert attempt.problem == "the reply was cut off after 500 bytes of 1000 bytes"
    assert POLICY.decide(attempt, 1).action == "retry"
    last = POLICY.decide(attempt, 4)
    assert last.action == "record" and last.status == "truncated"


def test_a_body_that_cannot_be_decoded_is_retried():
    attempt = failed(httpx.DecodingError("Error -3 while decompressing data"), in_body=True)
    assert attempt.failure == "decoding" and POLICY.decide(attempt, 1).action == "retry"
    assert POLICY.decide(attempt, 4).status == "failed"


def test_an_oversized_reply_is_recorded_not_retried():
    attempt = Attempt(url=URL, sent_at=0, failure="oversized", problem="over the cap")
    decision = POLICY.decide(attempt, 1)
    assert decision.action == "record" and decision.status == "oversized"


@pytest.mark.parametrize(("exc", "needle", "fix"), [
    (chained(httpx.ConnectError("x"), socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
     "cannot resolve the host name '127.0.0.1'", "host name"),
    (chained(httpx.ConnectError("x"), ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")),
     "TLS handshake failed", "use http:// instead of https://"),
    (httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."), "not an http://",
     "full URL"),
    (httpx.InvalidURL("Invalid port"), "not an http://", "full URL"),
    (httpx.ProxyError("407 Proxy Authentication Required"), "proxy", "HTTP_PROXY"),
    (httpx.LocalProtocolError("Illegal header value b'key\\n'"), "could not be formed", "stray characters"),
    (httpx.TooManyRedirects("Exceeded maximum allowed redirects."), "too many redirects", "redirects to"),
])
def test_what_waiting_cannot_fix_aborts_with_the_fix(exc, needle, fix):
    decision = POLICY.decide(failed(exc), 1)
    assert decision.action == "abort" and isinstance(decision.error, EndpointError)
    assert needle in str(decision.error) and fix in decision.error.fix


def test_a_resolver_that_is_not_answering_yet_is_waited_for():
    exc = chained(httpx.ConnectError("x"), socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    assert POLICY.decide(failed(exc), 1).action == "check_endpoint"


def test_error_message_takes_the_servers_words():
    assert error_message(400, b'{"error": {"message": "too long", "type": "BadRequestError"}}') == "too long"
    assert error_message(422, b'{"detail": "field required"}') == "field required"  # FastAPI style
    assert error_message(401, b'{"error": "Unauthorized"}') == "Unauthorized"  # vLLM's auth middleware
    assert error_message(413, b"<html>Request Entity Too Large</html>") == "<html>Request Entity Too Large</html>"
    assert error_message(502, b"", "Bad Gateway") == "Bad Gateway"
