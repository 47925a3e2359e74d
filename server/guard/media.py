"""What a media payload is, judged from its bytes: container sniffing by magic numbers, image
size from the header only (before any decoding), audio duration from the header.

Why header-only: Pillow's `Image.open` is lazy (it parses the header and stops), so a
20000x20000 PNG of a few hundred KB costs microseconds here instead of gigabytes in vLLM.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "audio", "video"]


@dataclass(frozen=True)
class Sniffed:
    modality: Modality
    format: str


class MediaError(ValueError):
    """The payload is not acceptable; the message says why (the caller adds where)."""


def sniff(data: bytes) -> Sniffed | None:
    """Recognise the container from its first bytes; None when it is none we accept."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "png")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "jpeg")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed("image", "gif")
    if head.startswith(b"BM") and len(data) >= 26:
        return Sniffed("image", "bmp")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Sniffed("image", "tiff")
    if head.startswith(b"RIFF") and len(head) >= 12:
        kind = head[8:12]
        if kind == b"WEBP":
            return Sniffed("image", "webp")
        if kind == b"WAVE":
            return Sniffed("audio", "wav")
        if kind == b"AVI ":
            return Sniffed("video", "avi")
        return None
    if head.startswith(b"RF64") or head.startswith(b"BW64"):
        return Sniffed("audio", "wav")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "flac")
    if head.startswith(b"OggS"):
        return Sniffed("audio", "ogg")
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return Sniffed("audio", "mp3")  # ID3 tag or an MPEG audio frame sync word
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        # ISO base media (MP4/MOV/M4A). An "M4A " brand is audio-only AAC.
        if head[4:8] == b"ftyp" and head[8:12] in (b"M4A ", b"M4B "):
            return Sniffed("audio", "m4a")
        return Sniffed("video", "mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "matroska")  # WebM and MKV share the EBML header
    return None


try:  # vLLM's own base64 decoder (a vLLM dependency): the same verdicts, several times faster
    from pybase64 import b64decode as _b64decode
except ImportError:  # the guard around another app
    _b64decode = base64.b64decode


def decode_base64(text: str) -> bytes:
    """Strict base64, as vLLM decodes media (`pybase64.b64decode(data, validate=True)`)."""
    try:
        return _b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"invalid base64 data ({exc})") from None


HEAD_CHARS = 87_384  # base64 characters decoded up front: 65,538 bytes, enough for nearly every header


class Base64Payload:
    """A base64 string whose head is decoded eagerly and whose whole is decoded only on demand.

    Why: decoding megabytes of video costs the API server real time, and vLLM decodes them again
    anyway. Headers (sniffing, image size, WAV duration) need only the head. The head and the tail
    are base64-checked here; the middle of a payload over 64 KB is left to vLLM's own decoder
    (which answers 400 for bad base64, without naming the part).
    """

    def __init__(self, text: str) -> None:
        if not text:
            raise MediaError("empty base64 payload")
        self.text = text
        self._full: bytes | None = None
        if len(text) <= HEAD_CHARS:
            self._full = decode_base64(text)
            self.head = self._full[: HEAD_CHARS // 4 * 3]
        else:
            if len(text) % 4:
                raise MediaError("invalid base64 data (length is not a multiple of 4)")
            self.head = decode_base64(text[:HEAD_CHARS])
            decode_base64(text[-8:])  # a truncated or garbage-padded tail

    @property
    def is_complete(self) -> bool:
        return self._full is not None or len(self.text) <= HEAD_CHARS

    def full(self) -> bytes:
        if self._full is None:
            self._full = decode_base64(self.text)
        return self._full


def parse_data_url(url: str) -> tuple[str, Base64Payload]:
    """`data:<mime>[;param=value]*;base64,<payload>` -> (mime, payload), by vLLM's own rule
    (MediaConnector._load_data_url): the URL is split at its first ',', and the last ';'-separated
    piece before it must be exactly `base64` (vLLM answers 501 for `;BASE64` or `;base64;charset=x`)."""
    spec, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("malformed data URL: no ',' before the payload")
    mime, sep, encoding = spec.rpartition(";")
    if not sep or encoding != "base64":
        raise MediaError("data URL must end its header with ';base64' ('data:<mime>;base64,<data>')")
    if not payload:
        raise MediaError("data URL has an empty payload")
    return mime.partition(";")[0], Base64Payload(payload)


def wav_seconds(head: bytes) -> float | None:
    """Duration of a RIFF/WAVE file from its `fmt ` and `data` chunk headers (None if not found
    in `head`). libsndfile would clamp the frame count to the bytes it was given."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if kind == b"fmt " and pos + 16 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16 : pos + 20], "little")
        elif kind == b"data":
            return size / byte_rate if byte_rate > 0 and size not in (0, 0xFFFFFFFF) else None
        pos += 8 + size + (size & 1)
    return None


def image_pixels(data: bytes) -> tuple[int, int]:
    """(width, height) from the header; nothing is decoded."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except Image.DecompressionBombError as exc:
            # Pillow refuses at open() past 2x its own limit; report the size it saw.
            raise MediaError(f"image too large ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - any parse failure means a broken header
            raise MediaError(f"unreadable image header ({type(exc).__name__})") from None


def audio_seconds(data: bytes) -> float:
    """Duration from the header (soundfile), falling back to the container (PyAV) for M4A."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - fall through to PyAV
        pass
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            if container.duration:
                return container.duration / 1_000_000  # av.time_base
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001
        pass
    raise MediaError("unreadable audio header (cannot determine its duration)")


@dataclass(frozen=True)
class VideoGeometry:
    width: int
    height: int
    frames: int  # frames in the stream per its header; 0 when the header does not say
    seconds: float  # 0.0 when unknown


def video_geometry(data: bytes) -> VideoGeometry:
    """Frame size, frame count and duration from the container header (PyAV parses the header
    and index only; no frame is decoded)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise MediaError("video container has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            seconds = 0.0
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration:
                seconds = container.duration / 1_000_000  # av.time_base
            frames = stream.frames
            if not frames and seconds and stream.average_rate:
                frames = int(seconds * float(stream.average_rate) + 0.5)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken container
        raise MediaError(f"unreadable video header ({type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        raise MediaError("video header does not give a frame size")
    return VideoGeometry(width, height, max(int(frames), 0), seconds)
