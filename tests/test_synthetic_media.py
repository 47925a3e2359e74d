"""The test-media generator: real-world properties, the same bytes for the same spec, a cache that renders
each file once."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from evaluator import synthetic_media as sm

SMALL_VIDEOS = [sm.VideoSpec(codec="h264", width=320, height=240, fps=10, seconds=1.0, audio=True),
                sm.VideoSpec(codec="hevc", width=320, height=240, fps=10, seconds=1.0)]


@pytest.mark.parametrize("spec", [
    sm.ImageSpec(content="photo", width=640, height=480, format="JPEG", exif_orientation=6, icc_profile=True),
    sm.ImageSpec(content="table", width=731, height=482, format="PNG", mode="RGBA"),
    sm.AudioSpec(rate=44100, seconds=1.0, extra_chunk=True),
    sm.AudioSpec(rate=22050, seconds=0.5, subtype="FLOAT", channels=6, format="WAV"),
    *SMALL_VIDEOS,
], ids=lambda s: s.cache_name())  # fmt: skip
def test_same_spec_same_bytes_other_variant_other_bytes(spec):
    first = sm.render(spec)
    assert sm.render(spec) == first
    assert sm.render(spec.model_copy(update={"variant": 1})) != first


def test_phone_photo_keeps_exif_orientation_and_icc_profile():
    spec = sm.PHONE_PHOTO.model_copy(update={"width": 403, "height": 302})  # same options, fewer pixels
    image = Image.open(io.BytesIO(sm.render(spec)))
    assert image.format == "JPEG" and image.size == (403, 302)
    assert image.getexif()[0x0112] == 6
    assert image.info["icc_profile"].startswith(b"\x00\x00") and b"acsp" in image.info["icc_profile"][:64]


def test_rgba_png_has_transparency():
    image = Image.open(io.BytesIO(sm.render(sm.TABLE_RGBA)))
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (731, 482))
    alpha = np.asarray(image)[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255  # transparent margin, opaque table


@pytest.mark.parametrize("rate, subtype, channels", [(8000, "PCM_16", 2), (48000, "PCM_24", 1), (96000, "FLOAT", 6)])
def test_wav_rate_width_and_channels(rate, subtype, channels):
    data = sm.render(sm.AudioSpec(rate=rate, seconds=0.5, subtype=subtype, channels=channels))
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.subtype, info.channels, info.frames) == (rate, subtype, channels, rate // 2)
    array, _ = soundfile.read(io.BytesIO(data), always_2d=True)
    assert 0.29 < np.abs(array[:, 0]).max() <= 0.31  # speech-like level, not clipped
    if channels > 1:
        assert not np.allclose(array[:, 0], array[:, 1])  # a mix-down differs from the first channel


def test_extra_riff_chunk_is_there_and_the_audio_unchanged():
    plain = sm.render(sm.AudioSpec(rate=44100, seconds=1.0))
    tagged = sm.render(sm.AudioSpec(rate=44100, seconds=1.0, extra_chunk=True))
    assert b"LIST" not in plain and tagged.index(b"LIST") < tagged.index(b"data")
    assert int.from_bytes(tagged[4:8], "little") == len(tagged) - 8  # RIFF size fixed up
    a, _ = soundfile.read(io.BytesIO(plain))
    b, _ = soundfile.read(io.BytesIO(tagged))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("spec", SMALL_VIDEOS, ids=["h264-mp4-audio", "hevc-mov"])
def test_video_codec_container_tag_and_tracks(spec):
    with av.open(io.BytesIO(sm.render(spec))) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == spec.codec
        assert (video.codec_context.width, video.codec_context.height) == (320, 240)
        assert len(list(container.decode(video=0))) == 10
        assert bool(container.streams.audio) == spec.audio
        if spec.codec == "hevc":
            assert video.codec_tag == "hvc1" and "mov" in container.format.name


def test_real_catalogues_cover_what_the_datasets_hold():
    assert {(v.codec, v.height) for v in sm.VIDEOS} == {("h264", 720), ("h264", 1080), ("hevc", 720), ("hevc", 1080)}
    assert {v.audio for v in sm.VIDEOS} == {True, False} and all(30 <= v.seconds <= 60 for v in sm.VIDEOS)
    audio = [*sm.AQUARIA_AUDIO, *sm.ENVAQA_AUDIO, *sm.RUTIE_AUDIO, *sm.OTHER_AUDIO]
    assert {a.rate for a in audio} == set(sm.AUDIO_RATES)
    assert {a.subtype for a in audio} == set(sm.AUDIO_SUBTYPES) and {a.channels for a in audio} == {1, 2, 6}
    assert any(20 <= a.seconds <= 30 for a in audio)
    assert len(set(sm.audio_matrix())) == len(sm.AUDIO_RATES) * len(sm.AUDIO_SUBTYPES) * len(sm.AUDIO_CHANNELS)


def test_cache_renders_each_spec_once(tmp_path, monkeypatch):
    cache = sm.MediaCache(tmp_path)
    spec = sm.AudioSpec(rate=16000, seconds=0.25)
    calls = []
    real_render = sm.render
    monkeypatch.setattr(sm, "render", lambda s: calls.append(s) or real_render(s))
    first = cache.bytes(spec)
    assert cache.bytes(spec) == first and sm.MediaCache(tmp_path).bytes(spec) == first
    assert calls == [spec]
    assert [p.name for p in tmp_path.iterdir()] == [spec.cache_name()]  # no temporary files left
    assert spec.model_copy(update={"variant": 1}).cache_name() != spec.cache_name()
    old_name = spec.cache_name()
    monkeypatch.setitem(sm.RENDERER_VERSIONS, "audio", "changed")  # a changed renderer renders anew
    assert cache.path(spec).name != old_name and len(calls) == 2


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MERA_MEDIA_CACHE", str(tmp_path / "m"))
    assert sm.default_cache_dir() == tmp_path / "m"
    monkeypatch.delenv("MERA_MEDIA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert sm.default_cache_dir() == tmp_path / "x" / "mera-multi" / "media"
