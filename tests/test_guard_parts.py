"""The guard's content-part model agrees with vLLM 0.32's own parser on every part vLLM would load.

The same parts (hand-picked edge cases and every combination of `type`, `uuid` and media fields)
go through `server.guard.parts.classify` and through vLLM's request model and chat parser
(`ChatCompletionRequest` validation, then `_parse_chat_message_content_part` with a parser that
records what it would load). Where vLLM loads media, the guard must see the same modality and the
same source; where vLLM sees text, so must the guard; where vLLM's parser refuses a part, the
guard must not wave it through as text. The Anthropic and Responses conversions are checked the same way.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.renderers import chat_utils

from server.guard.parts import Kind, classify
from server.guard.routes import Shape, locate
from tests.media_factory import audio_bytes, data_url, image_bytes

IMG = data_url("image/png", image_bytes())
AUD = data_url("audio/wav", audio_bytes(0.2))
VID = "data:video/mp4;base64,AAAAGGZ0eXBtcDQy"
B64 = AUD.split(",", 1)[1]
REMOTE = "https://media.example.org/cat.png"


class Recorder(chat_utils.MultiModalContentParser):
    """vLLM's own parser class (so parse_input_audio is vLLM's code); loading is recorded, not done."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, object]] = []

    @property
    def model_config(self):
        return SimpleNamespace(enable_prompt_embeds=False)

    def _record(name):  # noqa: N805 - a decorator factory inside the class body
        def method(self, content=None, uuid=None):
            self.calls.append((name, content, uuid))

        return method

    parse_image = _record("image")
    parse_audio = _record("audio")
    parse_video = _record("video")
    parse_image_pil = _record("embeds")
    parse_image_embeds = _record("embeds")
    parse_audio_embeds = _record("embeds")
    parse_video_embeds = _record("embeds")
    parse_prompt_embeds = _record("embeds")


def vllm_verdict(part) -> tuple[str, object, object] | str:
    """('image'|'audio'|'video'|'embeds', source, uuid), 'text', 'invalid' (the request model
    refuses it) or 'refused' (the parser does)."""
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    try:
        request = ChatCompletionRequest.model_validate(body)
        parsed = list(request.messages[0]["content"])[0]  # content parts are validated lazily
    except ValueError:
        return "invalid"
    recorder = Recorder()
    try:
        chat_utils._parse_chat_message_content_part(parsed, recorder, wrap_dicts=True, interleave_strings=False)
    except Exception:  # noqa: BLE001 - any refusal by the parser counts the same
        return "refused"
    if not recorder.calls:
        return "text"
    assert len(recorder.calls) == 1, recorder.calls
    return recorder.calls[0]


TYPES = [None, "text", "input_text", "output_text", "refusal", "thinking", "tool_reference", "image_url",
         "input_image", "audio_url", "input_audio", "video_url", "image_embeds", "audio_embeds", "video_embeds",
         "prompt_embeds", "image_pil", "hologram", 5]  # fmt: skip
UUIDS = ["absent", None, "u1", "", 0]
FIELDS = [
    {"text": "hi"},
    {"image_url": {"url": IMG}},
    {"image_url": IMG},
    {"image_url": {"url": REMOTE, "detail": "auto"}},
    {"image_url": {}},
    {"image_url": None},
    {"image_url": {"url": 5}},
    {"audio_url": {"url": AUD}},
    {"audio_url": AUD},
    {"video_url": {"url": VID}},
    {"video_url": VID},
    {"input_audio": {"data": B64, "format": "wav"}},
    {"input_audio": {"data": B64, "format": "wav;base64,AAAA"}},
    {"input_audio": {"data": "", "format": "wav"}},
    {"input_audio": "not an object"},
    {"image_embeds": "AAAA"},
    {"data": "AAAA"},
    {"name": "lookup"},
    {"text": "hi", "image_url": {"url": IMG}},  # issue 14: a "text" part hiding an image
    {"audio_url": {"url": AUD}, "image_url": {"url": IMG}},  # vLLM probes image_url first
    {"video_url": {"url": VID}, "input_audio": {"data": B64, "format": "wav"}},
    {"tool_reference": "x", "video_url": {"url": VID}},
    {},
]


