"""Cost budgets of one request that do not depend on its media bytes: JSON depth, messages and
content parts, `n` and the tokens it may ask for, and how many frames vLLM will sample per video.

Each check raises a GuardError (400) naming the budget, its limit and the setting that changes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from server.guard.config import GuardSettings
from server.guard.errors import GuardError
from server.guard.routes import Located, Shape


def over_budget(what: str, value: float, limit: float, setting: str, param: str | None = None) -> GuardError:
    return GuardError(
        400,
        f"request has {what} = {value:g}; this server accepts at most {limit:g} "
        f"(setting MERA_SERVE_GUARD__{setting.upper()})",
        "request_over_budget",
        param,
    )


def json_deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def check_structure(located: Located, settings: GuardSettings) -> None:
    if located.messages > settings.max_messages:
        raise over_budget("messages", located.messages, settings.max_messages, "max_messages", "messages")
    if len(located.parts) > settings.max_content_parts:
        raise over_budget(
            "content parts", len(located.parts), settings.max_content_parts, "max_content_parts", "messages"
        )


def as_int(value: Any) -> int | None:
    """An integer as pydantic's lax mode reads one from JSON (`"50"`, `50.0`, `true`); None if not."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return None


def _max_tokens(payload: dict[str, Any], shape: Shape, context: int) -> int | None:
    """What vLLM lets one sequence generate: the request's limit, else its default."""
    if shape is Shape.COMPLETION:
        raw = payload.get("max_tokens", 16)  # CompletionRequest's default
    elif shape is Shape.RESPONSES:
        raw = payload.get("max_output_tokens")
    elif shape is Shape.ANTHROPIC:
        raw = payload.get("max_tokens")
    else:
        raw = payload.get("max_completion_tokens")
        raw = payload.get("max_tokens") if raw is None else raw
    return context if raw is None else as_int(raw)


def check_generation(payload: dict[str, Any], shape: Shape, located: Located, settings: GuardSettings) -> None:
    """`n` and sequences x n x max_tokens: what the engine may be asked to generate for one request."""
    if shape is Shape.CHAT_OR_COMPLETION:
        shape = Shape.CHAT if "messages" in payload else Shape.COMPLETION
    if shape in (Shape.TEXT_ONLY, Shape.REFUSED):
        return
    raw_n = payload.get("n")
    n = 1 if raw_n is None else as_int(raw_n)
    if n is None:
        return  # not a number: vLLM's own 400
    if n > settings.max_n:
        raise over_budget("n", n, settings.max_n, "max_n", "n")
    max_tokens = _max_tokens(payload, shape, settings.context_tokens)
    if max_tokens is None or n < 1 or max_tokens < 1:
        return  # vLLM's own 400
    total = located.sequences * n * max_tokens
    budget = settings.generated_tokens_budget
    if total > budget:
        what = f"{located.sequences} sequences x " if located.sequences > 1 else ""
        raise over_budget(
            f"{what}n {n} x max_tokens {max_tokens} tokens to generate", total, budget, "max_generated_tokens",
            "max_tokens",
        )


# --- how vLLM will sample a video ----------------------------------------------------------------------
SAMPLING_KEYS = frozenset({"num_frames", "fps"})
VIDEO_IO_DEFAULT_FRAMES = 32  # VideoMediaIO(num_frames=32) when a request's fps displaces the server's


@dataclass(frozen=True)
class VideoSampling:
    num_frames: int  # <= 0: every frame
    fps: float  # <= 0: not limited by rate
    audio_in_video: bool = False  # mm_processor_kwargs.use_audio_in_video: the video's audio is an item too

    def frames(self, total: int, seconds: float) -> int | None:
        """vLLM's OpenCVVideoBackend.compute_frames_index_to_sample, from header values; None when
        the header gives too little to tell."""
        count: int | None = total if total > 0 else None
        if self.num_frames > 0:
            count = min(self.num_frames, total) if total > 0 else self.num_frames
        if self.fps > 0 and seconds > 0:
            by_rate = math.floor(seconds * self.fps)
            count = by_rate if count is None else min(count, by_rate)
        return None if count is None else max(1, count)


def video_sampling(payload: dict[str, Any], settings: GuardSettings) -> VideoSampling:
    """The server's sampling merged with a request's `media_io_kwargs` as VideoMediaIO.merge_kwargs
    does (a request's num_frames drops the server's fps and vice versa). Only `video.num_frames`
    and `video.fps` may be set per request: other loader options would change what gets decoded."""
    num_frames, fps = settings.video_num_frames, settings.video_fps
    overrides = payload.get("media_io_kwargs")
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise GuardError(400, "media_io_kwargs must be an object", "invalid_media_io_kwargs", "media_io_kwargs")
        for modality, kwargs in overrides.items():
            unknown = sorted(set(kwargs) - SAMPLING_KEYS) if isinstance(kwargs, dict) else None
            if modality != "video" or unknown is None or unknown:
                name = f"media_io_kwargs.{modality}" + (f".{unknown[0]}" if unknown else "")
                raise GuardError(
                    400,
                    f"{name} is not accepted by this server (only media_io_kwargs.video.num_frames and .fps)",
                    "invalid_media_io_kwargs",
                    "media_io_kwargs",
                )
        video = overrides.get("video") or {}
        wanted_frames, wanted_fps = video.get("num_frames"), video.get("fps")
        if wanted_frames is not None and (frames := as_int(wanted_frames)) is None:
            raise GuardError(400, "media_io_kwargs.video.num_frames must be an integer", "invalid_media_io_kwargs",
                             "media_io_kwargs")  # fmt: skip
        if wanted_fps is not None and not isinstance(wanted_fps, int | float):
            raise GuardError(400, "media_io_kwargs.video.fps must be a number", "invalid_media_io_kwargs",
                             "media_io_kwargs")  # fmt: skip
        if wanted_frames is not None and wanted_fps is None:
            num_frames, fps = frames, -1
        elif wanted_fps is not None and wanted_frames is None:
            num_frames, fps = VIDEO_IO_DEFAULT_FRAMES, float(wanted_fps)
        elif wanted_frames is not None:
            num_frames, fps = frames, float(wanted_fps)
    processor = payload.get("mm_processor_kwargs")
    audio_in_video = isinstance(processor, dict) and bool(processor.get("use_audio_in_video"))
    return VideoSampling(num_frames, fps, audio_in_video)
