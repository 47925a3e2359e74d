"""Issue 14's cost budgets and route inspection, each against GuardMiddleware around an echo app
(in process): every case of the issue's "Why" is refused with its 4xx, and MERA-sized requests pass."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.guard.app import GuardMiddleware
from server.guard.config import GuardSettings
from server.guard.remote import MediaFetcher
from tests.media_factory import audio_bytes, data_url, image_bytes, video_bytes
from tests.test_guard_unit import AUTH, KEY, assert_openai_error, png_header_only, public_resolver

PNG = data_url("image/png", image_bytes())
BOMB = data_url("image/png", png_header_only(20000, 20000))


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "json": json.loads(body) if body else None})


async def fails(request: Request) -> JSONResponse:
    raise RuntimeError("engine exploded")


APP = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "OPTIONS"])])


def make_guard(transport: httpx.AsyncBaseTransport | None = None, **overrides) -> GuardMiddleware:
    settings = GuardSettings(**{"limit_mm_per_prompt": {"image": 6, "audio": 6, "video": 1}, **overrides})
    fetcher = MediaFetcher(
        settings.allowed_media_hosts, settings.media_fetch_timeout_s, settings.max_body_bytes,
        resolver=public_resolver({"media.example.org": ["93.184.216.34"]}), transport=transport,
    )  # fmt: skip
    return GuardMiddleware(APP, settings=settings, api_key=KEY, fetcher=fetcher)


async def post(path: str, payload, guard=None, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard or make_guard()), base_url="http://t") as c:
        if isinstance(payload, bytes | str):
            return await c.post(path, content=payload, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)
        return await c.post(path, json=payload, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)


def user(*parts) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": "Что на картинке?"}, *parts]}


def chat(*messages, **extra) -> dict:
    return {"model": "m", "messages": list(messages), "max_tokens": 10000, "temperature": 0, **extra}


def image(url: str = PNG) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def rutie_turn(history: int = 5, modality: str = "image") -> dict:
    """MERA's largest request: a ruTiE turn replaying five earlier turns with their media and answers."""
    media = image() if modality == "image" else {"type": "audio_url",
                                                  "audio_url": {"url": data_url("audio/wav", audio_bytes(11))}}
    messages = []
    for _ in range(history):
        messages += [user(media), {"role": "assistant", "content": "A"}]
    return chat({"role": "system", "content": "Отвечай буквой."}, *messages, user(media))


# --- MERA passes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "audio"])
async def test_the_largest_mera_request_passes(modality):
    reply = await post("/v1/chat/completions", rutie_turn(modality=modality))
    assert reply.status_code == 200, reply.text


async def test_aquaria_two_clips_and_a_video_pass():
    clip = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(17.2, rate=48000))}}
    video = {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes(frames=40))}}
    assert (await post("/v1/chat/completions", chat(user(clip, clip)))).status_code == 200
    assert (await post("/v1/chat/completions", chat(user(video)))).status_code == 200


# --- structure budgets -----------------------------------------------------------------------------------
async def test_eight_thousand_messages_are_refused_before_the_template_runs():
    many = chat(*[{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(8000)])
    assert len(json.dumps(many)) < 300_000
    error = assert_openai_error(await post("/v1/chat/completions", many), 400, "messages = 8000", "at most 64")
    assert error["code"] == "request_over_budget" and "MAX_MESSAGES" in error["message"]


async def test_too_many_content_parts():
    parts = [{"type": "text", "text": str(i)} for i in range(300)]
    assert_openai_error(await post("/v1/chat/completions", chat(user(*parts))), 400, "content parts = 301")


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
async def test_deep_json_is_a_clean_400(depth):
    body = '{"model": "m", "x": ' + "[" * depth + "]" * depth + "}"
    error = assert_openai_error(await post("/v1/chat/completions", body), 400, "nested deeper than 64")
    assert error["code"] == "json_too_deep"


async def test_json_of_ordinary_depth_passes():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    payload = chat(user(), response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert (await post("/v1/chat/completions", payload)).status_code == 200


# --- generation budgets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "fragment"), [
    ({"n": 50, "max_tokens": 1500, "ignore_eos": True}, "n = 50"),
    ({"n": "50", "max_tokens": 15}, "n = 50"),
    ({"n": 4, "max_tokens": None}, "n 4 x max_tokens 10000"),
    ({"n": 3, "max_completion_tokens": 9000}, "= 27000"),
])  # fmt: skip
async def test_n_and_tokens_asked_for_are_bounded(extra, fragment):
    assert_openai_error(await post("/v1/chat/completions", chat(user(), **extra)), 400, fragment)


