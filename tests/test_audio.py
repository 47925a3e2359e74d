"""Audio as MERA's official path sends it, checked against golden bytes that path produced.

tests/fixtures/golden_audio.json was computed once in a scratch venv with the official libraries
(`datasets` 4.4.1 -> torchcodec/FFmpeg decode, mono mean; `soundfile.write(..., format="WAV")` as
`load_media.get_audio`); see tests/golden_audio.py for the inputs and docs/fidelity.md for the reasoning.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys

import numpy as np
import pytest
import soundfile

from evaluator import audio
from evaluator.data import row_to_sample
from evaluator.registry import TASKS
from evaluator.requests import RequestOptions, SampleError, build_request
from evaluator.runner import RunConfig
from tests.golden_audio import FIXTURES, all_cases, case_bytes, golden

GOLDEN = golden()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", all_cases())
def test_inputs_are_the_ones_the_golden_digests_were_made_from(name):
    assert sha(case_bytes(name)) == GOLDEN["cases"][name]["input_sha256"]


@pytest.mark.parametrize("name", [n for n in all_cases() if GOLDEN["cases"][n]["exact"]])
def test_official_wav_bit_for_bit(name):
    decoded = audio.decode(case_bytes(name))
    case = GOLDEN["cases"][name]
    assert decoded.rate == case["rate"]
    assert decoded.array.dtype == np.float32 and decoded.array.shape[1] == case["samples"]
    assert sha(audio.wav_bytes(decoded)) == case["official_sha256"]


@pytest.mark.parametrize("name", [n for n in all_cases() if not GOLDEN["cases"][n]["exact"]])
def test_float_codecs_within_one_lsb_of_the_official_wav(name):
    # Vorbis and Opus decode in floating point: FFmpeg builds differ in the last float bit, so the official
    # bytes themselves depend on which FFmpeg torchcodec loaded. Ours stay within 1 LSB of 16-bit.
    case = GOLDEN["cases"][name]
    official, rate = soundfile.read(FIXTURES / "audio" / case["official_wav"], dtype="int16")
    assert sha((FIXTURES / "audio" / case["official_wav"]).read_bytes()) == case["official_sha256"]
    ours, our_rate = soundfile.read(io.BytesIO(audio.wav_bytes(audio.decode(case_bytes(name)))), dtype="int16")
    assert our_rate == rate == case["rate"] and ours.shape == official.shape
    diff = np.abs(ours.astype(int) - official)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005


def test_stored_channels_keep_every_channel():
    stereo = audio.decode(case_bytes("pcm24_stereo_48k"))
    assert stereo.array.shape == (2, 4096)
    wav = audio.wav_bytes(stereo, channels="stored")
    back, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 48000 and back.shape == (4096, 2)
    mono, _ = soundfile.read(io.BytesIO(audio.wav_bytes(stereo)), dtype="int16")
    assert mono.shape == (4096,)
    assert not np.array_equal(back[:, 0], back[:, 1])  # the channels differ, and both were kept
    # a mono source is the same either way
    one = audio.decode(case_bytes("pcm16_mono_44k_list"))
    assert audio.wav_bytes(one, channels="stored") == audio.wav_bytes(one)


def test_the_request_carries_the_official_wav_and_the_option_is_recorded():
    data = case_bytes("pcm16_stereo_44k")
    row = {"instruction": "<audio>{question}", "inputs": {"audio": {"bytes": data, "path": "a.wav"}, "question": "?"},
           "outputs": "", "meta": {"id": 1}}
    sample = row_to_sample(TASKS["ruEnvAQA"], row, split="test", domain=None, index=0)
    part = build_request(sample, RequestOptions()).messages[0]["content"][0]
    wav = base64.b64decode(part["audio_url"]["url"].split(",", 1)[1])
    assert sha(wav) == GOLDEN["cases"]["pcm16_stereo_44k"]["official_sha256"]
    stored = build_request(sample, RequestOptions(audio_channels="stored"))
    assert stored.digest != build_request(sample, RequestOptions()).digest
    a = RunConfig(endpoints=["http://x"], output="o").identity()
    b = RunConfig(endpoints=["http://x"], output="o", options=RequestOptions(audio_channels="stored")).identity()
    assert a["media"]["audio_channels"] == "mono" and b["media"]["audio_channels"] == "stored" and a != b


def test_broken_audio_names_the_sample_and_makes_no_request():
    row = {"instruction": "<audio>", "inputs": {"audio": {"bytes": b"RIFF\0\0\0\0WAVEjunk", "path": "x.wav"}},
           "meta": {"id": 3}}
    sample = row_to_sample(TASKS["ruEnvAQA"], row, split="test", domain=None, index=0)
    assert sample.media == {} and sample.problem.startswith("ruEnvAQA/-/test row 0 (id 3): cannot decode audio")
    with pytest.raises(SampleError, match=r"cannot decode audio"):
        build_request(sample, RequestOptions())


def test_decoding_needs_no_librosa(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)  # import librosa -> ImportError
    assert audio.decode(case_bytes("mp3_stereo_44k.mp3")).array.shape[0] == 2
