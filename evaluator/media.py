"""Media -> OpenAI content parts with data URLs, exactly as MERA's harness sends them
(`multimodal_tasks/load_media.py` with LOAD_BASE64=1), plus the optional transforms.

- image: the stored bytes, not re-encoded, always labelled `image/png` (MERA does so for JPEGs too);
- audio: re-encoded to WAV with soundfile, sent as vLLM's `audio_url` (or OpenAI's `input_audio`);
- video: the stored container bytes labelled `video/mp4`, or N evenly spaced frames as images.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any, Literal

import numpy as np

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


def wav_bytes(audio: AudioMedia) -> bytes:
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, audio.array, audio.rate, format="WAV")
    return out.getvalue()


def video_frames_png(data: bytes, count: int) -> list[bytes]:
    """`count` evenly spaced frames of the video, as PNG bytes (MERA's --replace_videos_with_images_amount)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise ValueError("video has no decodable frames")
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    out = []
    for i in picks:
        buf = io.BytesIO()
        frames[int(i)].save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(data)}"}}


def audio_part(wav: bytes, kind: AudioPart = "audio_url") -> dict[str, Any]:
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}
    return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(wav)}"}}


def video_part(data: bytes) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64(data)}"}}


def encode_media(media: ImageMedia | AudioMedia | VideoMedia, *, audio_kind: AudioPart = "audio_url",
                 image_max_side: int | None = None, video_frames: int | None = None) -> list[dict[str, Any]]:
    """The content parts one media item becomes (one part, or N image parts for sampled video)."""
    if isinstance(media, ImageMedia):
        data = resize_image_bytes(media.data, image_max_side) if image_max_side else media.data
        return [image_part(data)]
    if isinstance(media, AudioMedia):
        return [audio_part(wav_bytes(media), audio_kind)]
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
