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
    sock = conn.sock
    conn.request("POST", "/v1/chat/completions", json.dumps(chat_payload(dev_server, "hi")), headers)
    good = conn.getresponse()
    good.read()
    assert good.status == 200 and conn.sock is sock  # same keep-alive connection
    conn.close()


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
