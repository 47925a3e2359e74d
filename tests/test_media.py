"""Media encodings as MERA's `load_media.py` (LOAD_BASE64=1) sends them, and the optional transforms."""

from __future__ import annotations

import base64
import hashlib
import io

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from evaluator import media
from evaluator.schema import AudioMedia, ImageMedia, VideoMedia
from tests.media_factory import image_bytes, video_bytes


def payload(url: str) -> bytes:
    head, data = url.split(",", 1)
    assert head.endswith(";base64")
    return base64.b64decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_is_sent_as_stored_and_labelled_png(fmt):
    data = image_bytes(fmt)
    (part,) = media.encode_media(ImageMedia(data))
    assert part["type"] == "image_url"
    assert part["image_url"]["url"].startswith("data:image/png;base64,")  # MERA labels JPEGs png as well
    assert payload(part["image_url"]["url"]) == data


def test_audio_becomes_16_bit_wav_at_its_own_rate_mixed_to_mono_unless_stored():
    rng = np.random.default_rng(0)
    mono = AudioMedia((0.5 * rng.standard_normal(8000)).clip(-1, 1).astype(np.float32), 8000)
    stereo = AudioMedia((0.5 * rng.standard_normal((2, 4410))).clip(-1, 1).astype(np.float32), 44100)
    for item, channels, expected in ((mono, "mono", mono.array), (stereo, "mono", stereo.array.mean(axis=0)),
                                     (stereo, "stored", stereo.array.T)):
        (part,) = media.encode_media(item, audio_channels=channels)
        assert part["type"] == "audio_url" and part["audio_url"]["url"].startswith("data:audio/wav;base64,")
        wav = payload(part["audio_url"]["url"])
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        assert soundfile.info(io.BytesIO(wav)).subtype == "PCM_16"  # soundfile's default, as MERA's sf.write
        back, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        assert rate == item.rate and back.shape == expected.shape
        assert np.abs(back - expected).max() < 1e-4


def test_input_audio_option():
    item = AudioMedia(np.zeros(160, np.float32), 16000)
    (part,) = media.encode_media(item, audio_kind="input_audio")
    assert set(part) == {"type", "input_audio"} and part["input_audio"]["format"] == "wav"
    assert base64.b64decode(part["input_audio"]["data"]) == media.wav_bytes(item)


def test_video_is_sent_as_stored_container_bytes():
    data = video_bytes()
    (part,) = media.encode_media(VideoMedia(data))
    assert part["type"] == "video_url" and part["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert payload(part["video_url"]["url"]) == data


@pytest.mark.parametrize(
    "size, expected",
    [((300, 200), (100, 66)), ((200, 300), (66, 100)), ((400, 400), (100, 100)), ((80, 60), (80, 60))],
)
def test_resize_as_the_fork_resize_image(size, expected):
    # lm_eval/models/utils.py resize_image: the long side to max, the other int()-truncated; never upscale.
    out = media.resize_image_bytes(image_bytes("JPEG", size=size), 100)
    image = Image.open(io.BytesIO(out))
    assert image.format == "PNG" and image.size == expected and image.mode == "RGB"


def test_image_max_side_option_resizes_only_big_images():
    small = image_bytes("PNG", size=(50, 40))
    (part,) = media.encode_media(ImageMedia(small), image_max_side=64)
    assert Image.open(io.BytesIO(payload(part["image_url"]["url"]))).size == (50, 40)
    big = image_bytes("JPEG", size=(640, 320))
    (part,) = media.encode_media(ImageMedia(big), image_max_side=64)
    assert Image.open(io.BytesIO(payload(part["image_url"]["url"]))).size == (64, 32)


def frame_levels(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as c:
        return [int(f.to_ndarray(format="gray").mean()) for f in c.decode(video=0)]


@pytest.mark.parametrize(("total", "count", "expected"), [
    (8, 3, [0, 2, 5]),  # np.arange(0, 8, 8/3).astype(int)
    (150, 8, [0, 18, 37, 56, 75, 93, 112, 131]),  # a 5 s 30 fps clip: the last frame is not taken
    (17, 7, [0, 2, 4, 7, 9, 12, 14]),  # arange's float step gives 8 here; cut to the 7 asked for
    (2, 3, [0, 0, 1]),  # a clip shorter than N repeats frames: always N images
    (5, 5, [0, 1, 2, 3, 4]),
])
def test_frame_indices_are_the_forks_uniform_sampler(total, count, expected):
    assert media.frame_indices(total, count) == expected
    assert media.frame_indices(total, count) == [int(i) for i in np.arange(0, total, total / count).astype(int)][:count]


def test_frame_indices_always_give_the_count_asked_for():
    assert all(len(media.frame_indices(t, n)) == n for t in range(1, 400) for n in range(1, 33))
    assert media.frame_indices(0, 4) == [] and media.frame_indices(10, 0) == []


def test_video_frames_are_the_chosen_frames_as_png():
    data = video_bytes(frames=8)  # frame i is a flat grey level 30*i
    levels = frame_levels(data)
    assert media.count_video_frames(data) == len(levels) == 8
    parts = media.encode_media(VideoMedia(data), video_frames=3)
    assert [p["type"] for p in parts] == ["image_url"] * 3
    images = [Image.open(io.BytesIO(payload(p["image_url"]["url"]))) for p in parts]
    assert all(i.format == "PNG" and i.mode == "RGB" for i in images)
    got = [int(np.asarray(i.convert("L")).mean()) for i in images]
    assert got == pytest.approx([levels[i] for i in media.frame_indices(8, 3)], abs=2)
    assert len(media.encode_media(VideoMedia(data), video_frames=50)) == 50  # N asked, N sent (frames repeat)


def test_video_frames_stop_decoding_after_the_last_chosen_frame(monkeypatch):
    data = video_bytes(frames=40)
    seen, pngs = [], []
    real_frames, real_png = media.decoded_frames, media._png

    def counting_frames(blob):
        for frame in real_frames(blob):
            seen.append(frame)
            yield frame

    monkeypatch.setattr(media, "decoded_frames", counting_frames)
    monkeypatch.setattr(media, "_png", lambda frame: pngs.append(1) or real_png(frame))
    frames = media.video_frames_png(data, 4)
    assert media.frame_indices(40, 4) == [0, 10, 20, 30]
    assert len(frames) == 4 and len(pngs) == 4  # only the chosen frames become images
    assert len(seen) == 31  # decoding stopped at frame 30, the last chosen one


def test_broken_video_raises_for_frame_sampling():
    with pytest.raises(av.error.FFmpegError):
        media.video_frames_png(b"not a video", 2)


def test_strip_media_replaces_every_payload_by_its_hash():
    wav = media.wav_bytes(AudioMedia(np.zeros(160, np.float32), 16000))
    png = image_bytes()
    parts = [
        {"type": "text", "text": "data: not a url"},
        media.image_part(png),
        media.audio_part(wav),
        media.audio_part(wav, "input_audio"),
        media.video_part(b"mp4"),
    ]
    stripped = media.strip_media(parts)
    text = repr(stripped)
    assert media.b64(png) not in text and media.b64(wav) not in text
    assert stripped[0] == parts[0]
    b64_png = media.b64(png)
    assert stripped[1]["image_url"]["url"] == "data:image/png;sha256:" + hashlib.sha256(b64_png.encode()).hexdigest()
    assert stripped[3]["input_audio"]["format"] == "wav" and stripped[3]["input_audio"]["data"].startswith("sha256:")
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")  # the original is untouched
