"""The guard inside the real vLLM CPU dev server (`mera-serve --dev`, API key set, guard on):
each bad input gets its 4xx quickly, and the server keeps answering good requests."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.guard.config import GuardSettings
from tests.media_factory import audio_bytes, data_url, image_bytes

pytestmark = pytest.mark.server

PROTECTED_GET = ["/v1/models", "/version", "/docs", "/openapi.json", "/metrics", "/load", "/ping",
                 "/is_scaling_elastic_ep", "/server_info"]  # fmt: skip
PROTECTED_POST = ["/v1/chat/completions", "/invocations", "/tokenize", "/detokenize", "/scale_elastic_ep",
                  "/v1/completions", "/generative_scoring"]  # fmt: skip


def chat_payload(server, content, max_tokens: int = 4) -> dict:
    return {"model": server.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip


def assert_the_connection_serves_the_next_request(conn: http.client.HTTPConnection, server, headers) -> None:
    """After a reply on `conn`: a plain chat request on the same keep-alive connection is answered (200)."""
    sock = conn.sock
    conn.request("POST", "/v1/chat/completions", json.dumps(chat_payload(server, "hi")), headers)
    good = conn.getresponse()
    good.read()
    assert good.status == 200 and conn.sock is sock  # same keep-alive connection
    conn.close()


def post_chat(server, content, *, timeout: float = 120, client: httpx.Client | None = None) -> httpx.Response:
    poster = client or httpx
    return poster.post(server.url("/v1/chat/completions"), json=chat_payload(server, content), headers=server.headers,
                       timeout=timeout)  # fmt: skip


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def bomb_png(side: int = 20000) -> bytes:
    """A real decompression bomb: side x side 1-bit black PNG, a few hundred KB on the wire."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_guard_error(reply: httpx.Response, status: int, *fragments: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    assert reply.headers.get("x-request-id")
    return error


@pytest.fixture(scope="module")
def canary():
    """A loopback HTTP server that records every hit: nothing the guard refuses may reach it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_every_route_but_health_needs_the_key(dev_server):
    with httpx.Client(timeout=30) as client:
        for path in PROTECTED_GET:
            reply = client.get(dev_server.url(path))
            assert reply.status_code == 401, (path, reply.status_code)
            assert reply.json()["error"]["code"] == "invalid_api_key"
        for path in PROTECTED_POST:
            reply = client.post(
                dev_server.url(path),
                json={
                    "model": dev_server.model,
                    "prompt": "hi",
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert reply.status_code == 401, (path, reply.status_code)
        assert client.get(dev_server.url("/health")).status_code == 200
        assert client.get(dev_server.url("/metrics"), headers=dev_server.headers).status_code == 200


def test_declared_huge_body_is_refused_before_it_is_sent(dev_server):
    """Headers announce 300 MB, no body follows: the 413 must come at once, not after a read."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", dev_server.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev_server.api_key}"
                "\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{"
            ).encode()
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert time.monotonic() - started < 5
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"limit of" in body and b"connection: close" in head.lower()


def test_streamed_oversized_body_is_cut_off(dev_server):
    limit = GuardSettings().max_body_bytes
    sent = 0

    def chunks():
        nonlocal sent
        block = b" " * (4 << 20)
        while sent < limit + (64 << 20):  # keeps sending past the limit
            sent += len(block)
            yield block

    started = time.monotonic()
    try:
        reply = httpx.post(
            dev_server.url("/v1/chat/completions"), content=chunks(), headers=dev_server.headers, timeout=60
        )
        assert reply.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the socket before the client finishes writing; both are refusals
    assert time.monotonic() - started < 60
    assert httpx.get(dev_server.url("/health"), timeout=10).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8000/metrics",
        "ftp://example.org/x.png",
    ],
)
def test_non_data_media_urls_are_400(dev_server, url):
    assert_guard_error(post_chat(dev_server, [image_part(url)], timeout=15), 400, "messages[0].content[0]")


def test_loopback_media_url_is_never_fetched(dev_server, canary):
    base, hits = canary
    reply = post_chat(dev_server, [{"type": "text", "text": "x"}, image_part(f"{base}/cat.png")], timeout=15)
    assert_guard_error(reply, 400, "messages[0].content[1]", "allow-list")
    assert hits == []


def test_decompression_bomb_png_is_400_fast(dev_server):
    bomb = bomb_png()
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    reply = post_chat(dev_server, [image_part(data_url("image/png", bomb))], timeout=30)
    assert_guard_error(reply, 400, "messages[0].content[0]", "too large")
    assert time.monotonic() - started < 3


def test_long_audio_follows_the_setting(dev_server):
    part = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(45))}}
    reply = post_chat(dev_server, [{"type": "text", "text": "Послушай."}, part])
    if GuardSettings().long_audio == "truncate":
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-mera-audio-truncated"] == "1"
    else:
        assert_guard_error(reply, 400, "45.0 s")


