"""Media -> OpenAI content parts with data URLs, exactly as MERA's harness sends them
(`multimodal_tasks/load_media.py` with LOAD_BASE64=1), plus the optional transforms.

- image: the stored bytes, not re-encoded, always labelled `image/png` (MERA does so for JPEGs too);
- audio: the official mono mix re-encoded to 16-bit WAV with soundfile (`evaluator/audio.py`), sent as vLLM's
  `audio_url` (or OpenAI's `input_audio`); `--audio-channels stored` keeps every channel instead;
- video: the stored container bytes labelled `video/mp4`, or N uniformly sampled frames as PNG images
  (`--video-frames N`), decoded in one streaming pass that keeps only the chosen frames.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from evaluator import audio as audio_codec
from evaluator.audio import AudioChannels
from evaluator.schema import AudioMedia, ImageMedia, VideoMedia

AudioPart = Literal["audio_url", "input_audio"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resize_image_bytes(data: bytes, max_side: int) -> bytes:
    """lm-eval's `resize_image` (longest side to `max_side`, the other side truncated to int as the fork does,
    bicubic, never upscaled) on the RGB image, then PNG, as MERA's `load_media.resize_image_bytes` does."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if max(width, height) > max_side:
        if height > width:
            size = (max(1, int(width / height * max_side)), max_side)
        else:
            size = (max_side, max(1, int(height / width * max_side)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def wav_bytes(audio: AudioMedia, channels: AudioChannels = "mono") -> bytes:
    return audio_codec.wav_bytes(audio, channels)


def frame_indices(total: int, count: int) -> list[int]:
    """Which of `total` frames are the `count` uniformly sampled ones: always `count` indices (a clip shorter
    than `count` frames repeats frames), so a request's image count is known before anything is decoded.

    MERA's `--replace_videos_with_images_amount` code is not published (the fork's pinned commit); the rule is
    the fork's own uniform sampler (`lm_eval/models/hf_videolm.py`, branch `video`):
    `np.arange(0, total, total / count).astype(int)`, cut to `count` (its float step sometimes yields one
    index more, e.g. 8 for 17 frames and count 7). Frame 0 is always in; the last frame may not be."""
    if total <= 0 or count <= 0:
        return []
    return [int(i) for i in np.arange(0, total, total / count).astype(int)[:count]]


def count_video_frames(data: bytes) -> int:
    """Frames of the first video stream, from a demux pass (packets only, nothing decoded): the frame count
    torchcodec's exact seek mode (what `datasets.Video()` hands the harness) reports."""
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def _png(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_image().save(buf, format="PNG")  # RGB24 via swscale, then PNG as MERA's image re-encodes
    return buf.getvalue()


def decoded_frames(data: bytes) -> Iterator[Any]:
    """The first video stream's frames in presentation order, decoded one at a time."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: the same frames, less wall time
        yield from container.decode(stream)


def video_frames_png(data: bytes, count: int) -> list[bytes]:
    """`count` uniformly sampled frames (`frame_indices`) as PNG bytes, in one streaming decode that stops after
    the last chosen frame: only the current frame and the chosen frames' PNGs are held, whatever the length."""
    picks = frame_indices(count_video_frames(data), count)
    if not picks:
        raise ValueError("video has no frames")
    wanted = set(picks)
    pngs: dict[int, bytes] = {}
    last: bytes | None = None
    frames = decoded_frames(data)
    try:
        for i, frame in enumerate(frames):
            if i in wanted:
                pngs[i] = last = _png(frame)
            if i >= picks[-1]:
                break
    finally:
        frames.close()  # closes the container now, not when collected
    if last is None:
        raise ValueError("video has no decodable frames")
    # fewer decodable frames than packets (a broken tail): chosen frames past the end repeat the last one reached,
    # so the request keeps the number of images it announced
    return [pngs.get(i, last) for i in picks]


def image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(data)}"}}


def audio_part(wav: bytes, kind: AudioPart = "audio_url") -> dict[str, Any]:
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}
    return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(wav)}"}}


def video_part(data: bytes) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64(data)}"}}


def encode_media(media: ImageMedia | AudioMedia | VideoMedia, *, audio_kind: AudioPart = "audio_url",
                 image_max_side: int | None = None, video_frames: int | None = None,
                 audio_channels: AudioChannels = "mono") -> list[dict[str, Any]]:
    """The content parts one media item becomes (one part, or N image parts for sampled video)."""
    if isinstance(media, ImageMedia):
        data = resize_image_bytes(media.data, image_max_side) if image_max_side else media.data
        return [image_part(data)]
    if isinstance(media, AudioMedia):
        return [audio_part(wav_bytes(media, audio_channels), audio_kind)]
    if video_frames:
        return [image_part(frame) for frame in video_frames_png(media.data, video_frames)]
    return [video_part(media.data)]


def strip_media(value: Any) -> Any:
    """A copy with every base64 payload replaced by its sha256 (for digests and logs: never store base64)."""
    if isinstance(value, dict):
        out = {k: strip_media(v) for k, v in value.items()}
        if value.get("format") is not None and isinstance(value.get("data"), str):  # input_audio
            out["data"] = "sha256:" + hashlib.sha256(value["data"].encode()).hexdigest()
        return out
    if isinstance(value, list):
        return [strip_media(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value[:80]:
        head, payload = value.split(";base64,", 1)
        return f"{head};sha256:{hashlib.sha256(payload.encode()).hexdigest()}"
    return value
