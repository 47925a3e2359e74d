"""The guard's rules, each against a tiny Starlette app wrapped by GuardMiddleware (in process)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import zlib

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from server.guard.access_log import LOGGER_NAME
from server.guard.app import GuardMiddleware
from server.guard.config import GuardSettings
from server.guard.remote import MediaFetcher
from tests.media_factory import audio_bytes, data_url, image_bytes, video_bytes

KEY = "unit-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


# --- the wrapped app -----------------------------------------------------------------------------
async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return JSONResponse({"app_says": "malformed JSON"}, status_code=400)
    return JSONResponse(
        {"bytes": len(body), "json": payload, "request_id": request.headers.get("x-request-id")}
    )


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def stream(request: Request) -> StreamingResponse:
    async def chunks():
        for i in range(3):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/event-stream")


# vLLM's GET routes that must need the key (only /health stays open).
KEYED_GET_PATHS = ("/metrics", "/version", "/docs", "/openapi.json", "/ping", "/load", "/v1/models",
                   "/is_scaling_elastic_ep")

ROUTES = [
    Route("/v1/chat/completions", echo, methods=["POST"]),
    Route("/invocations", echo, methods=["POST"]),
    Route("/tokenize", echo, methods=["POST"]),
    Route("/v1/stream", stream, methods=["POST"]),
] + [
    Route(p, plain)
    for p in ("/health", *KEYED_GET_PATHS)
]


def public_resolver(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return resolve


def make_guard(
    transport: httpx.AsyncBaseTransport | None = None, key: str | None = KEY, **overrides
) -> GuardMiddleware:
    settings = GuardSettings(**{"limit_mm_per_prompt": {"image": 2, "audio": 2, "video": 1}, **overrides})
    fetcher = MediaFetcher(
        settings.allowed_media_hosts,
        settings.media_fetch_timeout_s,
        settings.max_body_bytes,
        resolver=public_resolver(
            {
                "media.example.org": ["93.184.216.34"],
                "cdn.media.example.org": ["93.184.216.35"],
                "inner.example.org": ["10.0.0.5"],
                "loop.example.org": ["127.0.0.1"],
            }
        ),
        transport=transport,
    )
    return GuardMiddleware(Starlette(routes=ROUTES), settings=settings, api_key=key, fetcher=fetcher)


def client(guard: GuardMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://testserver")


def chat(*parts, text: str = "Describe.") -> dict:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": text}, *parts]},
        ],
    }


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def audio_part(url: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": url}}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data needed to read the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


async def post(guard, path: str, payload: dict, headers=None) -> httpx.Response:
    async with client(guard) as c:
        return await c.post(path, json=payload, headers=AUTH if headers is None else headers)


def assert_openai_error(reply: httpx.Response, status: int, *fragments: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# --- auth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", KEYED_GET_PATHS)
async def test_every_route_but_health_needs_the_key(path):
    guard = make_guard()
    async with client(guard) as c:
        refused = await c.get(path)
        wrong = await c.get(path, headers={"Authorization": "Bearer nope"})
        allowed = await c.get(path, headers=AUTH)
    assert_openai_error(refused, 401, "API key")
    assert refused.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert allowed.status_code == 200


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/v1/chat/completions"])
async def test_post_routes_need_the_key(path):
    reply = await post(make_guard(), path, chat(), headers={})
    assert_openai_error(reply, 401)


async def test_health_is_open_and_metrics_can_be_opened():
    async with client(make_guard()) as c:
        assert (await c.get("/health")).status_code == 200
    async with client(make_guard(open_metrics=True)) as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/version")).status_code == 401


async def test_no_key_configured_means_auth_off():
    async with client(make_guard(key=None)) as c:
        assert (await c.get("/version")).status_code == 200


# --- request id and access log -------------------------------------------------------------------
async def test_request_id_generated_or_honoured_and_passed_inward(caplog):
    guard = make_guard()
    async with client(guard) as c:
        fresh = await c.post("/v1/chat/completions", json=chat(), headers=AUTH)
        given = await c.post("/v1/chat/completions", json=chat(), headers={**AUTH, "x-request-id": "eval-42"})
        refused = await c.get("/version", headers={"x-request-id": "eval-43"})
        hostile = await c.get("/health", headers={"x-request-id": "bad id\twith spaces"})
    assert (
        len(fresh.headers["x-request-id"]) == 32
        and fresh.json()["request_id"] == fresh.headers["x-request-id"]
    )
    assert given.headers["x-request-id"] == "eval-42" and given.json()["request_id"] == "eval-42"
    assert refused.headers["x-request-id"] == "eval-43"
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_access_log_line_is_structured_and_secret_free():
    guard = make_guard()
    collect = Collect()
    logging.getLogger(LOGGER_NAME).addHandler(collect)
    try:
        async with client(guard) as c:
            await c.post(
                "/v1/chat/completions",
                json=chat(text="secret prompt"),
                headers={**AUTH, "x-request-id": "r1"},
            )
            await c.get("/version")
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(collect)
    lines = [json.loads(line) for line in collect.lines]
    assert len(lines) == 2
    ok, refused = lines[-2], lines[-1]
    assert ok["request_id"] == "r1" and ok["method"] == "POST" and ok["route"] == "/v1/chat/completions"
    assert ok["status"] == 200 and ok["body_bytes"] > 0 and ok["duration_ms"] >= 0 and ok["guard"] is None
    assert refused["status"] == 401 and refused["guard"] == "invalid_api_key"
    everything = json.dumps(lines)
    assert "secret prompt" not in everything and KEY not in everything


# --- body limits ---------------------------------------------------------------------------------
async def call_raw(guard, headers: list[tuple[bytes, bytes]], messages):
    """Drive the middleware directly; `messages` is an async iterator of receive() results."""
    sent: list[dict] = []
    received = 0

    async def receive():
        nonlocal received
        received += 1
        return await messages.__anext__()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), *headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
    }
    await guard(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, received


async def endless_body(chunk: int = 1 << 20):
    while True:
        yield {"type": "http.request", "body": b"x" * chunk, "more_body": True}


async def test_declared_length_over_limit_is_refused_before_reading():
    guard = make_guard(max_body_bytes=1000)
    status, headers, body, received = await call_raw(
        guard, [(b"content-length", b"300000000")], endless_body()
    )
    assert status == 413 and received == 0
    assert "1000 bytes" in json.loads(body)["error"]["message"]
    assert headers[b"connection"] == b"close"


async def test_chunked_body_is_cut_off_at_the_limit():
    guard = make_guard(max_body_bytes=3 << 20)
    status, _, body, received = await call_raw(guard, [(b"transfer-encoding", b"chunked")], endless_body())
    assert status == 413 and received == 4  # stopped at the first chunk over 3 MiB, not at the end
    assert "3 MiB" in json.loads(body)["error"]["message"]


async def test_stalled_body_gets_408():
    guard = make_guard(body_timeout_s=0.2)

    async def stalls():
        yield {"type": "http.request", "body": b'{"model"', "more_body": True}
        await asyncio.sleep(3600)

    status, headers, body, _ = await asyncio.wait_for(
        call_raw(guard, [(b"content-length", b"100")], stalls()), 5
    )
    assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"


async def test_body_within_limit_reaches_the_app_whole():
    async with client(make_guard(max_body_bytes=10_000)) as c:
        body = json.dumps({"prompt": "x" * 5000}).encode()
        reply = await c.post("/tokenize", content=body, headers=AUTH)
    assert reply.status_code == 200 and reply.json()["bytes"] == len(body)


# --- content parts -------------------------------------------------------------------------------
async def test_good_multimodal_request_passes_unchanged():
    payload = chat(
        image_part(data_url("image/png", image_bytes())),
        audio_part(data_url("audio/wav", audio_bytes(2))),
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes())}},
        {
            "type": "input_audio",
            "input_audio": {"data": data_url("x", audio_bytes(1)).split(",")[1], "format": "wav"},
        },
    )
    reply = await post(make_guard(), "/v1/chat/completions", payload)
    assert reply.status_code == 200 and reply.json()["json"] == payload
    assert "x-mera-audio-truncated" not in reply.headers


@pytest.mark.parametrize(
    ("part", "fragment"),
    [
        ({"type": "hologram", "hologram": {}}, "unknown content part type 'hologram'"),
        (image_part("data:image/png,hello"), "base64"),
        (image_part("data:image/png;base64,@@@not-base64@@@"), "invalid base64"),
        (
            image_part("data:image/png;base64," + data_url("x", b"just some text bytes").split(",")[1]),
            "not a recognised image",
        ),
        (image_part(data_url("image/png", audio_bytes(1))), "holds audio data"),
        (audio_part(data_url("audio/wav", image_bytes())), "holds image data"),
        (image_part(data_url("image/png", image_bytes()[:40])), "unreadable image header"),
        ({"type": "image_embeds", "image_embeds": "AAAA"}, "not accepted"),
        ({"type": "image_url", "image_url": {}}, "string 'url'"),
    ],
)
async def test_bad_part_is_400_naming_message_and_part(part, fragment):
    reply = await post(make_guard(), "/v1/chat/completions", chat(part))
    error = assert_openai_error(reply, 400, "messages[1].content[1]", fragment)
    assert error["param"] == "messages[1].content[1]"


async def test_unicode_escaped_keys_do_not_bypass_validation():
    raw = json.dumps(chat(image_part("data:image/png,hello"))).replace('"messages"', '"\\u006dessages"')
    async with client(make_guard()) as c:
        reply = await c.post("/v1/chat/completions", content=raw, headers=AUTH)
    assert reply.status_code == 400


async def test_malformed_json_is_left_to_the_app():
    async with client(make_guard()) as c:
        reply = await c.post("/v1/chat/completions", content=b'{"model": ', headers=AUTH)
    assert reply.status_code == 400 and reply.json() == {"app_says": "malformed JSON"}  # the app's answer


async def test_too_many_media_items():
    png = data_url("image/png", image_bytes())
    reply = await post(make_guard(), "/v1/chat/completions", chat(*[image_part(png)] * 3))
    assert_openai_error(reply, 400, "3 image items", "at most 2")


async def test_oversized_image_refused_from_header_alone():
    huge = png_header_only(20000, 20000)
    just_over = png_header_only(8000, 8000)
    r1 = await post(make_guard(), "/v1/chat/completions", chat(image_part(data_url("image/png", huge))))
    r2 = await post(
        make_guard(max_image_pixels=60_000_000),
        "/v1/chat/completions",
        chat(image_part(data_url("image/png", just_over))),
    )
    assert_openai_error(r1, 400, "messages[1].content[1]", "too large")
    assert_openai_error(r2, 400, "8000x8000", "at most 60000000")


async def test_long_audio_rejected_or_flagged_per_setting():
    payload = chat(audio_part(data_url("audio/wav", audio_bytes(45))))
    rejected = await post(make_guard(long_audio="reject"), "/v1/chat/completions", payload)
    assert_openai_error(rejected, 400, "45.0 s", "at most 30 s")
    flagged = await post(make_guard(long_audio="truncate"), "/v1/chat/completions", payload)
    assert flagged.status_code == 200 and flagged.headers["x-mera-audio-truncated"] == "1"
    flac = chat(
        {
            "type": "input_audio",
            "input_audio": {
                "data": data_url("x", audio_bytes(31, fmt="FLAC")).split(",")[1],
                "format": "flac",
            },
        }
    )
    assert (await post(make_guard(long_audio="reject"), "/v1/chat/completions", flac)).status_code == 400


async def test_streaming_response_passes_through():
    async with client(make_guard()) as c:
        reply = await c.post("/v1/stream", json={"stream": True}, headers=AUTH)
    assert reply.status_code == 200 and reply.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert "x-request-id" in reply.headers


# --- remote media --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "status", "fragment"),
    [
        ("file:///etc/passwd", 400, "only data: URLs and http(s)"),
        ("ftp://media.example.org/a.png", 400, "only data: URLs"),
        ("http://127.0.0.1:8000/metrics", 400, "not on the server's allow-list"),
        ("http://169.254.169.254/latest/meta-data", 400, "not on the server's allow-list"),
        ("http://evil.example.com/a.png", 400, "not on the server's allow-list"),
        ("http://loop.example.org/a.png", 400, "non-public address"),
        ("http://inner.example.org/a.png", 400, "non-public address"),
        ("http://nowhere.example.org/a.png", 400, "cannot resolve"),
    ],
)
async def test_remote_url_policy(url, status, fragment):
    hosts = ["media.example.org", "loop.example.org", "inner.example.org", "nowhere.example.org"]
    reply = await post(make_guard(allowed_media_hosts=hosts), "/v1/chat/completions", chat(image_part(url)))
    assert_openai_error(reply, status, "messages[1].content[1]", fragment)


def media_host(routes: dict[str, httpx.Response], seen: list[str] | None = None, delay: float = 0.0):
    async def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(str(request.url))
        if delay:
            await asyncio.sleep(delay)
        return routes.get(request.url.path, httpx.Response(404))

    return httpx.MockTransport(handler)


async def test_allowed_remote_media_is_fetched_and_inlined():
    png = image_bytes()
    seen: list[str] = []
    transport = media_host(
        {
            "/a.png": httpx.Response(200, content=png),
            "/moved": httpx.Response(302, headers={"location": "https://cdn.media.example.org/a.png"}),
        },
        seen,
    )
    guard = make_guard(transport, allowed_media_hosts=["media.example.org", "*.media.example.org"])
    reply = await post(guard, "/v1/chat/completions", chat(image_part("https://media.example.org/moved")))
    assert reply.status_code == 200, reply.text
    forwarded = reply.json()["json"]["messages"][1]["content"][1]["image_url"]["url"]
    assert forwarded == data_url("image/png", png)
    assert seen == ["https://media.example.org/moved", "https://cdn.media.example.org/a.png"]
    assert int(reply.json()["bytes"]) == len(json.dumps(reply.json()["json"]).encode())


async def test_redirect_to_private_or_unlisted_host_is_refused():
    transport = media_host(
        {
            "/to-loop": httpx.Response(302, headers={"location": "http://loop.example.org/x"}),
            "/to-meta": httpx.Response(301, headers={"location": "http://169.254.169.254/"}),
        }
    )
    guard = make_guard(transport, allowed_media_hosts=["media.example.org", "loop.example.org"])
    r1 = await post(guard, "/v1/chat/completions", chat(image_part("https://media.example.org/to-loop")))
    r2 = await post(guard, "/v1/chat/completions", chat(image_part("https://media.example.org/to-meta")))
    assert_openai_error(r1, 400, "non-public address")
    assert_openai_error(r2, 400, "not on the server's allow-list")


async def test_slow_or_failing_media_host_is_bounded():
    slow = make_guard(
        media_host({"/a.png": httpx.Response(200, content=image_bytes())}, delay=30),
        allowed_media_hosts=["media.example.org"],
        media_fetch_timeout_s=0.3,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await post(slow, "/v1/chat/completions", chat(image_part("https://media.example.org/a.png")))
    assert_openai_error(reply, 504, "0.3 s")
    assert loop.time() - started < 3

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    broken = make_guard(httpx.MockTransport(refuse), allowed_media_hosts=["media.example.org"])
    reply = await post(broken, "/v1/chat/completions", chat(image_part("https://media.example.org/a.png")))
    assert_openai_error(reply, 400, "cannot fetch media URL")
    missing = make_guard(media_host({}), allowed_media_hosts=["media.example.org"])
    reply = await post(missing, "/v1/chat/completions", chat(image_part("https://media.example.org/a.png")))
    assert_openai_error(reply, 400, "HTTP 404")


async def test_remote_bytes_are_validated_like_inline_ones():
    guard = make_guard(
        media_host({"/a.png": httpx.Response(200, content=b"<html>not an image</html>")}),
        allowed_media_hosts=["media.example.org"],
    )
    reply = await post(guard, "/v1/chat/completions", chat(image_part("https://media.example.org/a.png")))
    assert_openai_error(reply, 400, "not a recognised image")


async def test_guard_disabled_passes_everything():
    guard = make_guard(enabled=False)
    async with client(guard) as c:
        assert (await c.get("/version")).status_code == 200


# --- big payloads: only the head is decoded here, the rest is left to vLLM ------------------------
def big_b64(data: bytes) -> str:
    return data_url("x", data).split(",")[1]


async def test_image_header_beyond_the_decoded_head_is_still_found():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(
        buf, format="JPEG", icc_profile=b"\0" * 900_000
    )  # SOF after 900 KB
    payload = chat(image_part("data:image/jpeg;base64," + big_b64(buf.getvalue())))
    assert len(payload["messages"][1]["content"][1]["image_url"]["url"]) > 1 << 20
    assert (await post(make_guard(), "/v1/chat/completions", payload)).status_code == 200
    big = make_guard(max_image_pixels=64 * 48 - 1)
    assert_openai_error(await post(big, "/v1/chat/completions", payload), 400, "64x48")


@pytest.mark.parametrize("damage", ["tail", "length"])
async def test_big_payload_with_broken_base64_is_400(damage):
    text = big_b64(audio_bytes(40))
    text = text[:-8] + "!!!!!!!!" if damage == "tail" else text[:-1]
    reply = await post(
        make_guard(), "/v1/chat/completions", chat(audio_part("data:audio/wav;base64," + text))
    )
    assert_openai_error(reply, 400, "messages[1].content[1]", "base64")


async def test_wav_duration_read_from_header_of_big_payload():
    payload = chat(
        audio_part(data_url("audio/wav", audio_bytes(29.5))),
        audio_part(data_url("audio/wav", audio_bytes(31))),
    )
    reply = await post(make_guard(long_audio="reject"), "/v1/chat/completions", payload)
    assert_openai_error(reply, 400, "messages[1].content[2]", "31.0 s")


async def test_leading_whitespace_does_not_bypass_validation():
    raw = b" \n\t" * 100 + json.dumps(chat(image_part("data:image/png,hello"))).encode()
    async with client(make_guard()) as c:
        reply = await c.post("/v1/chat/completions", content=raw, headers=AUTH)
    assert_openai_error(reply, 400, "base64")


async def test_responses_api_input_items_are_checked_too():
    payload = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "http://127.0.0.1/x.png"}]}]}  # fmt: skip
    reply = await post(make_guard(), "/v1/responses", payload)
    assert_openai_error(reply, 400, "input[0].content[1]", "allow-list")


def test_websocket_needs_the_key_and_realtime_audio_is_refused():
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def hello(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    app = Starlette(routes=[WebSocketRoute("/v1/realtime", hello), WebSocketRoute("/v1/events", hello)])
    guarded = GuardMiddleware(app, settings=GuardSettings(), api_key=KEY)
    with TestClient(guarded) as tc:
        with pytest.raises(WebSocketDisconnect):
            with tc.websocket_connect("/v1/events") as ws:
                ws.receive_text()
        with tc.websocket_connect("/v1/events", headers=AUTH) as ws:
            assert ws.receive_text() == "hello"
        with pytest.raises(WebSocketDisconnect) as refused:  # streamed audio is not inspected: refused
            with tc.websocket_connect("/v1/realtime", headers=AUTH) as ws:
                ws.receive_text()
        assert refused.value.code == 1008
