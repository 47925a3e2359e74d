"""A `Sample` -> the chat request MERA's harness sends for it.

As the lm-eval fork does under `--apply_chat_template --pass_multimodal_args_to_chat_history`
(`sort_multimedia_content_in_chat`): the text is `instruction.format(**inputs)`; it is split on the
literal media placeholders `<image>`, `<audio>`, `<video>`; the media parts go, in order, where the
placeholders were; the placeholders are removed and empty text pieces dropped; one user message, no
system prompt unless asked. A placeholder/media count mismatch is an error for that sample.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
import threading
from importlib import metadata
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from evaluator import media as media_codec
from evaluator.audio import AudioChannels
from evaluator.registry import TaskSpec, get_task
from evaluator.schema import AudioMedia, ChatRequest, GenerationParams, Sample

PLACEHOLDER = re.compile(r"<(image|audio|video)>")


class SampleError(Exception):
    """A sample that cannot become a request; the message names the sample and the problem."""

    def __init__(self, sample_key: str, problem: str) -> None:
        super().__init__(f"{sample_key}: {problem}")
        self.sample_key = sample_key
        self.problem = problem


class RequestOptions(BaseModel):
    """How samples become requests. Everything off by default is how the leaderboard run sent them."""

    params: GenerationParams = Field(default_factory=GenerationParams)
    audio_part: Literal["audio_url", "input_audio"] = "audio_url"
    # "mono": the official mix-down (datasets' Audio() decode); "stored": every channel as the file has them
    audio_channels: AudioChannels = "mono"
    image_max_side: int | None = Field(None, gt=0)
    video_frames: int | None = Field(None, gt=0)
    system_prompt: str | None = None


# --- prompt hooks (named in the registry) ------------------------------------------------------
def _aquaria(text: str) -> str:
    # multimodal_tasks/aquaria/utils.py: numbered clips become plain <audio>, clips stay in order.
    for i in (1, 2):
        text = text.replace(f"<audio_{i}>", "<audio>")
    return text


PROMPT_HOOKS = {"aquaria": _aquaria}


def question_text(sample: Sample, spec: TaskSpec | None = None) -> str:
    """`instruction.format(**inputs)` plus the task's hook: the prompt text (also what the judge sees)."""
    spec = spec or get_task(sample.task)
    fields = dict(sample.inputs)
    for name in sample.media:  # media keys are formatted too; MERA's media dicts never hit a {field}
        fields.setdefault(name, "")
    try:
        text = sample.instruction.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise SampleError(sample.key, f"instruction.format failed: {exc!r}") from None
    if spec.prompt_hook:
        text = PROMPT_HOOKS[spec.prompt_hook](text)
    return text


def ordered_media(sample: Sample, spec: TaskSpec):
    """Media in placeholder order: the registry's field order (audio_1 before audio_2)."""
    return [sample.media[f] for f in spec.media_fields if f in sample.media]


def user_content(sample: Sample, options: RequestOptions, text: str | None = None) -> list[dict[str, Any]]:
    """Content parts for one user turn: text pieces and media parts interleaved at the placeholders."""
    if sample.problem:
        raise SampleError(sample.key, sample.problem)
    spec = get_task(sample.task)
    text = question_text(sample, spec) if text is None else text
    media = ordered_media(sample, spec)
    pieces = PLACEHOLDER.split(text)  # [text, kind, text, kind, ..., text]
    kinds = pieces[1::2]
    if len(kinds) != len(media):
        raise SampleError(
            sample.key, f"{len(kinds)} media placeholder(s) {kinds} in the prompt but {len(media)} media item(s)"
        )
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces[0::2]):
        if piece:
            parts.append({"type": "text", "text": piece})
        if i < len(kinds):
            item = media[i]
            if item.kind != kinds[i]:
                raise SampleError(sample.key, f"placeholder <{kinds[i]}> #{i + 1} but the media item is {item.kind}")
            try:
                parts.extend(media_codec.encode_media(
                    item, audio_kind=options.audio_part, image_max_side=options.image_max_side,
                    video_frames=options.video_frames, audio_channels=options.audio_channels,
                ))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - bad media names the sample
                raise SampleError(sample.key, f"cannot encode {item.kind} #{i + 1}: {exc}") from None
    return parts


