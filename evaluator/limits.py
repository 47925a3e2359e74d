"""The server's per-request media limits (vLLM's `--limit-mm-per-prompt`; `RunConfig.mm_limits`), checked on
our side so that nothing over them is sent (vLLM would answer 400 for each such request).

- `check_run`: before the run starts, a setting that makes *every* request of a task exceed a limit
  (`--video-frames 8` against a server that accepts 6 images) refuses the run, naming both numbers and the fix.
- `sample_counts` / `over_limit`: per sample, before its media are encoded; `message_counts` on the built
  messages (ruTiE turns, whose history adds media), before they are sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evaluator.errors import UserError

if TYPE_CHECKING:
    from evaluator.registry import TaskSpec
    from evaluator.requests import RequestOptions
    from evaluator.schema import Sample

PART_KIND = {"image_url": "image", "audio_url": "audio", "input_audio": "audio", "video_url": "video"}
SERVER_FIX = "raise the server's limit_mm_per_prompt (mera-serve --limit-mm-per-prompt) and pass it as --mm-limits"


class MediaLimitError(UserError):
    """Every request of the run would carry more media items than the server accepts."""


def per_item(kind: str, options: RequestOptions) -> dict[str, int]:
    """What one media item of `kind` becomes in a request: N images for a video sent as frames."""
    if kind == "video" and options.video_frames:
        return {"image": options.video_frames}
    return {kind: 1}


def sample_counts(sample: Sample, options: RequestOptions) -> dict[str, int]:
    """Media items per kind that `sample`'s request will carry, known before any media is encoded."""
    counts: dict[str, int] = {}
    for item in sample.media.values():
        for kind, n in per_item(item.kind, options).items():
            counts[kind] = counts.get(kind, 0) + n
    return counts


def message_counts(messages: list[dict[str, Any]]) -> dict[str, int]:
    """Media items per kind in built chat messages."""
    counts: dict[str, int] = {}
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                kind = PART_KIND.get(part.get("type"))
                if kind:
                    counts[kind] = counts.get(kind, 0) + 1
    return counts


def over_limit(counts: dict[str, int], limits: dict[str, int]) -> str | None:
    for kind, n in counts.items():
        if kind in limits and n > limits[kind]:
            return f"{n} {kind} items but the server admits {limits[kind]} per request"
    return None


def sample_problem(sample: Sample, options: RequestOptions, limits: dict[str, int]) -> str | None:
    """The one-line reason this sample's request would exceed a limit (with the fix), or None."""
    counts = sample_counts(sample, options)
    problem = over_limit(counts, limits)
    if problem is None:
        return None
    frames = options.video_frames
    has_video = any(m.kind == "video" for m in sample.media.values())
    if frames and has_video and counts.get("image", 0) > limits.get("image", counts["image"]):
        fewer = max(1, frames - (counts["image"] - limits["image"]))
        return f"{problem} (--video-frames {frames}); use --video-frames {fewer} or {SERVER_FIX}"
    return f"{problem}; {SERVER_FIX}"


def check_run(specs: list[TaskSpec], options: RequestOptions, limits: dict[str, int]) -> None:
    """Refuse a run in which every request of some task is over a limit, before anything is read or sent."""
    frames = options.video_frames
    if frames and any(s.modality == "video" for s in specs) and frames > limits.get("image", frames):
        allowed = limits["image"]
        raise MediaLimitError(
            f"--video-frames {frames} sends {frames} images per video request but the server accepts at most "
            f"{allowed} images per request (--mm-limits)",
            fix=f"use --video-frames {allowed} or {SERVER_FIX}",
        )
    for spec in specs:
        if spec.dialogue:  # ruTiE: text-only turns exist; its turns are checked one by one (history adds media)
            continue
        # every sample of the other tasks carries at least one item of its modality (its first placeholder)
        for kind, n in per_item(spec.modality, options).items():
            if kind in limits and n > limits[kind]:
                raise MediaLimitError(
                    f"{spec.name} sends {n} {kind} item(s) per request but the server accepts at most "
                    f"{limits[kind]} (--mm-limits)",
                    fix=f"{SERVER_FIX}, or leave {spec.name} out of --tasks",
                )
