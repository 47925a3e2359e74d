"""Every route of the pinned vLLM (0.32), with the shape of what its body carries.

The guard inspects a body by the shape of its route: where the conversations are, where the
content parts are, and how many sequences it generates. Routes that can carry media the guard
cannot inspect are refused; routes whose bodies never carry media must not carry any (a body
that does is refused); a route vLLM adds later and this table does not know is treated the same
way, and `tests/test_guard_routes.py` fails until it is added here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.guard.parts import MEDIA_KEYS


class Shape(StrEnum):
    CHAT = "chat"  # OpenAI chat: messages[i].content[j]
    CHAT_BATCH = "chat_batch"  # messages[k] is a whole conversation
    RESPONSES = "responses"  # input[i].content[j], input[i].output[j]
    ANTHROPIC = "anthropic"  # messages[i].content[j] as Anthropic blocks (images by `source`)
    COMPLETION = "completion"  # prompt: text or token ids, never media
    CHAT_OR_COMPLETION = "chat_or_completion"  # chat when the body has `messages`, else completion
    TEXT_ONLY = "text_only"  # no media anywhere (pooling, token ids, control routes, GET routes)
    REFUSED = "refused"  # can carry media the guard cannot inspect


_TEXT_ONLY_ROUTES = (
    # Pooling (the judge classifier is text-only), token ids, generative scoring.
    "/pooling", "/classify", "/v1/embeddings", "/v2/embed", "/score", "/v1/score", "/rerank", "/v1/rerank",
    "/v2/rerank", "/detokenize", "/v1/chat/completions/derender", "/v1/completions/derender",
    "/generative_scoring", "/inference/v1/abort_requests",
    # Structured decisions take media as bare URL lists (images/audio/videos): refused when present.
    "/v1/systemone",
    # Control and development routes (bodies are small JSON objects, if any).
    "/abort_requests", "/adapters", "/adapters/{adapter_name}", "/collective_rpc", "/fault_tolerance/apply",
    "/finish_weight_update", "/init_weight_transfer_engine", "/is_scaling_elastic_ep", "/pause", "/ping",
    "/release_kv_cache_memory", "/reset_encoder_cache", "/reset_mm_cache", "/reset_prefix_cache", "/resume",
    "/scale_elastic_ep", "/shutdown_weight_transfer_engine", "/sleep", "/start_draft_weight_update",
    "/start_profile", "/start_weight_update", "/stop_profile", "/update_weight_version", "/update_weights",
    "/weight_checker", "/wake_up", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
    "/v1/responses/{response_id}/cancel",
    # GET routes.
    "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/fault_tolerance/status", "/get_world_size",
    "/health", "/is_paused", "/is_sleeping", "/kv_event_sources", "/load", "/metrics", "/server_info",
    "/tokenizer_info", "/v1/models", "/v1/responses/{response_id}", "/version", "/weight_info",
)  # fmt: skip

# Why each refused route is refused (the answer names it).
REFUSED_BECAUSE = {
    "/v1/audio/transcriptions": "it takes multipart audio uploads, which the guard does not inspect",
    "/v1/audio/translations": "it takes multipart audio uploads, which the guard does not inspect",
    "/v1/realtime": "it streams audio over a websocket, which the guard does not inspect",
    "/inference/v1/generate": "it takes pre-processed multimodal tensors, which the guard cannot check",
    "/cohere/v2/chat": "its content blocks are not inspected by the guard",
    "/cohere/v2/chat/render": "its content blocks are not inspected by the guard",
}

ROUTES: dict[str, Shape] = {
    "/v1/chat/completions": Shape.CHAT,
    "/v1/chat/completions/render": Shape.CHAT,
    "/v1/chat/completions/batch": Shape.CHAT_BATCH,
    "/v1/responses": Shape.RESPONSES,
    "/v1/responses/render": Shape.RESPONSES,
    "/v1/messages": Shape.ANTHROPIC,
    "/v1/messages/count_tokens": Shape.ANTHROPIC,
    "/v1/messages/render": Shape.ANTHROPIC,
    "/v1/completions": Shape.COMPLETION,
    "/v1/completions/render": Shape.COMPLETION,
    "/tokenize": Shape.CHAT_OR_COMPLETION,
    "/invocations": Shape.CHAT_OR_COMPLETION,
    **{path: Shape.TEXT_ONLY for path in _TEXT_ONLY_ROUTES},
    **{path: Shape.REFUSED for path in REFUSED_BECAUSE},
}

_TEMPLATES = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", p) + "$"), p) for p in ROUTES if "{" in p]


def route_template(path: str) -> str | None:
    """The table's entry for a request path (`/v1/responses/resp_1` -> `/v1/responses/{response_id}`)."""
    path = path.rstrip("/") or "/"
    if path in ROUTES:
        return path
    return next((template for pattern, template in _TEMPLATES if pattern.match(path)), None)


# --- where the content parts are --------------------------------------------------------------------
Rewrite = Callable[[str], None]  # puts a data URL where the part had a remote URL


@dataclass
class LocatedPart:
    where: str  # messages[1].content[2]
    part: Any  # what vLLM's chat parser will see
    rewrite: Rewrite | None = None  # None: the generic rewrite of an OpenAI part


@dataclass
class Located:
    parts: list[LocatedPart] = field(default_factory=list)
    messages: int = 0  # across every conversation of the request
    sequences: int = 1  # prompts generated for (conversations of a batch, prompts of a completion)
    media_found: str | None = None  # TEXT_ONLY/COMPLETION: where media was found (refused)