async def test_moderate_n_passes_and_completions_count_every_prompt():
    assert (await post("/v1/chat/completions", chat(user(), n=8, max_tokens=1500))).status_code == 200
    prompts = {"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 8000}
    assert_openai_error(await post("/v1/completions", prompts), 400, "3 sequences x n 1 x max_tokens 8000")
    assert (await post("/v1/completions", {"model": "m", "prompt": "a"})).status_code == 200  # default 16


# --- every media route, the same checks ------------------------------------------------------------------
async def test_batch_conversations_are_inspected_and_budgeted_together():
    batch = {"model": "m", "max_tokens": 100, "messages": [[user()], [user(image(BOMB))]]}
    error = assert_openai_error(await post("/v1/chat/completions/batch", batch), 400, "too large")
    assert error["param"] == "messages[1][0].content[1]"
    many = {"model": "m", "max_tokens": 100, "messages": [[user(image())] for _ in range(7)]}
    assert_openai_error(await post("/v1/chat/completions/batch", many), 400, "7 image items")
    costly = {"model": "m", "max_tokens": 10000, "messages": [[user()], [user()], [user()]]}
    assert_openai_error(await post("/v1/chat/completions/batch", costly), 400, "3 sequences")


async def test_a_text_part_with_a_uuid_is_an_image_to_vllm_and_to_the_guard():
    hidden = {"type": "text", "text": "hi", "uuid": "u1", "image_url": {"url": BOMB}}
    error = assert_openai_error(await post("/v1/chat/completions", chat(user(hidden))), 400, "too large")
    assert error["param"] == "messages[0].content[1]"


async def test_uuid_only_reference_counts_but_carries_nothing_to_check():
    ref = {"type": "image_url", "image_url": None, "uuid": "cached-image"}
    assert (await post("/v1/chat/completions", chat(user(ref)))).status_code == 200
    assert_openai_error(await post("/v1/chat/completions", chat(user(*[ref] * 7))), 400, "7 image items")


@pytest.mark.parametrize("header", ["data:image/png;BASE64,", "data:image/png;base64;charset=utf-8,",
                                    "data:image/png,"])  # fmt: skip
async def test_data_urls_vllm_would_not_decode_are_400_here(header):
    url = header + PNG.split(",", 1)[1]
    assert_openai_error(await post("/v1/chat/completions", chat(user(image(url)))), 400, "';base64'")


async def test_anthropic_messages_are_inspected():
    source = {"type": "base64", "media_type": "image/png", "data": BOMB.split(",", 1)[1]}
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Look"}, {"type": "image", "source": source}]}]}  # fmt: skip
    for route in ("/v1/messages", "/v1/messages/count_tokens"):
        error = assert_openai_error(await post(route, body), 400, "too large")
        assert error["param"] == "messages[0].content[1]"
    body["messages"][0]["content"][1]["source"] = {"type": "url", "url": "http://127.0.0.1/x.png"}
    assert_openai_error(await post("/v1/messages", body), 400, "allow-list")


async def test_anthropic_url_image_from_an_allowed_host_is_fetched_and_inlined():
    png = image_bytes()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=png))
    guard = make_guard(transport, allowed_media_hosts=["media.example.org"])
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://media.example.org/a.png"}}]}]}  # fmt: skip
    reply = await post("/v1/messages", body, guard)
    assert reply.status_code == 200, reply.text
    source = reply.json()["json"]["messages"][0]["content"][0]["source"]
    assert source == {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png).decode()}


async def test_responses_tool_output_images_are_inspected():
    body = {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call_output", "call_id": "c", "output": [
            {"type": "input_image", "image_url": BOMB, "detail": "auto"}]}]}  # fmt: skip
    error = assert_openai_error(await post("/v1/responses", body), 400, "too large")
    assert error["param"] == "input[1].output[0]"


@pytest.mark.parametrize("route", ["/tokenize", "/invocations", "/v1/chat/completions/render"])
async def test_chat_shaped_routes_are_inspected(route):
    assert_openai_error(await post(route, chat(user(image(BOMB)))), 400, "too large")


async def test_text_only_and_unknown_routes_refuse_media():
    classify = {"model": "judge", "messages": [user(image())]}
    error = assert_openai_error(await post("/classify", classify), 400, "does not accept media")
    assert error["param"] == "messages[0].content[1]"
    decision = {"model": "m", "state": "x", "questions": {}, "images": [PNG]}
    assert_openai_error(await post("/v1/systemone", decision), 400, "images")
    hidden = {"picture": PNG}  # a route vLLM might add: any inline base64 media is refused
    assert_openai_error(await post("/v1/plugin/describe", hidden), 400, "/v1/plugin/describe does not accept media")
    assert (await post("/v1/plugin/describe", {"text": "data: not media"})).status_code == 200
    assert_openai_error(await post("/v1/plugin/upload", b"\x89PNG raw bytes"), 415, "not JSON")
    assert (await post("/classify", {"model": "judge", "input": ["text only"]})).status_code == 200


