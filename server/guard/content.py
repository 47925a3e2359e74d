"""Content-part validation of chat requests, before vLLM's engine sees them.

Finds every media part, checks it (type, data URL shape, base64, container, image pixel count
from the header, audio duration) and the per-request media counts, and turns allowed remote
URLs into data URLs fetched here. Errors name the message index, the part index and the problem.
What the guard does not judge (message shapes, sampling parameters) is left to vLLM's own 400s.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.guard.config import GuardSettings
from server.guard.errors import GuardError
from server.guard.media import (
    Base64Payload,
    MediaError,
    Modality,
    audio_seconds,
    image_pixels,
    parse_data_url,
    sniff,
    wav_seconds,
)
from server.guard.remote import MediaFetcher

TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal", "thinking", "tool_reference"})
# Tensors / Python objects: never sent by an evaluator, and vLLM needs --enable-mm-embeds for them.
REFUSED_PARTS = frozenset({"image_embeds", "audio_embeds", "video_embeds", "prompt_embeds", "image_pil"})
MEDIA_PARTS: dict[str, Modality] = {
    "image_url": "image", "input_image": "image", "audio_url": "audio", "input_audio": "audio", "video_url": "video",
}  # fmt: skip
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
    modality: Modality
    part: dict[str, Any]
    part_type: str
    url: str | None = None  # data:/http(s) URL; None for input_audio (raw base64 in `data`)
    fetched: bytes | None = None


@dataclass
class Outcome:
    rewritten: bool = False  # the body must be re-serialised (remote URLs became data URLs)
    audio_truncated: int = 0  # clips over max_audio_seconds let through (long_audio="truncate")
    media: Counter = field(default_factory=Counter)


def _url_of(part: dict[str, Any], part_type: str) -> str | None:
    if part_type == "input_image":
        value = part.get("image_url")
        return value if isinstance(value, str) else None
    value = part.get(part_type)
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return value["url"]
    return None


def _conversations(payload: dict[str, Any]) -> list[tuple[str, list]]:
    found = []
    for key in ("messages", "input"):  # chat completions / responses API
        value = payload.get(key)
        if isinstance(value, list):
            found.append((key, value))
    return found


def collect_media(payload: dict[str, Any]) -> list[MediaRef]:
    refs: list[MediaRef] = []
    for key, messages in _conversations(payload):
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                continue
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    continue  # plain strings are text; other shapes get vLLM's own 400
                where = f"{key}[{i}].content[{j}]"
                part_type = part.get("type")
                if part_type is None:
                    part_type = next((t for t in MEDIA_PARTS if t in part and t != "input_image"), None)
                    if part_type is None:
                        continue
                if not isinstance(part_type, str):
                    raise GuardError(
                        400, f"{where}: content part 'type' must be a string", "invalid_content_part", where
                    )
                if part_type in TEXT_PARTS:
                    continue
                if part_type in REFUSED_PARTS:
                    raise GuardError(
                        400,
                        f"{where}: content part type {part_type!r} is not accepted by this server",
                        "unsupported_content_part",
                        where,
                    )
                modality = MEDIA_PARTS.get(part_type)
                if modality is None:
                    raise GuardError(
                        400,
                        f"{where}: unknown content part type {part_type!r} (accepted: "
                        f"{', '.join(sorted(TEXT_PARTS | set(MEDIA_PARTS)))})",
                        "unknown_content_part",
                        where,
                    )
                if part_type == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                        raise GuardError(
                            400,
                            f"{where}: input_audio needs {{'data': <base64>, 'format': ...}}",
                            "invalid_content_part",
                            where,
                        )
                    refs.append(MediaRef(where, modality, part, part_type))
                    continue
                url = _url_of(part, part_type)
                if url is None:
                    raise GuardError(
                        400, f"{where}: {part_type} part has no URL string", "invalid_content_part", where
                    )
                refs.append(MediaRef(where, modality, part, part_type, url.strip()))
    return refs


class ContentValidator:
    def __init__(self, settings: GuardSettings, fetcher: MediaFetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher

    async def validate(self, payload: dict[str, Any]) -> Outcome:
        refs = collect_media(payload)
        outcome = Outcome(media=Counter(r.modality for r in refs))
        if not refs:
            return outcome
        self._check_counts(outcome.media)
        remote = [r for r in refs if r.url is not None and not r.url[:5].lower() == "data:"]
        for ref in remote:  # policy first, so a forbidden URL never waits behind a fetch
            await self.fetcher.check_url(ref.url, ref.where)
        if remote:
            fetched = await asyncio.gather(*(self.fetcher.fetch(r.url, r.where) for r in remote))
            for ref, data in zip(remote, fetched, strict=True):
                ref.fetched = data
        size = sum(
            len(r.url or r.part["input_audio"]["data"]) if r.fetched is None else len(r.fetched) for r in refs
        )
        if size > INLINE_THRESHOLD:
            truncated = await asyncio.to_thread(self._check_all, refs)
        else:
            truncated = self._check_all(refs)
        outcome.audio_truncated = truncated
        outcome.rewritten = bool(remote)
        return outcome

    def _check_counts(self, counts: Counter) -> None:
        for modality, count in counts.items():
            limit = self.settings.limit_mm_per_prompt.get(modality)
            if limit is not None and count > limit:
                raise GuardError(
                    400,
                    f"request has {count} {modality} items; this server accepts at most {limit} per request",
                    "too_many_media",
                    "messages",
                )

    def _check_all(self, refs: list[MediaRef]) -> int:
        return sum(self._check_one(ref) for ref in refs)

    def _check_one(self, ref: MediaRef) -> bool:
        """Validates one item; True when it is audio over the limit that is let through."""
        try:
            if ref.fetched is not None:
                payload: Base64Payload | _Bytes = _Bytes(ref.fetched)
            elif ref.url is None:
                payload = Base64Payload(ref.part["input_audio"]["data"])
            else:
                _, payload = parse_data_url(ref.url)
            found = sniff(payload.head)
            if found is None:
                raise MediaError(
                    f"bytes are not a recognised {ref.modality} file (first bytes {payload.head[:8].hex()})"
                )
            if found.modality != ref.modality and not (ref.modality == "audio" and found.format == "mp4"):
                raise MediaError(f"a {ref.part_type} part holds {found.modality} data ({found.format})")
            truncated = False
            if ref.modality == "image":
                self._check_pixels(payload)
            elif ref.modality == "audio":
                truncated = self._check_duration(payload)
        except MediaError as exc:
            raise GuardError(400, f"{ref.where}: {exc}", "invalid_media", ref.where) from None
        if ref.fetched is not None:
            self._rewrite(ref, found.modality, found.format)
        return truncated

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
                f"{self.settings.max_image_pixels}"
            )

    def _check_duration(self, payload: Base64Payload | _Bytes) -> bool:
        seconds = wav_seconds(payload.head)
        if seconds is None:
            seconds = audio_seconds(payload.full())
        limit = self.settings.max_audio_seconds
        if seconds <= limit:
            return False
        if self.settings.long_audio == "reject":
            raise MediaError(f"audio is {seconds:.1f} s long; the server accepts at most {limit:g} s")
        return True

    @staticmethod
    def _rewrite(ref: MediaRef, modality: str, fmt: str) -> None:
        data_url = f"data:{modality}/{fmt};base64,{base64.b64encode(ref.fetched).decode()}"
        if ref.part_type == "input_image":
            ref.part["image_url"] = data_url
        else:
            ref.part[ref.part_type]["url"] = data_url