def locate(shape: Shape, payload: dict[str, Any], *, strict_strings: bool = False) -> Located:
    if shape is Shape.CHAT_OR_COMPLETION:
        shape = Shape.CHAT if "messages" in payload else Shape.COMPLETION
    if shape is Shape.CHAT:
        return _chat(payload)
    if shape is Shape.CHAT_BATCH:
        return _chat_batch(payload)
    if shape is Shape.RESPONSES:
        return _responses(payload)
    if shape is Shape.ANTHROPIC:
        return _anthropic(payload)
    found = Located(messages=_count_messages(payload.get("messages")), media_found=find_media(payload, strict_strings))
    if shape is Shape.COMPLETION:
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            found.sequences = len(prompt)
    return found


def _content_parts(content: Any, where: str) -> Iterator[LocatedPart]:
    if isinstance(content, list):
        for j, part in enumerate(content):
            yield LocatedPart(f"{where}[{j}]", part)


def _conversation(messages: list, where: str, found: Located) -> None:
    found.messages += len(messages)
    for i, message in enumerate(messages):
        if isinstance(message, dict):
            found.parts.extend(_content_parts(message.get("content"), f"{where}[{i}].content"))


def _chat(payload: dict[str, Any]) -> Located:
    found = Located()
    messages = payload.get("messages")
    if isinstance(messages, list):
        _conversation(messages, "messages", found)
    return found


def _chat_batch(payload: dict[str, Any]) -> Located:
    found = Located()
    batch = payload.get("messages")
    if isinstance(batch, list):
        found.sequences = max(len(batch), 1)
        for k, messages in enumerate(batch):
            if isinstance(messages, list):
                _conversation(messages, f"messages[{k}]", found)
    return found


def _responses(payload: dict[str, Any]) -> Located:
    """vLLM's construct_input_messages: items with a `role` are chat messages (an assistant item
    contributes only its first text); tool outputs become tool messages whose content is parsed."""
    found = Located(messages=1 if payload.get("instructions") else 0)
    items = payload.get("input")
    if isinstance(items, str):
        found.messages += 1
    if not isinstance(items, list):
        return found
    found.messages += len(items)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if "role" in item:
            if item.get("role") != "assistant":
                found.parts.extend(_content_parts(item.get("content"), f"input[{i}].content"))
        elif item.get("type") in ("function_call_output", "custom_tool_call_output"):
            found.parts.extend(_content_parts(item.get("output"), f"input[{i}].output"))
    return found


def anthropic_image_url(source: dict[str, Any]) -> str:
    """vLLM's AnthropicServingMessages._convert_image_source_to_url."""
    if source.get("type") == "url":
        return source.get("url", "")
    return f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"


def _anthropic_part(source: Any, where: str) -> LocatedPart:
    if not isinstance(source, dict):
        return LocatedPart(where, source)  # not an object: an invalid part

    def rewrite(data_url: str) -> None:
        mime, _, data = data_url[5:].partition(";base64,")
        source.clear()
        source.update(type="base64", media_type=mime, data=data)

    return LocatedPart(where, {"type": "image_url", "image_url": {"url": anthropic_image_url(source)}}, rewrite)


def _anthropic(payload: dict[str, Any]) -> Located:
    """vLLM's Anthropic -> OpenAI conversion: `image` blocks with a source, and images inside a
    user's `tool_result` content, become image_url parts."""
    found = Located(messages=1 if payload.get("system") else 0)
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return found
    found.messages += len(messages)
    for i, message in enumerate(messages):
        blocks = message.get("content") if isinstance(message, dict) else None
        if not isinstance(blocks, list):
            continue
        for j, block in enumerate(blocks):
            if not isinstance(block, dict):
                continue
            where = f"messages[{i}].content[{j}]"
            if block.get("type") == "image" and block.get("source"):
                found.parts.append(_anthropic_part(block["source"], where))
            elif block.get("type") == "tool_result" and message.get("role") == "user":
                found.messages += 1
                inner = block.get("content")
                for k, item in enumerate(inner if isinstance(inner, list) else []):
                    if isinstance(item, dict) and item.get("type") == "image":
                        source = item.get("source", {})
                        if not isinstance(source, dict) or anthropic_image_url(source):
                            found.parts.append(_anthropic_part(source, f"{where}.content[{k}]"))
    return found


def _count_messages(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(len(m) if isinstance(m, list) else 1 for m in messages)


# --- media where none may be -----------------------------------------------------------------------
MEDIA_BLOCK_TYPES = MEDIA_KEYS | {"image", "audio", "video", "file", "input_file", "document"}
MEDIA_FIELDS = frozenset({"images", "audio", "videos", "multi_modal", "features"})


def find_media(payload: Any, strict_strings: bool = False) -> str | None:
    """Where the first media-carrying value of a body is, or None: a content-part media key, a
    media block type, a media list (structured decisions' images/audio/videos), and with
    `strict_strings` (routes the guard does not know) any base64 data URL string."""
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{where}.{key}" if where else str(key)
                if item is not None and (key in MEDIA_KEYS or (key in MEDIA_FIELDS and item)):
                    return here
                if key == "type" and isinstance(item, str) and item in MEDIA_BLOCK_TYPES:
                    return where or "body"
                if isinstance(item, dict | list) or (strict_strings and isinstance(item, str)):
                    stack.append((here, item))
        elif isinstance(value, list):
            kinds = (dict, list, str) if strict_strings else (dict, list)
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value) if isinstance(item, kinds))
        elif strict_strings and isinstance(value, str) and value[:5].lower() == "data:" and ";base64," in value[:256]:
            return where or "body"
    return None