def generation_for(spec: TaskSpec, params: GenerationParams) -> GenerationParams:
    """The settings one task's requests are sent with: the registry's (`TaskSpec.generation`, each value with
    its source) unless `params` sets a value explicitly (a command-line flag, or a field given in code)."""
    chosen = {f: getattr(params, f) if f in params.model_fields_set else getattr(spec.generation, f)
              for f in spec.generation.FIELDS}
    chosen["stop"] = list(chosen["stop"])
    return GenerationParams(model=params.model, extra_body=params.extra_body, **chosen)


def request_digest(messages: list[dict[str, Any]], params: GenerationParams) -> str:
    """What was sent, as a hash: messages with media as their sha256, plus the generation settings."""
    body = {"messages": media_codec.strip_media(messages), "params": params.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# The code and libraries a request is built with: a change to any of them makes `source_digest` differ, so
# resume falls back to rebuilding each stored request and comparing `request_digest` (the exact check).
BUILDER_MODULES = ("evaluator.requests", "evaluator.media", "evaluator.audio", "evaluator.schema",
                   "evaluator.registry")
BUILDER_LIBRARIES = ("numpy", "pillow", "av", "soundfile")


def builder_fingerprint() -> str:
    with _FINGERPRINT_LOCK:  # worker threads ask at once when a run starts: compute it once (~50 ms)
        return _builder_fingerprint()


_FINGERPRINT_LOCK = threading.Lock()


@functools.cache
def _builder_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in BUILDER_MODULES:
        with open(sys.modules[name].__file__, "rb") as source:  # all imported by this module
            digest.update(name.encode() + b"\0" + hashlib.sha256(source.read()).digest())
    for name in BUILDER_LIBRARIES:
        try:
            digest.update(f"{name}=={metadata.version(name)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} absent\0".encode())
    return digest.hexdigest()


def source_digest(sample: Sample, options: RequestOptions) -> str:
    """What a request is built from, as a hash: the row (text, media as stored or decoded), the options,
    the task's generation settings and the builder's code. Cheap (no encoding), so a resumed run skips
    a stored sample whose sources are unchanged without rebuilding its request (sampling video frames
    costs seconds per clip); an equal source digest means an equal request."""
    digest = hashlib.sha256()
    head = {"key": sample.key, "instruction": sample.instruction, "inputs": sample.inputs,
            "problem": sample.problem, "options": options.model_dump(mode="json"),
            "generation": generation_for(get_task(sample.task), options.params).model_dump(mode="json"),
            "builder": builder_fingerprint()}
    digest.update(json.dumps(head, sort_keys=True, ensure_ascii=False, default=str).encode())
    for name in sorted(sample.media):
        item = sample.media[name]
        digest.update(f"\0{name}:{item.kind}\0".encode())
        if isinstance(item, AudioMedia):
            array = np.ascontiguousarray(item.array)
            digest.update(f"{item.rate}:{array.dtype.str}:{array.shape}\0".encode())
            digest.update(memoryview(array).cast("B"))
        else:
            digest.update(item.data)
    return digest.hexdigest()


def build_request(sample: Sample, options: RequestOptions) -> ChatRequest:
    """CPU-bound (base64 of media): call it from a worker thread, not the event loop."""
    spec = get_task(sample.task)
    messages: list[dict[str, Any]] = []
    if options.system_prompt:
        messages.append({"role": "system", "content": options.system_prompt})
    messages.append({"role": "user", "content": user_content(sample, options)})
    params = generation_for(spec, options.params)
    return ChatRequest(sample_key=sample.key, modality=spec.modality, messages=messages, params=params,
                       digest=request_digest(messages, params), source_digest=source_digest(sample, options))
