"""Request building rules beyond the dataset-card examples (those are in test_mera_requests.py).

The rule is the fork's `sort_multimedia_content_in_chat` (lm_eval/api/task.py, branch
adding_strict_chat_format_support): split on the placeholders, media in order, text pieces kept
verbatim (no strip), only empty pieces dropped; one user message; a count mismatch raises.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluator.data import DataSource, iter_samples
from evaluator.registry import TASKS
from evaluator.requests import (
    PLACEHOLDER,
    RequestOptions,
    SampleError,
    build_request,
    question_text,
    request_digest,
    user_content,
)
from evaluator.schema import AudioMedia, GenerationParams, ImageMedia, Sample, VideoMedia
from tests.media_factory import image_bytes, video_bytes

IMG = ImageMedia(image_bytes())


def clevr(instruction: str, inputs: dict | None = None, media: dict | None = None) -> Sample:
    return Sample(task="ruCLEVR", split="test", index=0, id=42, instruction=instruction, inputs=inputs or {},
                  media={"image": IMG} if media is None else media)  # fmt: skip


def shape(parts: list[dict]) -> list[tuple[str, str | None]]:
    return [(p["type"], p.get("text")) for p in parts]


def test_text_pieces_are_kept_verbatim_and_only_empty_ones_dropped():
    sample = Sample(task="ruCLEVR", split="test", index=0, id=1, instruction="  \n<image>\n\n{q} ",
                    inputs={"q": "Сколько?"}, media={"image": IMG})  # fmt: skip
    parts = build_request(sample, RequestOptions()).messages[0]["content"]
    assert shape(parts) == [("text", "  \n"), ("image_url", None), ("text", "\n\nСколько? ")]
    # whitespace-only pieces are not empty: they are sent (the fork tests `elif part:`)
    assert shape(user_content(clevr("<image> "), RequestOptions())) == [("image_url", None), ("text", " ")]
    assert shape(user_content(clevr("<image>"), RequestOptions())) == [("image_url", None)]


def test_adjacent_placeholders_leave_no_empty_text_between():
    a, b = AudioMedia(np.zeros(160, np.float32), 16000), AudioMedia(np.ones(160, np.float32) * 0.1, 16000)
    sample = Sample(task="AQUARIA", split="test", index=0, id=1, instruction="<audio_1><audio_2>{question}",
                    inputs={"question": "?"}, media={"audio_2": b, "audio_1": a})  # fmt: skip
    parts = user_content(sample, RequestOptions())
    assert [p["type"] for p in parts] == ["audio_url", "audio_url", "text"]
    # placeholder order is audio_1 then audio_2, whatever the dict order of the media
    first = build_request(sample, RequestOptions()).messages[0]["content"][0]
    only_a = user_content(sample.model_copy(update={"instruction": "<audio_1>", "media": {"audio_1": a}}),
                          RequestOptions())  # fmt: skip
    assert first == only_a[0]


def test_no_system_prompt_unless_asked():
    assert [m["role"] for m in build_request(clevr("<image>"), RequestOptions()).messages] == ["user"]
    request = build_request(clevr("<image>"), RequestOptions(system_prompt="Ты помощник."))
    assert request.messages[0] == {"role": "system", "content": "Ты помощник."}
    assert [m["role"] for m in request.messages] == ["system", "user"]


def test_media_without_placeholder_and_placeholder_without_media_raise():
    # Known quirk 5: a present image with no placeholder raises in the official harness too
    with pytest.raises(SampleError, match=r"ruCLEVR/-/test/42: 0 media placeholder\(s\) \[\] .* 1 media item"):
        build_request(clevr("{question}", {"question": "?"}), RequestOptions())
    with pytest.raises(SampleError, match=r"2 media placeholder\(s\) \['image', 'image'\] .* 1 media item") as info:
        build_request(clevr("<image> и <image>"), RequestOptions())
    assert info.value.sample_key == "ruCLEVR/-/test/42"
    # a text-only turn (ruTiE) without media is fine: one text part
    turn = Sample(task="ruTiE-Image", split="test", index=0, id=11, instruction="Вопрос: {question}",
                  inputs={"question": "Что дальше?"})  # fmt: skip
    assert shape(user_content(turn, RequestOptions())) == [("text", "Вопрос: Что дальше?")]


def test_placeholder_of_the_wrong_kind_is_an_error():
    with pytest.raises(SampleError, match=r"placeholder <audio> #1 but the media item is image"):
        build_request(clevr("<audio>"), RequestOptions())


def test_format_errors_name_the_sample():
    with pytest.raises(SampleError, match=r"ruCLEVR/-/test/42: instruction.format failed: KeyError\('question'\)"):
        build_request(clevr("<image>{question}"), RequestOptions())


def test_inputs_are_formatted_as_they_are():
    sample = clevr("<image>{n} {flag} {{literal}}", {"n": 3, "flag": None})
    assert question_text(sample) == "<image>3 None {literal}"


def test_aquaria_hook_only_for_aquaria():
    a = AudioMedia(np.zeros(160, np.float32), 16000)
    aq = Sample(task="AQUARIA", split="test", index=0, id=1, instruction="<audio_1> {question}",
                inputs={"question": "?"}, media={"audio_1": a})  # fmt: skip
    assert question_text(aq) == "<audio> ?"
    env = Sample(task="ruEnvAQA", split="test", index=0, id=1, instruction="<audio_1> <audio>", inputs={},
                 media={"audio": a})  # fmt: skip
    assert question_text(env) == "<audio_1> <audio>"  # numbered placeholders are AQUARIA's alone
    assert [p["type"] for p in user_content(env, RequestOptions())] == ["text", "audio_url"]


def test_explicit_text_for_a_dialogue_turn():
    parts = user_content(clevr("<image>{question}", {"question": "x"}), RequestOptions(), text="Ответ: <image>!")
    assert shape(parts) == [("text", "Ответ: "), ("image_url", None), ("text", "!")]


def test_digest_covers_messages_and_params_but_never_base64():
    sample = clevr("<image>{question}", {"question": "?"})
    base = build_request(sample, RequestOptions())
    assert base.digest == request_digest(base.messages, base.params)
    assert base.sample_key == "ruCLEVR/-/test/42" and base.modality == "image"
    assert build_request(sample, RequestOptions(params=GenerationParams(max_tokens=5))).digest != base.digest
    assert build_request(sample, RequestOptions(system_prompt="s")).digest != base.digest
    assert build_request(sample, RequestOptions(image_max_side=32)).digest != base.digest
    other_text = sample.model_copy(update={"inputs": {"question": "??"}})
    assert build_request(other_text, RequestOptions()).digest != base.digest
    audio = Sample(task="ruEnvAQA", split="test", index=0, id=1, instruction="<audio>", inputs={},
                   media={"audio": AudioMedia(np.zeros(160, np.float32), 16000)})  # fmt: skip
    assert build_request(audio, RequestOptions()).digest != build_request(audio, RequestOptions(audio_part="input_audio")).digest


def test_payload_is_the_leaderboard_generation():
    body = build_request(clevr("<image>"), RequestOptions()).payload()
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "google/gemma-4-E4B-it", "temperature": 0.0, "max_tokens": 10000, "seed": 1234, "stop": ["<eos>"]
    }  # fmt: skip
    params = GenerationParams(seed=None, stop=list("abcdef"), extra_body={"top_k": 1})
    body = build_request(clevr("<image>"), RequestOptions(params=params)).payload()
    assert "seed" not in body and body["stop"] == list("abcd") and body["top_k"] == 1
    json.dumps(body)  # serialisable as sent


def test_every_sample_of_the_snapshot_becomes_a_request(sample_data_dir):
    """All 18 tasks, both splits: parts follow the placeholders, media parts match the media."""
    source = DataSource(data_dir=sample_data_dir)
    media_part = {"image": "image_url", "audio": "audio_url", "video": "video_url"}
    for spec in TASKS.values():
        for split in ("shots", "test"):
            for sample in iter_samples(spec, split, source):
                parts = build_request(sample, RequestOptions()).messages[0]["content"]
                kinds = PLACEHOLDER.findall(question_text(sample))
                assert [p["type"] for p in parts if p["type"] != "text"] == [media_part[k] for k in kinds]
                assert len(kinds) == len(sample.media)
                assert "".join(p.get("text", "") for p in parts) == PLACEHOLDER.sub("", question_text(sample))
                assert all(p["text"] for p in parts if p["type"] == "text")


def test_video_frames_replace_the_video_where_it_was():
    sample = Sample(task="RealVideoQA", split="test", index=0, id=1, instruction="До <video> после",
                    inputs={}, media={"video": VideoMedia(video_bytes(frames=6))})  # fmt: skip
    parts = build_request(sample, RequestOptions(video_frames=2)).messages[0]["content"]
    assert shape(parts) == [("text", "До "), ("image_url", None), ("image_url", None), ("text", " после")]
    assert build_request(sample, RequestOptions()).modality == "video"
