"""Test media with the real MERA Multi media's properties, generated (never downloaded), deterministic, cached.

What the real files look like (measured on the examples the MERA repository publishes):
- images: phone photos around 4000x3000 JPEG with EXIF orientation and an ICC profile, RGBA PNGs
  (ruCLEVR 480x320, LabTabVQA 731x482), large PNG screenshots of tables, RGB PNGs (ruTiE-Image 1280x960);
- audio: WAV at 44.1 kHz 16-bit (ruEnvAQA, ruTiE-Audio, whose files carry an extra RIFF chunk) and
  48 kHz 24-bit (AQUARIA), 11-25 s; any other rate, width and channel count must work too;
- video: H.264 MP4 at 720p/30 and 1080p/25, and phones' HEVC QuickTime `.mov` tagged `hvc1`, with or
  without an audio track.

Each medium is described by a frozen spec; `render(spec)` makes its bytes from the spec alone (same spec,
same bytes), and `MediaCache` keeps rendered files on disk so large ones are built once per machine.
The content is simple synthetic material (gradients, shapes, grid text, harmonic tones), which
compresses well: pixel counts, durations, rates and containers are real, file sizes stay small where
size is not the point. Encoders: Pillow, soundfile (libsndfile) and PyAV's bundled libx264/libx265/AAC,
so nothing outside the Python wheels is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Part of every cache key: bump a kind's version whenever its renderer's output changes (only that kind is
# rendered anew).
RENDERER_VERSIONS = {"image": "2", "audio": "1", "video": "1"}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: int = Field(0, ge=0, description="Picks other content (colours, positions, pitch) for the same properties.")

    @property
    def kind(self) -> str:
        raise NotImplementedError

    @property
    def extension(self) -> str:
        raise NotImplementedError

    def cache_name(self) -> str:
        key = f"{RENDERER_VERSIONS[self.kind]}/{type(self).__name__}/{self.model_dump_json()}"
        return f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.{self.extension}"


class ImageSpec(_Spec):
    content: Literal["photo", "table", "shapes", "solid"]
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    format: Literal["JPEG", "PNG"]
    mode: Literal["RGB", "RGBA"] = "RGB"
    exif_orientation: int | None = Field(None, ge=1, le=8, description="EXIF tag 0x0112, as phones write it.")
    icc_profile: bool = False
    color: tuple[int, int, int] = Field((200, 40, 40), description="The colour of a `solid` image.")

    @property
    def kind(self) -> str:
        return "image"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else "png"


class AudioSpec(_Spec):
    rate: int = Field(gt=0)
    seconds: float = Field(gt=0)
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16"
    channels: int = Field(1, ge=1)
    format: Literal["WAV", "FLAC"] = "WAV"
    extra_chunk: bool = Field(False, description="A LIST/INFO chunk before `data`, as ruTiE-Audio's WAVs carry.")

    @property
    def kind(self) -> str:
        return "audio"

    @property
    def extension(self) -> str:
        return self.format.lower()


class VideoSpec(_Spec):
    codec: Literal["h264", "hevc"]  # h264 -> MP4; hevc -> QuickTime .mov tagged hvc1 (the iPhone case)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: int = Field(gt=0)
    seconds: float = Field(gt=0)
    audio: bool = False  # an AAC stereo track beside the video

    @property
    def kind(self) -> str:
        return "video"

    @property
    def extension(self) -> str:
        return "mp4" if self.codec == "h264" else "mov"

    @property
    def container(self) -> str:
        return "mp4" if self.codec == "h264" else "mov"


MediaSpec = ImageSpec | AudioSpec | VideoSpec


# --- catalogues: the real datasets' properties (measured on the published MERA media) -------------
PHONE_PHOTO = ImageSpec(content="photo", width=4032, height=3024, format="JPEG", exif_orientation=6, icc_profile=True)
MATH_PHOTO = ImageSpec(content="photo", width=4000, height=3000, format="JPEG", exif_orientation=1, icc_profile=True)
CLEVR_RGBA = ImageSpec(content="shapes", width=480, height=320, format="PNG", mode="RGBA")
TABLE_RGBA = ImageSpec(content="table", width=731, height=482, format="PNG", mode="RGBA")
TABLE_SCREENSHOT = ImageSpec(content="table", width=2560, height=1600, format="PNG")
RUTIE_PNG = ImageSpec(content="shapes", width=1280, height=960, format="PNG")
REENCODED_JPEG = ImageSpec(content="photo", width=800, height=600, format="JPEG")  # the notebooks' re-encode
IMAGES = (PHONE_PHOTO, CLEVR_RGBA, TABLE_SCREENSHOT, MATH_PHOTO, TABLE_RGBA, RUTIE_PNG, REENCODED_JPEG)

AQUARIA_AUDIO = tuple(AudioSpec(rate=48000, subtype="PCM_24", seconds=s) for s in (12.7, 17.2, 25.0))
ENVAQA_AUDIO = tuple(AudioSpec(rate=44100, subtype="PCM_16", seconds=s) for s in (15.5, 22.0))
RUTIE_AUDIO = (AudioSpec(rate=44100, subtype="PCM_16", seconds=11.0, extra_chunk=True),)
# The rest of what the server must take: other rates, float and 24-bit, stereo and 6 channels, FLAC.
OTHER_AUDIO = (
    AudioSpec(rate=8000, subtype="PCM_16", channels=2, seconds=3.0),
    AudioSpec(rate=22050, subtype="FLOAT", channels=6, seconds=4.0),
    AudioSpec(rate=96000, subtype="PCM_24", channels=2, seconds=5.0),
    AudioSpec(rate=16000, subtype="PCM_16", seconds=3.0, format="FLAC"),
)
AUDIO_RATES = (8000, 16000, 22050, 44100, 48000, 96000)
AUDIO_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
AUDIO_CHANNELS = (1, 2, 6)

VIDEOS = (
    VideoSpec(codec="h264", width=1280, height=720, fps=30, seconds=30, audio=True),
    VideoSpec(codec="hevc", width=1920, height=1080, fps=30, seconds=30, audio=True),
    VideoSpec(codec="h264", width=1920, height=1080, fps=25, seconds=60),
    VideoSpec(codec="hevc", width=1280, height=720, fps=30, seconds=30),
)


def audio_matrix(seconds: float = 2.0) -> list[AudioSpec]:
    """Every rate x sample format x channel count the server must accept."""
    return [AudioSpec(rate=r, subtype=s, channels=c, seconds=seconds)
            for r in AUDIO_RATES for s in AUDIO_SUBTYPES for c in AUDIO_CHANNELS]  # fmt: skip


# --- rendering --------------------------------------------------------------------------------------------
def render(spec: MediaSpec) -> bytes:
    """The medium's bytes, a pure function of the spec."""
    if isinstance(spec, ImageSpec):
        return _render_image(spec)
    if isinstance(spec, AudioSpec):
        return _render_audio(spec)
    return _render_video(spec)


