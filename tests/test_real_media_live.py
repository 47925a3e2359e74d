"""Real-world media end to end on the CPU dev server (tiny Gemma-4, guard on): audio at every rate, width
and channel count through both audio part kinds, and `mera-eval run` over all 18 tasks with the media the
real datasets hold (phone photos with EXIF/ICC, RGBA PNGs, table screenshots, 8-96 kHz WAVs, 30-60 s
H.264/HEVC videos) and each sending option: 0 errors. (The plain run is
tests/test_run_e2e.py::test_every_task_completes_on_the_dev_server, on the same snapshot.)"""

from __future__ import annotations

import base64
import json

import pytest

from evaluator import synthetic_media as sm
from evaluator.registry import TASKS
from evaluator.store import RunStore
from tests.media_factory import data_url
from tests.test_run_e2e import mera_eval

pytestmark = pytest.mark.server

MATRIX = sm.audio_matrix(seconds=2.0)


def audio_parts(wav: bytes) -> dict[str, dict]:
    return {"audio_url": {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", wav)}},
            "input_audio": {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(),
                                                                   "format": "wav"}}}  # fmt: skip


def prompt_tokens(server, part: dict) -> int:
    reply = server.client().chat.completions.create(
        model=server.model, max_tokens=1, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Послушай."}, part]}],
    )  # fmt: skip
    return reply.usage.prompt_tokens


@pytest.fixture(scope="module")
def baseline_tokens(dev_server) -> int:
    """Prompt tokens of the same 2 s clip at the model's own rate (16 kHz mono 16-bit): nothing to convert."""
    wav = sm.render(sm.AudioSpec(rate=16000, seconds=2.0))
    return prompt_tokens(dev_server, audio_parts(wav)["audio_url"])


@pytest.mark.parametrize("spec", MATRIX, ids=lambda s: f"{s.rate}Hz-{s.subtype}-{s.channels}ch")
def test_every_rate_width_and_channel_count_is_answered(dev_server, baseline_tokens, spec):
    wav = sm.render(spec)
    for kind, part in audio_parts(wav).items():
        # 200 (the SDK raises on anything else) with the 16 kHz clip's token count: resampled to the same
        # 2 s, channels mixed down, whatever the source rate, width and layout.
        assert prompt_tokens(dev_server, part) == baseline_tokens, kind


def run_all_tasks(server, data_dir, out, *options: str, concurrency: int = 8):
    result = mera_eval("run", "--endpoint", server.base_url, "--api-key", server.api_key, "--data-dir", data_dir,
                       "--output", out, "--max-tokens", "2", "--concurrency", str(concurrency), "--rutie-history", "2",
                       *options, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    store = RunStore.open_existing(out)
    replies = list(store.replies())
    assert {r.task for r in replies} == set(TASKS)
    assert len(replies) == len(list(store.expected()))
    failed = [(r.sample_key, r.status, r.error) for r in replies if r.status != "ok"]
    assert not failed
    return replies, json.loads((out / "run.json").read_text())


def test_all_tasks_with_input_audio_and_images_resized(dev_server, sample_data_dir, tmp_path):
    replies, config = run_all_tasks(dev_server, sample_data_dir, tmp_path / "run", "--audio-part", "input_audio",
                                    "--image-max-side", "512")
    assert config["media"]["audio_part"] == "input_audio" and config["media"]["image_max_side"] == 512
    assert all(r.prompt_tokens for r in replies)


# The full 30-60 s 720p/1080p clips: `--video-frames` decodes only up to the chosen frames and keeps
# only those (evaluator/media.py), so this is bounded by the clips' bytes, not their length.
def test_all_tasks_with_video_sent_as_six_frames(dev_server, sample_data_dir, tmp_path):
    replies, config = run_all_tasks(dev_server, sample_data_dir, tmp_path / "run", "--video-frames", "6",
                                    concurrency=8)
    assert config["media"]["video_frames"] == 6
    videos = [r for r in replies if TASKS[r.task].modality == "video"]
    assert videos and all(r.prompt_tokens > 6 * 250 for r in videos)  # six images of ~280 soft tokens each
