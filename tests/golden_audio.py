"""Audio inputs for the golden-bytes tests: the formats the MERA audio datasets hold (WAV 16/24-bit,
mono/stereo, 44.1/48 kHz, ruTiE's extra RIFF chunk) and the others `datasets.Audio()` would accept.

PCM and float WAVs are built here byte by byte (integer samples from a fixed LCG, a hand-written RIFF
header), so they never depend on a library version; compressed inputs (FLAC, MP3, Vorbis, Opus) are
committed files under `fixtures/audio/`. `fixtures/golden_audio.json` holds, per case, the sha256 of the
input and of the WAV that MERA's official path sends for it (`datasets.Audio()` decode, then
`soundfile.write(..., format="WAV")`), computed once with the library versions that path uses.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
FRAMES = 4096


@dataclass(frozen=True)
class WavCase:
    rate: int
    channels: int
    kind: str  # "pcm" (signed, or unsigned for 8-bit) or "float"
    bits: int
    extra_chunk: bool = False  # a LIST chunk before `data`, as ruTiE-Audio's files carry


WAV_CASES: dict[str, WavCase] = {
    "pcm16_mono_44k_list": WavCase(44100, 1, "pcm", 16, extra_chunk=True),  # ruEnvAQA, ruTiE-Audio
    "pcm24_mono_48k": WavCase(48000, 1, "pcm", 24),  # AQUARIA
    "pcm16_stereo_44k": WavCase(44100, 2, "pcm", 16),
    "pcm24_stereo_48k": WavCase(48000, 2, "pcm", 24),
    "pcm16_6ch_48k": WavCase(48000, 6, "pcm", 16),
    "pcm8_mono_8k": WavCase(8000, 1, "pcm", 8),
    "pcm32_stereo_96k": WavCase(96000, 2, "pcm", 32),
    "float32_stereo_48k": WavCase(48000, 2, "float", 32),
    "float64_mono_22k": WavCase(22050, 1, "float", 64),
}
FILE_CASES = ("flac16_stereo_44k.flac", "flac24_mono_48k.flac", "mp3_stereo_44k.mp3", "vorbis_stereo_48k.ogg",
              "opus_mono_48k.ogg")


def _lcg(n: int, seed: int) -> np.ndarray:
    """n pseudo-random uint32 values (Numerical Recipes' LCG): the same on every platform and numpy."""
    out = np.empty(n, np.uint64)
    x = seed & 0xFFFFFFFF
    for i in range(n):
        x = (1664525 * x + 1013904223) & 0xFFFFFFFF
        out[i] = x
    return out


def int_samples(frames: int, channels: int, bits: int, seed: int = 1) -> np.ndarray:
    """[frames, channels] signed integers spanning the full range of `bits`: a loud triangle wave per channel
    plus noise, with the extremes and the values next to them present (where float rounding shows)."""
    full = (1 << (bits - 1)) - 1
    t = np.arange(frames, dtype=np.int64)
    out = np.empty((frames, channels), np.int64)
    for c in range(channels):
        period = 97 + 31 * c
        tri = np.abs((t * 4 * full // period) % (4 * full) - 2 * full) - full  # -full..full
        noise = (_lcg(frames, seed + c).astype(np.int64) % (2 * full + 1)) - full
        out[:, c] = np.clip((tri * 3 + noise) // 4, -full - 1, full)
    out[:8, 0] = [full, -full - 1, full - 1, -full, 0, 1, -1, full // 2 + 2]
    return out


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def wav_bytes(case: WavCase, frames: int = FRAMES) -> bytes:
    ints = int_samples(frames, case.channels, 24 if case.kind == "float" else case.bits)
    if case.kind == "float":
        data = (ints / float(1 << 23)).astype("<f4" if case.bits == 32 else "<f8").tobytes()
        tag = 3
    elif case.bits == 8:
        data = (ints + 128).astype(np.uint8).tobytes()
        tag = 1
    elif case.bits == 24:
        u = ints.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3]
        data = u.tobytes()
        tag = 1
    else:
        data = ints.astype(f"<i{case.bits // 8}").tobytes()
        tag = 1
    block = case.channels * case.bits // 8
    if case.channels > 2:  # WAVE_FORMAT_EXTENSIBLE, as multi-channel files are written
        mask = {6: 0x3F}.get(case.channels, (1 << case.channels) - 1)
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, case.channels, case.rate, case.rate * block, block, case.bits,
                          22, case.bits, mask) + guid
    else:
        fmt = struct.pack("<HHIIHH", tag, case.channels, case.rate, case.rate * block, block, case.bits)
    body = b"WAVE" + _chunk(b"fmt ", fmt)
    if case.extra_chunk:
        body += _chunk(b"LIST", b"INFO" + _chunk(b"ISFT", b"mera-multi tests\0"))
    body += _chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def case_bytes(name: str) -> bytes:
    if name in WAV_CASES:
        return wav_bytes(WAV_CASES[name])
    return (FIXTURES / "audio" / name).read_bytes()


def all_cases() -> list[str]:
    return [*WAV_CASES, *FILE_CASES]


def golden() -> dict:
    return json.loads((FIXTURES / "golden_audio.json").read_text())
