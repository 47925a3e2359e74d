"""The real vLLM server (CPU, tiny Gemma-4) through the official openai SDK, every part type."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.media_factory import audio_bytes, data_url, image_bytes, video_bytes

pytestmark = pytest.mark.server


def chat(server, content, **kwargs):
    return server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": content}],
        temperature=0, max_tokens=kwargs.pop("max_tokens", 8), seed=1234, **kwargs,
    )  # fmt: skip


def assert_answered(reply, min_prompt_tokens=1):
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.prompt_tokens >= min_prompt_tokens and reply.usage.completion_tokens >= 1


def test_models_lists_the_served_name(dev_server):
    names = [m.id for m in dev_server.client().models.list().data]
    assert names == ["mera-dev/tiny-gemma-4"]


def test_text(dev_server):
    assert_answered(chat(dev_server, "Привет! Ответь одним словом."))


@pytest.mark.parametrize("mime, fmt", [("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/png", "JPEG")])
def test_image_url_data_urls(dev_server, mime, fmt):
    # The last case is how MERA sends images: stored JPEG bytes labelled image/png.
    reply = chat(dev_server, [
        {"type": "text", "text": "Изображение:"},
        {"type": "image_url", "image_url": {"url": data_url(mime, image_bytes(fmt))}},
        {"type": "text", "text": "Что на картинке?"},
    ])  # fmt: skip
    assert_answered(reply, min_prompt_tokens=250)  # ~280 soft tokens per image


def test_audio_url_wav(dev_server):
    reply = chat(dev_server, [{"type": "text", "text": "Послушай."},
                              {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(2.0))}}])
    assert_answered(reply, min_prompt_tokens=50)  # 25 audio tokens per second


def test_input_audio(dev_server):
    data = base64.b64encode(audio_bytes(1.0)).decode()
    reply = chat(dev_server, [{"type": "text", "text": "Послушай."},
                              {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}])
    assert_answered(reply, min_prompt_tokens=25)


def test_video_url_mp4(dev_server):
    reply = chat(dev_server, [{"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes())}},
                              {"type": "text", "text": "Что происходит?"}])
    assert_answered(reply, min_prompt_tokens=100)


def test_image_two_audios_and_text_in_one_message(dev_server):
    reply = chat(dev_server, [
        {"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes())}},
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(1.0))}},
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(1.0, variant=1))}},
        {"type": "text", "text": "Сравни два аудио."},
    ])  # fmt: skip
    assert_answered(reply, min_prompt_tokens=300)


def test_image_audio_and_video_in_one_request(dev_server):
    reply = chat(dev_server, [
        {"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes())}},
        {"type": "text", "text": "Послушай и посмотри."},
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", audio_bytes(1.0))}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes())}},
    ])  # fmt: skip
    assert_answered(reply, min_prompt_tokens=400)


def test_greedy_is_deterministic_and_streaming_equals_non_streaming(dev_server):
    content = [{"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes())}},
               {"type": "text", "text": "Опиши."}]
    first = chat(dev_server, content, max_tokens=12).choices[0].message.content
    second = chat(dev_server, content, max_tokens=12).choices[0].message.content
    assert first == second
    stream = chat(dev_server, content, max_tokens=12, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == first


def test_health_needs_no_key_but_chat_does(dev_server):
    assert httpx.get(dev_server.url("/health"), timeout=10).status_code == 200
    reply = httpx.post(dev_server.url("/v1/chat/completions"), timeout=30,
                       json={"model": dev_server.model, "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 401