def _rng(spec: _Spec) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(spec.model_dump_json().encode()).digest()[:8], "little"))


def _render_image(spec: ImageSpec) -> bytes:
    from PIL import Image, ImageCms, ImageDraw, ImageFont

    rng = _rng(spec)
    w, h = spec.width, spec.height
    if spec.content == "photo":
        # A smooth gradient "sky" and a few discs: the pixel count of a phone photo at a fraction of its bytes.
        c0, c1 = (rng.integers(20, 235, 3).astype(np.float32) for _ in range(2))  # float32: 12 MP x 3 floats
        xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        pixels = c0 + (c1 - c0) * (0.6 * xs + 0.4 * ys)
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            r = int(rng.integers(h // 20, h // 6))
            x, y = int(rng.integers(0, w - r)), int(rng.integers(0, h - r))
            draw.ellipse((x, y, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    elif spec.content == "table":
        # A spreadsheet-like screenshot: header row, grid lines, a number in every cell.
        background = (255, 255, 255, 0) if spec.mode == "RGBA" else (255, 255, 255)
        image = Image.new(spec.mode, (w, h), background)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(10, h // 45))
        rows, cols = max(4, h // 40), max(3, w // 240)
        cell_w, cell_h = (w - 20) // cols, (h - 20) // rows
        opaque = (255, 255, 255, 255) if spec.mode == "RGBA" else (255, 255, 255)
        draw.rectangle((10, 10, 10 + cols * cell_w, 10 + rows * cell_h), fill=opaque)
        draw.rectangle((10, 10, 10 + cols * cell_w, 10 + cell_h), fill=(210, 225, 245))
        for r in range(rows + 1):
            draw.line((10, 10 + r * cell_h, 10 + cols * cell_w, 10 + r * cell_h), fill=(90, 90, 90))
        for c in range(cols + 1):
            draw.line((10 + c * cell_w, 10, 10 + c * cell_w, 10 + rows * cell_h), fill=(90, 90, 90))
        values = rng.integers(0, 10000, (rows, cols))
        for r in range(rows):
            for c in range(cols):
                text = f"col {c + 1}" if r == 0 else f"{values[r, c] / 100:.2f}"
                draw.text((16 + c * cell_w, 12 + r * cell_h), text, fill=(20, 20, 20), font=font)
    elif spec.content == "solid":
        # One flat colour: the smallest file of a given size, for tests where only the pixels' count matters.
        image = Image.new(spec.mode, (w, h), spec.color + ((255,) if spec.mode == "RGBA" else ()))
    else:
        # Objects on a plain background, as ruCLEVR's renders (RGBA) and ruTiE-Image's drawings.
        background = tuple(int(v) for v in rng.integers(90, 170, 3)) + ((255,) if spec.mode == "RGBA" else ())
        image = Image.new(spec.mode, (w, h), background)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            r = int(rng.integers(min(w, h) // 10, min(w, h) // 4))
            x, y = int(rng.integers(0, w - r)), int(rng.integers(0, h - r))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + ((255,) if spec.mode == "RGBA" else ())
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + r, y + r), fill=fill)
    options: dict = {}
    if spec.exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = spec.exif_orientation  # Orientation
        exif[0x010F] = "Apple"  # Make
        exif[0x0110] = "iPhone 13"  # Model
        options["exif"] = exif.tobytes()
    if spec.icc_profile:
        options["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if spec.format == "JPEG":
        options["quality"] = 90
    out = io.BytesIO()
    image.save(out, format=spec.format, **options)
    return out.getvalue()


def tone(rate: int, seconds: float, channels: int = 1, variant: int = 0) -> np.ndarray:
    """Speech-like test signal: a gliding harmonic series under a 4 Hz syllable envelope, peak 0.3,
    shaped (frames, channels)."""
    n = max(1, int(round(rate * seconds)))
    t = np.arange(n, dtype=np.float64) / rate
    f0 = 140.0 + 25.0 * variant + 20.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8) if k * 180.0 < rate / 2)
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))
    mono = envelope * voiced
    mono *= 0.3 / max(float(np.abs(mono).max()), 1e-9)
    # Each channel a little quieter and delayed, so a mix-down differs from any single channel.
    return np.stack([np.roll(mono, 7 * c) * (1.0 - 0.1 * c) for c in range(channels)], axis=1)


def _render_audio(spec: AudioSpec) -> bytes:
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, tone(spec.rate, spec.seconds, spec.channels, spec.variant), spec.rate,
                    format=spec.format, subtype=spec.subtype)  # fmt: skip
    data = out.getvalue()
    return _with_info_chunk(data) if spec.extra_chunk else data


def _with_info_chunk(wav: bytes) -> bytes:
    """The WAV with a RIFF LIST/INFO chunk (software and title tags) inserted before its `data` chunk."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    tags = b""
    for tag, text in ((b"ISFT", b"Lavf58.76.100\x00"), (b"INAM", b"mera-multi test clip\x00")):
        tags += tag + struct.pack("<I", len(text)) + text + (b"\x00" if len(text) % 2 else b"")
    chunk = b"LIST" + struct.pack("<I", 4 + len(tags)) + b"INFO" + tags
    pos = 12
    while pos + 8 <= len(wav):
        name, size = wav[pos:pos + 4], struct.unpack("<I", wav[pos + 4:pos + 8])[0]
        if name == b"data":
            body = wav[12:pos] + chunk + wav[pos:]
            return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
        pos += 8 + size + (size % 2)
    raise ValueError("WAV has no data chunk")


def _render_video(spec: VideoSpec) -> bytes:
    import av

    rng = _rng(spec)
    w, h = spec.width - spec.width % 2, spec.height - spec.height % 2
    # A keyframe every 2 s, as phones and cameras write. One encoder thread: threaded x265 output differs
    # from run to run, and the cache key promises the same bytes for the same spec.
    options = {"crf": "30", "g": str(2 * spec.fps)}
    if spec.codec == "h264":
        codec, options["preset"], options["threads"] = "libx264", "superfast", "1"
    else:
        codec, options["preset"] = "libx265", "ultrafast"
        options["x265-params"] = "log-level=error:bframes=0:rc-lookahead=5:pools=1:frame-threads=1"
    if codec not in av.codecs_available:
        raise RuntimeError(f"this PyAV ({av.__version__}) has no {codec} encoder; its PyPI wheels bundle "
                           "libx264 and libx265 (pip install 'av>=18')")
    # The luma gradient is fixed; a bright block sweeps across it and the chroma drifts, so sampled
    # frames differ from each other.
    luma = (16 + 180 * (np.arange(w)[None, :] / w * 0.7 + np.arange(h)[:, None] / h * 0.3)).astype(np.uint8)
    block = max(16, h // 6)
    u0, v0 = (int(v) for v in rng.integers(60, 200, 2))
    out = io.BytesIO()
    with av.open(out, "w", format=spec.container) as container:
        stream = container.add_stream(codec, rate=spec.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if spec.codec == "hevc":
            stream.codec_tag = "hvc1"  # what QuickTime and iPhones write (ffmpeg's default is hev1)
        audio = container.add_stream("aac", rate=48000, layout="stereo") if spec.audio else None
        frames = int(round(spec.fps * spec.seconds))
        for i in range(frames):
            y = luma.copy()
            x0 = (i * max(2, w // (2 * spec.fps))) % (w - block)
            y0 = (h // 3 + i) % (h - block)
            y[y0:y0 + block, x0:x0 + block] = 235
            chroma_u = np.full((h // 2, w // 2), (u0 + i // spec.fps) % 256, np.uint8)
            chroma_v = np.full((h // 2, w // 2), (v0 + 2 * (i // spec.fps)) % 256, np.uint8)
            planes = np.concatenate([y, chroma_u.reshape(-1, w), chroma_v.reshape(-1, w)])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            signal = tone(48000, spec.seconds, channels=2, variant=spec.variant).astype(np.float32).T
            step = 1024  # AAC's frame size
            for start in range(0, signal.shape[1], step):
                chunk = np.ascontiguousarray(signal[:, start:start + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return out.getvalue()


# --- cache ------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """`$MERA_MEDIA_CACHE`, else `$XDG_CACHE_HOME/mera-multi/media` (`~/.cache/mera-multi/media`)."""
    if os.environ.get("MERA_MEDIA_CACHE"):
        return Path(os.environ["MERA_MEDIA_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mera-multi" / "media"


class MediaCache:
    """Rendered media on disk, one file per spec (named by a hash of the spec and its renderer's version).

    Safe for several processes at once: a file is written under a temporary name and renamed into place,
    so a reader sees a whole file or none (two writers render the same bytes)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, spec: MediaSpec) -> Path:
        target = self.root / spec.cache_name()
        if not target.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            data = render(spec)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix="." + spec.extension)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any cache
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target

    def bytes(self, spec: MediaSpec) -> bytes:
        return self.path(spec).read_bytes()
