"""The evaluator's HTTP transport (aiohttp's pool under httpx's request/response types, sent through
`HttpSession`) on real loopback sockets: what it sends, each named timeout, stale kept-alive connections,
and its cost per request (the reason it exists)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from evaluator.client import ChatClient
from evaluator.http_policy import RetryPolicy, Timeouts, perform
from evaluator.schema import ChatRequest, GenerationParams
from evaluator.transport import AiohttpTransport, HttpSession
from tests.faults import FaultServer
from tests.server_process import free_port

ONE_TRY = RetryPolicy(max_attempts=1)


def request(text: str = "Вопрос: «2+2»?\nОТВЕТ:") -> ChatRequest:
    return ChatRequest(sample_key=f"t/-/test/{text}", modality="image", params=GenerationParams(model="fault-model"),
                       messages=[{"role": "user", "content": [{"type": "text", "text": text}]}], digest="d")


async def test_the_chat_client_sends_through_aiohttp_the_same_json_and_headers():
    with FaultServer() as server:
        async with ChatClient([server.base_url], api_key="k") as client:
            assert isinstance(client._http.transport, AiohttpTransport)
            outcome = await client.send(request())
        assert outcome.status == "ok" and outcome.content == "ОТВЕТ A" and outcome.attempts == 1
        assert server.bodies == [request().payload()]  # the UTF-8 JSON parses back to exactly the payload


async def test_the_session_sends_httpxs_default_headers_and_refuses_what_is_not_http():
    with FaultServer() as server:
        async with HttpSession(AiohttpTransport(), headers={"Authorization": "Bearer k"}) as http:
            attempt = await perform(http, "GET", server.base_url + "/v1/models", timeouts=Timeouts())
            assert attempt.status == 200 and attempt.failure is None
            sent = server.headers[-1]
            assert sent["authorization"] == "Bearer k" and sent["accept"] == "*/*"
            assert sent["accept-encoding"] == "gzip, deflate" and sent["user-agent"].startswith("python-httpx/")
            for url, said in [("ftp://127.0.0.1/x", "unsupported protocol 'ftp://'"),
                              ("localhost:8000/v1", "unsupported protocol 'localhost://'"),
                              ("//127.0.0.1/v1", "missing an 'http://' or 'https://' protocol")]:
                attempt = await perform(http, "GET", url, timeouts=Timeouts())
                assert attempt.failure == "bad_url" and said in attempt.problem, attempt.problem
        with pytest.raises(RuntimeError, match="closed"):
            await http.send(http.build_request("GET", server.base_url + "/v1/models", timeout=httpx.Timeout(5)))


async def test_a_kept_alive_connection_the_server_closed_is_not_a_failed_attempt():
    """The server's idle timer closes the connection just before the next request reuses it: the request
    goes out on a fresh connection, not as a 'dropped' attempt (httpx's pool checks idle sockets too)."""
    with FaultServer() as server:
        async with ChatClient([server.base_url], retry=ONE_TRY) as client:
            assert (await client.send(request("a"))).status == "ok"
            server.drop_connections()
            await asyncio.sleep(0)  # the close is on the wire, not yet seen by the client's loop
            second = await client.send(request("b"))
        assert second.status == "ok" and second.attempts == 1 and client.retries == 0, second.error
        assert server.chat_requests == 2


async def test_a_request_the_server_drops_on_a_new_connection_is_reported_as_dropped():
    with FaultServer(script=["drop"]) as server:
        async with HttpSession(AiohttpTransport()) as http:
            attempt = await perform(http, "POST", server.base_url + "/v1/chat/completions", body={"x": 1},
                                    timeouts=Timeouts())
        assert server.chat_requests == 1
    assert attempt.failure == "dropped" and attempt.problem == "the server closed the connection without answering"


async def test_a_body_the_server_does_not_read_is_a_write_timeout():
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(reader, writer):
        accepted.append(writer)

    port = free_port()
    server = await asyncio.start_server(never_read, "127.0.0.1", port)
    try:
        async with HttpSession(AiohttpTransport()) as http:
            started = time.monotonic()
            attempt = await perform(http, "POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                                    body={"media": "A" * (64 * 1024 * 1024)}, timeouts=Timeouts(write_s=0.5))
            took = time.monotonic() - started
    finally:
        for writer in accepted:
            writer.close()
        server.close()
    assert attempt.failure == "write_timeout"
    assert attempt.problem == "could not send the 64.0 MiB request within 0.5 s (write timeout)"
    assert took < 5


async def test_no_free_connection_is_a_pool_timeout():
    with FaultServer(script=["hang"]) as server:
        async with HttpSession(AiohttpTransport(max_connections=1)) as http:
            url = server.base_url + "/v1/chat/completions"
            hanging = asyncio.create_task(perform(http, "POST", url, body={}, timeouts=Timeouts()))
            await asyncio.sleep(0.2)
            waiting = await perform(http, "POST", url, body={}, timeouts=Timeouts(pool_s=0.2))
            hanging.cancel()
    assert waiting.failure == "pool_timeout" and "within 0.2 s (pool timeout)" in waiting.problem


async def test_a_key_with_a_newline_is_refused_before_sending():
    with FaultServer() as server:
        async with ChatClient([server.base_url], api_key="key\n") as client:
            with pytest.raises(Exception, match="could not be formed") as err:
                await client.send(request())
        assert server.chat_requests == 0
    assert "stray characters" in err.value.fix


async def test_a_gzip_reply_is_decoded_and_a_corrupt_one_is_a_decoding_failure():
    with FaultServer(script=["badgzip"]) as server:
        async with HttpSession(AiohttpTransport()) as http:
            attempt = await perform(http, "POST", server.base_url + "/v1/chat/completions", body={},
                                    timeouts=Timeouts())
    assert attempt.failure == "decoding"


async def test_the_send_path_costs_well_under_the_old_pools_cpu_per_request():
    """600 short requests at 64 in flight: client-thread CPU per request (the fault server runs in its own
    thread, not counted). The issue's budget is 3 ms; httpcore's pool took 3.2-5.3 ms here, this transport
    0.8-1.8 ms (load average 1.5-8 on the shared 2-core machine)."""
    with FaultServer(keep_bodies=False) as server:
        async with ChatClient([server.base_url], concurrency=64) as client:
            await asyncio.gather(*(client.send(request()) for _ in range(64)))  # connections opened
            cpu0 = time.thread_time()
            outcomes = await asyncio.gather(*(client.send(request()) for _ in range(600)))
            cpu_ms = (time.thread_time() - cpu0) * 1000 / 600
    assert all(o.status == "ok" for o in outcomes)
    assert cpu_ms < 3.0, f"{cpu_ms:.2f} ms CPU per request"


def test_request_bodies_are_the_json_the_stdlib_writes():
    from evaluator.http_policy import _JSON

    body = {"model": "m", "temperature": 0.0, "stop": ["<eos>"], "seed": 1234,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Ответ \u2028 \"q\" \\ \x01 😀"}]}]}
    assert _JSON.encode(body) == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
