"""Audio exactly as MERA's official path turns a stored clip into the WAV it sends.

The official path (docs/fidelity.md): the hub stores each clip's original file bytes (`datasets.Audio()`);
lm-eval reads the split with `datasets` >= 4, whose `Audio()` decodes with torchcodec, i.e. FFmpeg, into
float32 planar samples at the stored rate; `audio["array"]` is their mean over channels (mono); then
`load_media.get_audio` writes that array with `soundfile.write(buffer, array, rate, format="WAV")`, whose
default subtype is 16-bit PCM.

Here FFmpeg comes through PyAV, converted to float32 planar by libswresample as torchcodec does, and the mix
is the same numpy expression on the same memory layout, so the bytes agree bit for bit (the golden digests in
tests/fixtures/golden_audio.json). `channels="stored"` keeps every channel instead (not the official path).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

from evaluator.schema import AudioMedia

AudioChannels = Literal["mono", "stored"]


def decode(data: bytes) -> AudioMedia:
    """Stored audio bytes (any container/codec FFmpeg reads) -> float32 (channels, samples) at the stored rate."""
    import av

    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = None
        for frame in container.decode(stream):
            if frame.format.name == "fltp":
                chunks.append(frame.to_ndarray())
                continue
            if resampler is None:  # format conversion only (same layout and rate), as torchcodec's swr
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        rate = stream.rate
    if not chunks:
        raise ValueError("no decodable audio")
    return AudioMedia(np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), int(rate))


def mono_mix(array: np.ndarray) -> np.ndarray:
    """`datasets`' AudioDecoder["array"]: the mean over the channel axis of the (channels, samples) array.
    Same expression, same layout: the float32 sums run in the same order, so the result is bit-identical."""
    y = np.ascontiguousarray(array)
    return np.mean(y, axis=tuple(range(y.ndim - 1))) if y.ndim > 1 else y


def wav_bytes(audio: AudioMedia, channels: AudioChannels = "mono") -> bytes:
    """The WAV that is sent: `soundfile.write(..., format="WAV")` (16-bit PCM) of the mono mix (official)
    or of every channel as stored."""
    import soundfile

    if channels == "mono":
        samples = mono_mix(audio.array)
    else:
        samples = np.ascontiguousarray(audio.array.T) if audio.array.ndim > 1 else audio.array
    out = io.BytesIO()
    soundfile.write(out, samples, audio.rate, format="WAV")
    return out.getvalue()
