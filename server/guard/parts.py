"""The content-part model: what vLLM 0.32's chat parser makes of one content part.

The guard must judge a part exactly as vLLM will load it, or a part could pass the guard as text
and reach vLLM's media decoder (issue 14: a part with a `uuid` is dispatched by its keys, not its
`type`). This mirrors `vllm/renderers/chat_utils.py`:

* `_parse_chat_message_content_mm_part`: a part whose `type` is a known part type and which has
  no `uuid` is dispatched on `type`; a part with no `type`, or with any non-null `uuid`, is
  dispatched on the first media key it holds, in vLLM's order (`image_url` first); anything else
  is refused by vLLM.
* `_parse_chat_message_content_part`: `input_audio` becomes `data:audio/<format>;base64,<data>`;
  a falsy source with a `uuid` is a reference to an item vLLM has cached (nothing is decoded).

`tests/test_guard_parts.py` runs the same parts through this model and vLLM's own parser and
asserts they agree on every part vLLM would load.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from server.guard.media import Modality

# vLLM's TEXT_PART_TYPES and its "tool_reference" (carry no media).
TEXT_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "thinking"})
TOOL_REFERENCE = "tool_reference"
MEDIA_TYPES: dict[str, Modality] = {
    "image_url": "image", "input_image": "image", "audio_url": "audio", "input_audio": "audio", "video_url": "video",
}  # fmt: skip
# Tensors and Python objects: never sent by an evaluator; vLLM needs --enable-mm-embeds for them.
EMBEDS_TYPES = frozenset({"image_embeds", "audio_embeds", "video_embeds", "prompt_embeds", "image_pil"})
# vLLM's MM_PARSER_MAP keys: the types it dispatches on when a part has no uuid.
DISPATCHED_TYPES = TEXT_TYPES | {TOOL_REFERENCE} | set(MEDIA_TYPES) | EMBEDS_TYPES
# The keys vLLM probes, in its order, when a part has no type or has a uuid.
PROBE_ORDER = ("image_url", "image_pil", "image_embeds", "audio_embeds", "video_embeds", "prompt_embeds",
               "audio_url", "input_audio", "video_url", TOOL_REFERENCE)  # fmt: skip
# Keys that make a dict media-carrying wherever it appears (vLLM's _MEDIA_CONTENT_PART_KEYS).
MEDIA_KEYS = frozenset(DISPATCHED_TYPES - TEXT_TYPES - {TOOL_REFERENCE})


class Kind(StrEnum):
    TEXT = "text"  # text, refusal, thinking, tool references, plain strings
    MEDIA = "media"  # an image/audio/video item vLLM would load from `source`
    EMBEDS = "embeds"  # tensors / PIL images: refused by the guard
    INVALID = "invalid"  # vLLM refuses the part itself


@dataclass(frozen=True)
class Part:
    kind: Kind
    part_type: str | None = None  # the type vLLM resolves the part to
    modality: Modality | None = None
    # MEDIA: the URL vLLM would load (data:, http(s), anything else it would try), or a falsy value
    # when the part only references a cached item by its uuid.
    source: Any = None
    uuid: str | None = None
    problem: str | None = None  # INVALID: why vLLM refuses it

    @property
    def is_reference(self) -> bool:
        """A uuid-only media part: vLLM reuses a cached item, nothing reaches a decoder."""
        return self.kind is Kind.MEDIA and not self.source and self.uuid is not None


def _url_value(value: Any) -> Any:
    """`{"url": u}` -> u; a bare value stays (vLLM's probe path accepts both)."""
    return value.get("url") if isinstance(value, dict) else value


def _typed_url(part: dict[str, Any], key: str) -> Any:
    """The typed path validates `{key: {"url": str}}` (pydantic) before reading the URL."""
    value = part.get(key)
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return value["url"]
    return _Invalid(f"'{key}' must be an object with a string 'url'")


class _Invalid:
    def __init__(self, problem: str) -> None:
        self.problem = problem


def input_audio_url(value: Any) -> Any:
    """vLLM's parse_input_audio: `{"data", "format"}` -> `data:audio/<format>;base64,<data>`."""
    if not value:
        return None
    if not isinstance(value, dict):
        return _Invalid("'input_audio' must be an object {'data': <base64>, 'format': ...}")
    data, fmt = value.get("data", ""), value.get("format", "")
    return f"data:audio/{fmt};base64,{data}" if data else None


def _media(part_type: str, source: Any, uuid: str | None) -> Part:
    if isinstance(source, _Invalid):
        return Part(Kind.INVALID, part_type, problem=source.problem)
    return Part(Kind.MEDIA, part_type, MEDIA_TYPES[part_type], source, uuid)


def classify(part: Any) -> Part:
    """What vLLM 0.32's parser does with one element of a message's `content` list."""
    if isinstance(part, str):
        return Part(Kind.TEXT, "text")
    if not isinstance(part, dict):
        return Part(Kind.INVALID, problem="a content part must be an object or a string")
    part_type = part.get("type")
    raw_uuid = part.get("uuid")
    uuid = None if raw_uuid is None else str(raw_uuid)
    if isinstance(part_type, str) and part_type in DISPATCHED_TYPES and raw_uuid is None:
        return _by_type(part, part_type)
    if part_type is None or raw_uuid is not None:
        return _by_keys(part, uuid)
    if not isinstance(part_type, str):
        return Part(Kind.INVALID, problem="content part 'type' must be a string")
    return Part(Kind.INVALID, part_type, problem=f"unknown content part type {part_type!r}")


def _by_type(part: dict[str, Any], part_type: str) -> Part:
    if part_type in TEXT_TYPES or part_type == TOOL_REFERENCE:
        return Part(Kind.TEXT, part_type)
    if part_type in EMBEDS_TYPES:
        return Part(Kind.EMBEDS, part_type)
    if part_type == "input_image":
        source = part.get("image_url")
        if source is not None and not isinstance(source, str):
            source = _Invalid("'image_url' of an input_image part must be a string")
        return _media(part_type, source, None)
    if part_type == "input_audio":
        return _media(part_type, input_audio_url(part.get("input_audio")), None)
    return _media(part_type, _typed_url(part, part_type), None)


def _by_keys(part: dict[str, Any], uuid: str | None) -> Part:
    for key in PROBE_ORDER:
        if key not in part:
            continue
        if key in EMBEDS_TYPES:
            return Part(Kind.EMBEDS, key, uuid=uuid)
        if key == TOOL_REFERENCE:
            return Part(Kind.TEXT, key)
        if key == "input_audio":
            return _media(key, input_audio_url(part[key]), uuid)
        return _media(key, _url_value(part[key]), uuid)
    return Part(Kind.INVALID, part.get("type") if isinstance(part.get("type"), str) else None,
                problem="content part has no 'type' and no media field")  # fmt: skip