@pytest.mark.parametrize(("part", "fragment"), [
    ({"type": "hologram"}, "unknown content part type"),
    (image_part("data:image/png,hello"), "base64"),
    (image_part("data:image/png;base64,AAAAAAAAAAAAAAAA"), "not a recognised image"),
    ({"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}, "not a recognised audio"),
])  # fmt: skip
def test_bad_part_is_400_with_indices_and_keeps_the_connection(dev_server, part, fragment):
    conn = http.client.HTTPConnection("127.0.0.1", dev_server.port, timeout=120)
    headers = {**dev_server.headers, "Content-Type": "application/json"}
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, part]
    bad = {
        **chat_payload(dev_server, "hi"),
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": content}],
    }
    conn.request("POST", "/v1/chat/completions", json.dumps(bad), headers)
    reply = conn.getresponse()
    error = json.loads(reply.read())["error"]
    assert reply.status == 400 and error["param"] == "messages[1].content[2]" and fragment in error["message"]
    assert_the_connection_serves_the_next_request(conn, dev_server, headers)


def test_good_multimodal_request_still_answers(dev_server):
    content = [
        {"type": "text", "text": "Что здесь?"},
        image_part(data_url("image/png", image_bytes())),
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(1.0))}},
    ]
    reply = httpx.post(
        dev_server.url("/v1/chat/completions"),
        json=chat_payload(dev_server, content),
        headers={**dev_server.headers, "x-request-id": "guard-live-1"},
        timeout=300,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "guard-live-1"
    assert "x-mera-audio-truncated" not in reply.headers
    assert reply.json()["usage"]["prompt_tokens"] > 250


def test_fifty_concurrent_mixed_requests_no_5xx(dev_server):
    bad_parts = [
        image_part("data:image/png,hello"),
        image_part("file:///etc/passwd"),
        {"type": "hologram"},
        image_part(data_url("image/png", b"GIF89a broken")),
    ]

    def one(i: int) -> int:
        if i % 2:
            content = [{"type": "text", "text": "x"}, bad_parts[i % len(bad_parts)]]
        else:
            content = f"Скажи число {i}."
        return post_chat(dev_server, content, timeout=300).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses.count(200) == 25 and statuses.count(400) == 25, statuses
    assert httpx.get(dev_server.url("/health"), timeout=10).status_code == 200
    assert post_chat(dev_server, "Ещё раз?").status_code == 200


# --- issue 14: every case of its "Why", then a good request on the same server ------------------------------
def assert_still_serving(server) -> None:
    reply = post_chat(server, "Ещё раз?", timeout=300)
    assert reply.status_code == 200, reply.text


def bomb_mp4(side: int = 4096, frames: int = 32) -> bytes:
    """A real video decode bomb: side x side H.264, `frames` black frames, tens of KB on the wire."""
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((side * 3 // 2, side), np.uint8), format="yuv420p")
        for _ in range(frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_eight_thousand_messages_are_refused_and_other_requests_are_unaffected(dev_server):
    many = {**chat_payload(dev_server, "x"),
            "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(8000)]}
    assert len(json.dumps(many)) < 300_000

    def bad() -> tuple[int, float]:
        started = time.monotonic()
        reply = httpx.post(dev_server.url("/v1/chat/completions"), json=many, headers=dev_server.headers, timeout=60)
        return reply.status_code, time.monotonic() - started

    with ThreadPoolExecutor(9) as pool:
        refused = pool.submit(bad)
        good = [pool.submit(lambda i=i: post_chat(dev_server, f"Скажи {i}.", timeout=300).status_code)
                for i in range(8)]  # fmt: skip
        status, seconds = refused.result()
        assert status == 400 and seconds < 5
        assert [g.result() for g in good] == [200] * 8
    assert_still_serving(dev_server)


def test_video_decode_bomb_is_refused_from_its_header(dev_server):
    bomb = bomb_mp4()
    assert len(bomb) < 1_000_000
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", bomb)}}
    reply = post_chat(dev_server, [{"type": "text", "text": "Что происходит?"}, part], timeout=60)
    assert_guard_error(reply, 400, "messages[0].content[1]", "4096x4096 with 32 frames to sample")
    assert_still_serving(dev_server)


@pytest.mark.parametrize("side", [20000, 13000])
def test_batch_route_is_inspected(dev_server, side):
    batch = {"model": dev_server.model, "max_tokens": 4, "temperature": 0, "messages": [
        [{"role": "user", "content": "Привет"}],
        [{"role": "user", "content": [{"type": "text", "text": "Что здесь?"}, image_part(data_url("image/png",
                                                                                                    bomb_png(side)))]}],
    ]}  # fmt: skip
    reply = httpx.post(dev_server.url("/v1/chat/completions/batch"), json=batch, headers=dev_server.headers,
                       timeout=60)  # fmt: skip
    error = assert_guard_error(reply, 400, "messages[1][0].content[1]")
    assert error["code"] == "invalid_media"
    batch["messages"][1] = [{"role": "user", "content": "И ещё"}]
    good = httpx.post(dev_server.url("/v1/chat/completions/batch"), json=batch, headers=dev_server.headers,
                      timeout=300)  # fmt: skip
    assert good.status_code == 200, good.text


def test_a_uuid_cannot_smuggle_an_image_past_the_guard(dev_server):
    hidden = {"type": "text", "text": "hi", "uuid": "u1", "image_url": {"url": data_url("image/png", bomb_png())}}
    assert_guard_error(post_chat(dev_server, [hidden], timeout=30), 400, "messages[0].content[0]", "too large")
    assert_still_serving(dev_server)


def test_options_is_open_only_for_real_preflights(dev_server):
    bare = httpx.options(dev_server.url("/metrics"), timeout=30)
    assert bare.status_code == 401 and "vllm" not in bare.text
    preflight = httpx.options(dev_server.url("/v1/chat/completions"), timeout=30, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})  # fmt: skip
    # Past the guard, answered by vLLM's CORS middleware (which refuses origins it does not allow).
    assert preflight.status_code != 401 and "access-control-allow-methods" in preflight.headers


def test_deep_json_is_a_400_on_a_connection_that_stays_open(dev_server):
    conn = http.client.HTTPConnection("127.0.0.1", dev_server.port, timeout=120)
    headers = {**dev_server.headers, "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", '{"model": "m", "x": ' + "[" * 1000 + "]" * 1000 + "}", headers)
    reply = conn.getresponse()
    assert reply.status == 400 and json.loads(reply.read())["error"]["code"] == "json_too_deep"
    assert_the_connection_serves_the_next_request(conn, dev_server, headers)


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_trickled_body_is_closed_at_the_total_deadline(dev_server):
    from tests.conftest import BODY_TIMEOUT_S

    with socket.create_connection(("127.0.0.1", dev_server.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev_server.api_key}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").encode())  # fmt: skip
        started = time.monotonic()
        sock.settimeout(3)
        reply = b""
        while time.monotonic() - started < BODY_TIMEOUT_S + 30:  # one byte every 3 s: never idle for long
            try:
                sock.sendall(b" ")
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if reply:
                reply += _read_until_closed(sock, 10)
                break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply, reply[:200]
    assert BODY_TIMEOUT_S - 1 <= elapsed < BODY_TIMEOUT_S + 15
    assert_still_serving(dev_server)


def test_a_partial_header_line_is_closed_at_the_header_deadline(dev_server):
    from tests.conftest import HEADER_TIMEOUT_S

    with socket.create_connection(("127.0.0.1", dev_server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaa")
        reply = _read_until_closed(sock, HEADER_TIMEOUT_S + 15)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408") and HEADER_TIMEOUT_S - 1 <= elapsed < HEADER_TIMEOUT_S + 10
    assert_still_serving(dev_server)


def test_n_is_bounded(dev_server):
    payload = {**chat_payload(dev_server, "Считай."), "n": 50, "max_tokens": 1500, "ignore_eos": True}
    started = time.monotonic()
    reply = httpx.post(dev_server.url("/v1/chat/completions"), json=payload, headers=dev_server.headers, timeout=60)
    assert_guard_error(reply, 400, "n = 50", "MAX_N")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("header", ["data:image/png;BASE64,", "data:image/png;base64;charset=utf-8,"])
def test_data_urls_vllm_cannot_decode_are_the_guards_400(dev_server, header):
    url = header + data_url("image/png", image_bytes()).split(",", 1)[1]
    assert_guard_error(post_chat(dev_server, [image_part(url)], timeout=30), 400, "messages[0].content[0]", "';base64'")


def test_a_key_in_the_query_string_never_reaches_the_log(dev_server):
    secret = "query-secret-" + str(time.time_ns())
    reply = httpx.get(dev_server.url(f"/v1/models?api_key={secret}"), headers=dev_server.headers, timeout=30)
    assert reply.status_code == 200
    marker = reply.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while marker not in dev_server.log_path.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.2)
    log = dev_server.log_path.read_text(errors="replace")
    assert marker in log and secret not in log and dev_server.api_key not in log


def test_every_route_the_live_server_serves_is_known_to_the_guard(dev_server):
    from server.guard.routes import ROUTES

    paths = httpx.get(dev_server.url("/openapi.json"), headers=dev_server.headers, timeout=30).json()["paths"]
    assert "/v1/chat/completions/batch" in paths
    assert sorted(p for p in paths if p not in ROUTES) == []


def test_a_44khz_clip_is_answered_and_the_connection_serves_the_next_request(dev_server):
    """Issue 10's sequence: a 44.1 kHz clip (vLLM 0.32 without torchaudio raised inside its resampler,
    and uvicorn then dropped the keep-alive connection). Now the clip is answered (the CPU plugin's
    soxr resampler) and the same connection serves the next request. The path of an exception inside
    the app is tested on a real uvicorn in tests/test_guard_deadline.py."""
    conn = http.client.HTTPConnection("127.0.0.1", dev_server.port, timeout=300)
    headers = {**dev_server.headers, "Content-Type": "application/json"}
    clip = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(1.0, rate=44100))}}
    conn.request("POST", "/v1/chat/completions", json.dumps(chat_payload(dev_server, [clip])), headers)
    first = conn.getresponse()
    body = json.loads(first.read())
    assert first.status == 200, (first.status, body)
    assert_the_connection_serves_the_next_request(conn, dev_server, headers)
