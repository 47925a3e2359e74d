"""The server's per-request media limits (--mm-limits) checked on our side: a run whose every request would
exceed them is refused before anything is sent; a sample over them is recorded with the reason, not sent."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from evaluator.client import RetryPolicy
from evaluator.data import DataSource
from evaluator.limits import MediaLimitError, check_run, sample_counts, sample_problem
from evaluator.registry import resolve_tasks
from evaluator.requests import RequestOptions
from evaluator.runner import RunConfig, run
from evaluator.schema import AudioMedia, GenerationParams, ImageMedia, Sample, VideoMedia
from evaluator.store import RunStore
from tests.faults import FaultServer
from tests.server_process import child_env

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.05, max_downtime_s=30)
LIMITS = {"image": 6, "audio": 6, "video": 1}


def test_video_frames_over_the_image_limit_refuse_the_run_with_both_numbers_and_the_fix():
    with pytest.raises(MediaLimitError) as err:
        check_run(resolve_tasks(["video"]), RequestOptions(video_frames=8), LIMITS)
    line = err.value.one_line()
    assert "\n" not in line and err.value.exit_code == 2
    assert "--video-frames 8" in line and "at most 6 images per request" in line
    assert "use --video-frames 6 or raise the server's limit_mm_per_prompt" in line


def test_settings_within_the_limits_pass():
    check_run(resolve_tasks(["video"]), RequestOptions(video_frames=6), LIMITS)
    check_run(resolve_tasks(["image", "audio"]), RequestOptions(video_frames=8), LIMITS)  # no video task
    check_run(resolve_tasks(None), RequestOptions(), LIMITS)


def test_a_kind_the_server_does_not_accept_at_all_refuses_the_tasks_that_need_it():
    with pytest.raises(MediaLimitError, match=r"ruEnvAQA sends 1 audio item\(s\) per request but the server "
                                              r"accepts at most 0"):
        check_run(resolve_tasks(["audio"]), RequestOptions(), {"audio": 0})
    # ruTiE's turns are checked one by one (text-only turns, history): never refused up front
    check_run(resolve_tasks(["ruTiE-Image"]), RequestOptions(), {"image": 0})


def sample(task: str, **media) -> Sample:
    return Sample(task=task, split="test", index=0, id=7, instruction="", inputs={}, media=media)


def test_counts_are_known_before_encoding():
    wav = AudioMedia(np.zeros(16, np.float32), 16000)
    assert sample_counts(sample("AQUARIA", audio_1=wav, audio_2=wav), RequestOptions()) == {"audio": 2}
    video = sample("CommonVideoQA", video=VideoMedia(b"not decoded"))
    assert sample_counts(video, RequestOptions()) == {"video": 1}
    assert sample_counts(video, RequestOptions(video_frames=4)) == {"image": 4}
    assert sample_counts(sample("WEIRD", image=ImageMedia(b"x")), RequestOptions()) == {"image": 1}


def test_a_sample_over_a_limit_gets_a_one_line_reason_with_the_fix():
    wav = AudioMedia(np.zeros(16, np.float32), 16000)
    two_clips = sample("AQUARIA", audio_1=wav, audio_2=wav)
    assert sample_problem(two_clips, RequestOptions(), LIMITS) is None
    problem = sample_problem(two_clips, RequestOptions(), {"audio": 1})
    assert problem == ("2 audio items but the server admits 1 per request; raise the server's limit_mm_per_prompt "
                       "(mera-serve --limit-mm-per-prompt) and pass it as --mm-limits")
    video = sample("CommonVideoQA", video=VideoMedia(b"x"))
    problem = sample_problem(video, RequestOptions(video_frames=8), LIMITS)
    assert problem.startswith("8 image items but the server admits 6 per request (--video-frames 8); "
                              "use --video-frames 6 or raise")


async def test_run_refused_before_anything_is_sent(sample_data_dir, tmp_path):
    with FaultServer() as server:
        config = RunConfig(endpoints=[server.base_url], output=tmp_path / "run", tasks=["CommonVideoQA"],
                           source=DataSource(data_dir=sample_data_dir), retry=FAST,
                           options=RequestOptions(params=GenerationParams(model="m"), video_frames=8))
        with pytest.raises(MediaLimitError):
            await run(config)
        assert server.chat_requests == 0 and server.health_checks == 0
    assert not (tmp_path / "run").exists()  # not even the store


async def test_samples_over_a_limit_are_recorded_and_the_rest_is_sent(sample_data_dir, tmp_path):
    # The sample data's AQUARIA has samples with one clip and with two; a server that takes one clip per request.
    with FaultServer() as server:
        config = RunConfig(endpoints=[server.base_url], output=tmp_path / "run", tasks=["AQUARIA"],
                           source=DataSource(data_dir=sample_data_dir), retry=FAST, mm_limits={"audio": 1},
                           options=RequestOptions(params=GenerationParams(model="m")))
        summary = await run(config)
        sent = server.chat_requests
    store = RunStore.open_existing(tmp_path / "run")
    refused = list(store.replies(status="not_sent"))
    store.close()
    assert refused and sent == summary.total - len(refused) and sent > 0
    for reply in refused:
        assert reply.http_status is None and reply.request_digest is None  # never built, never sent
        assert "2 audio items but the server admits 1 per request" in reply.error
        assert "limit_mm_per_prompt" in reply.error
    assert summary.errors == len(refused)


def test_cli_refuses_in_one_line_without_contacting_the_endpoint(tmp_path):
    with FaultServer() as server:
        proc = subprocess.run(
            [sys.executable, "-m", "evaluator.cli", "run", "--endpoint", server.base_url, "--output",
             str(tmp_path / "run"), "--tasks", "video", "--video-frames", "8"],
            capture_output=True, text=True, env=child_env(), timeout=120,
        )  # fmt: skip
        assert server.chat_requests == 0 and server.health_checks == 0
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["mera-eval run: --video-frames 8 sends 8 images per video request but the server accepts at "
                     "most 6 images per request (--mm-limits); use --video-frames 6 or raise the server's "
                     "limit_mm_per_prompt (mera-serve --limit-mm-per-prompt) and pass it as --mm-limits"]
    assert "Traceback" not in proc.stderr
