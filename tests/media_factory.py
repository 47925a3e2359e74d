"""Small real media made in memory for tests: PNG/JPEG images, WAV/FLAC audio, MP4 video."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import soundfile as sf
from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (96, 64), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def audio_bytes(seconds: float = 1.0, rate: int = 16000, fmt: str = "WAV", freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate, format=fmt)
    return buf.getvalue()


def video_bytes(frames: int = 8, size: int = 64, fps: int = 4) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 30) % 255, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
