"""Request inspection before vLLM's engine sees a request.

For the route's shape (routes.py) it finds every content part vLLM's parser will read, classifies
each exactly as vLLM does (parts.py), checks the request's budgets (budgets.py) and every media
item (type, data URL, base64, container, image pixels and video frames x pixels from the header,
audio duration), and turns allowed remote URLs into data URLs fetched here. Errors name the part
(`messages[1].content[2]`), the problem and the limit.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.guard.budgets import VideoSampling, check_generation, check_structure, over_budget, video_sampling
from server.guard.config import GuardSettings
from server.guard.errors import GuardError
from server.guard.media import (
    Base64Payload,
    MediaError,
    audio_seconds,
    image_pixels,
    parse_data_url,
    sniff,
    video_geometry,
    wav_seconds,
)
from server.guard.parts import Kind, Part, classify
from server.guard.remote import MediaFetcher
from server.guard.routes import REFUSED_BECAUSE, Located, Rewrite, Shape, locate

# Bodies above this are parsed and checked in a worker thread, so the event loop (which also
# streams every other client's tokens) is never blocked for more than a millisecond or two.
INLINE_THRESHOLD = 2 << 20


class _Bytes:
    """Fetched media: already whole, same interface as Base64Payload."""

    is_complete = True

    def __init__(self, data: bytes) -> None:
        self.head = data

    def full(self) -> bytes:
        return self.head


@dataclass
class MediaRef:
    where: str  # messages[i].content[j]
    part: Part
    raw: Any
    rewrite: Rewrite | None = None
    fetched: bytes | None = None
    sniffed: tuple[str, str] | None = None  # (modality, format) of the bytes, once checked

    @property
    def url(self) -> str | None:
        return self.part.source if isinstance(self.part.source, str) else None

    @property
    def is_remote(self) -> bool:
        return self.url is not None and self.url[:5].lower() != "data:"


@dataclass
class Checked:
    truncated: bool = False  # audio over max_audio_seconds let through
    audio_seconds: float = 0.0


@dataclass
class Outcome:
    rewritten: bool = False  # the body must be re-serialised (remote URLs became data URLs)
    audio_truncated: int = 0  # clips over max_audio_seconds let through (long_audio="truncate")
    media: Counter = field(default_factory=Counter)


def media_refs(located: Located) -> list[MediaRef]:
    """Every media item vLLM would load; parts vLLM or this server refuses raise a 400."""
    refs = []
    for found in located.parts:
        part = classify(found.part)
        where = found.where
        if part.kind is Kind.TEXT:
            continue
        if part.kind is Kind.EMBEDS:
            raise GuardError(
                400, f"{where}: content part type {part.part_type!r} is not accepted by this server",
                "unsupported_content_part", where,
            )  # fmt: skip
        if part.kind is Kind.INVALID:
            raise GuardError(400, f"{where}: {part.problem}", "invalid_content_part", where)
        if not part.source and not part.is_reference:
            raise GuardError(400, f"{where}: {part.part_type} part has no URL or data", "invalid_content_part", where)
        if part.source and not isinstance(part.source, str):
            raise GuardError(400, f"{where}: {part.part_type} URL must be a string", "invalid_content_part", where)
        refs.append(MediaRef(where, part, found.part, found.rewrite))
    return refs


class ContentValidator:
    def __init__(self, settings: GuardSettings, fetcher: MediaFetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher

    async def validate(self, shape: Shape | None, route: str, payload: dict[str, Any]) -> Outcome:
        """`shape` None: a route the guard does not know (no media of any kind may reach it)."""
        if shape is Shape.REFUSED:
            raise GuardError(
                403, f"this server does not serve {route}: {REFUSED_BECAUSE.get(route, 'not inspected')}",
                "route_refused",
            )  # fmt: skip
        located = locate(shape or Shape.TEXT_ONLY, payload, strict_strings=shape is None)
        if located.media_found:
            where = located.media_found
            raise GuardError(400, f"{where}: {route} does not accept media on this server", "media_not_accepted",
                             where)  # fmt: skip
        check_structure(located, self.settings)
        refs = media_refs(located)
        check_generation(payload, shape or Shape.TEXT_ONLY, located, self.settings)
        sampling = video_sampling(payload, self.settings) if refs else None
        outcome = Outcome(media=self._count(refs, sampling))
        if not refs:
            return outcome
        remote = [r for r in refs if r.is_remote]
        for ref in remote:  # policy first, so a forbidden URL never waits behind a fetch
            await self.fetcher.check_url(ref.url, ref.where)
        if remote:
            await self._fetch_all(remote)
        inline = [r for r in refs if r.url is not None]
        size = sum(len(r.url) if r.fetched is None else len(r.fetched) for r in inline)
        if size > INLINE_THRESHOLD:
            checked = await asyncio.to_thread(self._check_all, inline, sampling)
        else:
            checked = self._check_all(inline, sampling)
        outcome.audio_truncated = sum(c.truncated for c in checked)
        total_audio = sum(c.audio_seconds for c in checked)
        if total_audio > self.settings.max_total_audio_seconds:
            raise over_budget("audio seconds", round(total_audio, 1), self.settings.max_total_audio_seconds,
                              "max_total_audio_seconds", "messages")  # fmt: skip
        for ref in remote:
            self._rewrite(ref)
        outcome.rewritten = bool(remote)
        return outcome

    def _count(self, refs: list[MediaRef], sampling: VideoSampling | None) -> Counter:
        counts = Counter(r.part.modality for r in refs)
        if sampling is not None and sampling.audio_in_video:
            counts["audio"] += counts["video"]
        for modality, count in counts.items():
            limit = self.settings.limit_mm_per_prompt.get(modality)
            if limit is not None and count > limit:
                raise GuardError(
                    400,
                    f"request has {count} {modality} items; this server accepts at most {limit} per request "
                    "(--limit-mm-per-prompt)",
                    "too_many_media",
                    "messages",
                )
        return counts

    async def _fetch_all(self, remote: list[MediaRef]) -> None:
        """All fetches of a request run together; the first failure cancels the others."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.fetcher.fetch(r.url, r.where)) for r in remote]
        except BaseExceptionGroup as failed:
            guard_errors = failed.subgroup(GuardError)
            if guard_errors is None:
                raise
            raise guard_errors.exceptions[0] from None
        for ref, task in zip(remote, tasks, strict=True):
            ref.fetched = task.result()

    def _check_all(self, refs: list[MediaRef], sampling: VideoSampling | None) -> list[Checked]:
        return [self._check_one(ref, sampling) for ref in refs]

    def _check_one(self, ref: MediaRef, sampling: VideoSampling | None) -> Checked:
        modality = ref.part.modality
        try:
            if ref.fetched is not None:
                payload: Base64Payload | _Bytes = _Bytes(ref.fetched)
            else:
                _, payload = parse_data_url(ref.url)
            found = sniff(payload.head)
            if found is None:
                raise MediaError(
                    f"bytes are not a recognised {modality} file (first bytes {payload.head[:8].hex()})"
                )
            if found.modality != modality and not (modality == "audio" and found.format == "mp4"):
                raise MediaError(f"a {ref.part.part_type} part holds {found.modality} data ({found.format})")
            checked = Checked()
            if modality == "image":
                self._check_pixels(payload)
            elif modality == "audio":
                checked = self._check_duration(payload)
            else:
                checked = self._check_video(payload, sampling or video_sampling({}, self.settings))
        except MediaError as exc:
            raise GuardError(400, f"{ref.where}: {exc}", "invalid_media", ref.where) from None
        ref.sniffed = (found.modality, found.format)
        return checked

    def _check_pixels(self, payload: Base64Payload | _Bytes) -> None:
        try:
            width, height = image_pixels(payload.head)
        except MediaError:
            if payload.is_complete:
                raise
            width, height = image_pixels(payload.full())  # a header past the first 64 KB (big EXIF)
        if width * height > self.settings.max_image_pixels:
            raise MediaError(
                f"image is {width}x{height} = {width * height} pixels; the server accepts at most "
                f"{self.settings.max_image_pixels} (setting MERA_SERVE_GUARD__MAX_IMAGE_PIXELS)"
            )

    def _check_video(self, payload: Base64Payload | _Bytes, sampling: VideoSampling) -> Checked:
        video = video_geometry(payload.full())
        frames = sampling.frames(video.frames, video.seconds)
        if frames is None:
            raise MediaError("video header gives neither a frame count nor a duration, and every frame would be "
                             "decoded")  # fmt: skip
        pixels = video.width * video.height * frames
        if pixels > self.settings.max_video_pixels:
            raise MediaError(
                f"video is {video.width}x{video.height} with {frames} frames to sample = {pixels} pixels; the "
                f"server accepts at most {self.settings.max_video_pixels} (setting "
                "MERA_SERVE_GUARD__MAX_VIDEO_PIXELS)"
            )
        return Checked(audio_seconds=video.seconds if sampling.audio_in_video else 0.0)

    def _check_duration(self, payload: Base64Payload | _Bytes) -> Checked:
        seconds = wav_seconds(payload.head)
        if seconds is None:
            seconds = audio_seconds(payload.full())
        limit = self.settings.max_audio_seconds
        if seconds <= limit:
            return Checked(audio_seconds=seconds)
        if self.settings.long_audio == "reject":
            raise MediaError(f"audio is {seconds:.1f} s long; the server accepts at most {limit:g} s")
        return Checked(truncated=True, audio_seconds=seconds)

    @staticmethod
    def _rewrite(ref: MediaRef) -> None:
        modality, fmt = ref.sniffed
        data_url = f"data:{modality}/{fmt};base64,{base64.b64encode(ref.fetched).decode()}"
        if ref.rewrite is not None:
            ref.rewrite(data_url)
            return
        key, raw = ref.part.part_type, ref.raw
        if key != "input_image" and isinstance(raw.get(key), dict):
            raw[key]["url"] = data_url
        else:
            raw[key] = data_url