def build(part_type, uuid, fields) -> dict:
    part = dict(fields)
    if part_type is not None:
        part["type"] = part_type
    if uuid != "absent":
        part["uuid"] = uuid
    return part


CORPUS = [build(t, u, f) for t, u, f in itertools.product(TYPES, UUIDS, FIELDS)] + [
    "a plain string part",
    {"type": "input_image", "image_url": IMG, "detail": "auto"},
    {"type": "input_image", "file_id": "file-1", "detail": "auto"},
    {"type": "image_url", "image_url": {"url": IMG}, "uuid": "cached-1"},
    {"type": "text", "text": "hi", "uuid": "u1", "image_url": {"url": IMG}},
]


def test_corpus_covers_every_vllm_part_type():
    dispatched = {p.get("type") for p in CORPUS if isinstance(p, dict)}
    assert set(chat_utils.MM_PARSER_MAP) <= dispatched
    assert {"image", "audio", "video", "embeds", "text", "refused"} <= {
        v if isinstance(v, str) else v[0] for v in map(vllm_verdict, CORPUS)
    }


def disagreement(part) -> str | None:
    verdict = vllm_verdict(part)
    mine = classify(part)
    if verdict == "invalid":
        return None  # vLLM answers 400 before its parser: whatever the guard does, nothing is loaded
    if verdict == "text":
        agree = mine.kind is Kind.TEXT
    elif verdict == "refused":
        agree = mine.kind is not Kind.TEXT  # never waved through as text
    elif verdict[0] == "embeds":
        agree = mine.kind is Kind.EMBEDS
    else:
        agree = (mine.kind, mine.modality, mine.source, mine.uuid) == (Kind.MEDIA, *verdict)
    return None if agree else f"{part!r:.160}: vLLM {verdict!r:.120}, guard {mine!r:.160}"


def test_guard_classifies_every_part_as_vllm_loads_it():
    disagreements = [d for d in map(disagreement, CORPUS) if d]
    assert disagreements == []


def test_the_uuid_bypass_of_issue_14_is_an_image_to_both():
    part = {"type": "text", "text": "hi", "uuid": "u1", "image_url": {"url": IMG}}
    assert vllm_verdict(part) == ("image", IMG, "u1")
    assert classify(part).modality == "image" and classify(part).source == IMG


def media_urls_of(messages: list) -> list[str]:
    urls = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            verdict = vllm_verdict(part)
            if not isinstance(verdict, str):
                urls.append(verdict[1])
    return urls


def test_anthropic_images_are_found_where_vllm_converts_them():
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

    png = IMG.split(",", 1)[1]
    body = {"model": "m", "max_tokens": 10, "system": "Be brief.", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Look:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "image", "source": {"type": "url", "url": REMOTE}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "result"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": png}},
        ]}]},
    ]}  # fmt: skip
    converted: list[dict] = []
    AnthropicServingMessages._convert_messages(AnthropicMessagesRequest.model_validate(body).messages, converted)
    mine = [classify(p.part).source for p in locate(Shape.ANTHROPIC, body).parts]
    assert mine == media_urls_of(converted) and len(mine) == 3


def test_responses_input_parts_are_found_where_vllm_parses_them():
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.openai.responses.utils import construct_input_messages

    body = {"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                     {"type": "input_image", "image_url": IMG}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_image", "image_url": IMG, "detail": "auto"}]},
    ]}  # fmt: skip
    request = ResponsesRequest.model_validate(body)
    messages = construct_input_messages(request_instructions=request.instructions, request_input=request.input)
    mine = [part.source for p in locate(Shape.RESPONSES, body).parts if (part := classify(p.part)).kind is Kind.MEDIA]
    assert mine == media_urls_of(messages) and len(mine) == 2