async def test_routes_with_uninspectable_media_are_refused():
    for route in ("/v1/audio/transcriptions", "/v1/audio/translations", "/inference/v1/generate"):
        error = assert_openai_error(await post(route, b"--boundary\r\n..."), 403, "does not serve")
        assert error["code"] == "route_refused"


# --- media budgets ---------------------------------------------------------------------------------------
def video_part(data: bytes) -> dict:
    return {"type": "video_url", "video_url": {"url": data_url("video/mp4", data)}}


async def test_video_is_budgeted_by_the_frames_vllm_will_sample():
    clip = video_bytes(frames=40, size=64)  # 40 frames in the header, 32 sampled: 64 x 64 x 32 = 131072
    small = make_guard(max_video_pixels=100_000)
    error = assert_openai_error(await post("/v1/chat/completions", chat(user(video_part(clip))), small), 400,
                                "64x64 with 32 frames to sample = 131072 pixels")  # fmt: skip
    assert error["code"] == "invalid_media"
    fewer = chat(user(video_part(clip)), media_io_kwargs={"video": {"num_frames": 16}})  # 65536
    assert (await post("/v1/chat/completions", fewer, small)).status_code == 200
    every = chat(user(video_part(clip)), media_io_kwargs={"video": {"num_frames": -1}})  # all 40 frames
    assert_openai_error(await post("/v1/chat/completions", every, small), 400, "40 frames")
    short = video_bytes(frames=8, size=64)  # fewer frames than vLLM samples: all 8
    assert (await post("/v1/chat/completions", chat(user(video_part(short))), small)).status_code == 200


async def test_request_media_io_kwargs_may_only_choose_frames():
    payload = chat(user(video_part(video_bytes())), media_io_kwargs={"video": {"video_backend": "torchcodec"}})
    assert_openai_error(await post("/v1/chat/completions", payload), 400, "media_io_kwargs.video.video_backend")
    payload["media_io_kwargs"] = {"image": {"image_mode": "RGBA"}}
    assert_openai_error(await post("/v1/chat/completions", payload), 400, "media_io_kwargs.image")


async def test_total_audio_seconds_of_a_request():
    clip = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(12))}}
    tight = make_guard(max_total_audio_seconds=20)
    assert_openai_error(await post("/v1/chat/completions", chat(user(clip, clip)), tight), 400, "audio seconds = 24")
    long_clip = {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(400, rate=8000))}}
    assert_openai_error(await post("/v1/chat/completions", chat(user(long_clip))), 400, "audio seconds = 400")


# --- remote fetches of one request are cancelled together --------------------------------------------------
async def test_a_failed_fetch_cancels_its_siblings():
    cancelled = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/missing.png":
            return httpx.Response(404)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return httpx.Response(200, content=image_bytes())

    guard = make_guard(httpx.MockTransport(handler), allowed_media_hosts=["media.example.org"])
    payload = chat(user(image("https://media.example.org/slow.png"), image("https://media.example.org/missing.png")))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert_openai_error(await post("/v1/chat/completions", payload, guard), 400, "HTTP 404")
    assert loop.time() - started < 5 and cancelled.is_set()


# --- OPTIONS and failures inside the app ------------------------------------------------------------------
async def test_options_needs_the_key_unless_it_is_a_cors_preflight():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_guard()), base_url="http://t") as c:
        bare = await c.options("/metrics")
        preflight = await c.options("/metrics", headers={"Origin": "http://app.example",
                                                         "Access-Control-Request-Method": "GET"})  # fmt: skip
        keyed = await c.options("/metrics", headers=AUTH)
    assert_openai_error(bare, 401, "API key")
    assert preflight.status_code == 200 and keyed.status_code == 200


async def test_an_exception_in_the_app_is_answered_as_vllm_would():
    """Inside vLLM's app the guard sits between Starlette's error middleware and the routes, so an
    unhandled exception reaches it first; it answers with vLLM's own status mapping."""
    app = Starlette(routes=[Route("/explode", fails, methods=["POST"])])
    app.add_middleware(GuardMiddleware, settings=GuardSettings(), api_key=KEY)
    reply = await post("/explode", {"x": 1}, app)
    error = assert_openai_error(reply, 500, "engine exploded")
    assert error["type"] == "InternalServerError" and reply.headers["x-request-id"]
