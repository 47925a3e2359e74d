"""Media for tests, made by the project's generator (evaluator/synthetic_media.py).

The small helpers below render in memory (flat images, short clips, a few video frames); the
real-world-sized catalogue (phone photos, 48 kHz/24-bit clips, 30-60 s 1080p videos) comes through the
session's media cache (the `media_cache` fixture), so large files are built once per machine.
"""

from __future__ import annotations

import base64

from evaluator import synthetic_media as sm


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (96, 64), color=(200, 40, 40)) -> bytes:
    return sm.render(sm.ImageSpec(content="solid", width=size[0], height=size[1], format=fmt, color=tuple(color)))


def audio_bytes(seconds: float = 1.0, rate: int = 16000, fmt: str = "WAV", *, subtype: str = "PCM_16",
                channels: int = 1, variant: int = 0) -> bytes:
    """A speech-like clip, peak 0.3 (see `synthetic_media.tone`)."""
    return sm.render(sm.AudioSpec(rate=rate, seconds=seconds, format=fmt, subtype=subtype, channels=channels,
                                  variant=variant))  # fmt: skip


def video_bytes(frames: int = 8, size: int = 64, fps: int = 4, codec: str = "h264") -> bytes:
    return sm.render(sm.VideoSpec(codec=codec, width=size, height=size, fps=fps, seconds=frames / fps))


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
