"""Session fixtures: one real dev server (tiny Gemma-4 on vLLM CPU, guard on, API key set) and
one real judge server (tiny classifier), started on first use and stopped at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.server_process import DEV_CACHE, PROJECT_ROOT, start_server

# Short slow-client deadlines, so the guard's live tests see them pass in seconds, not minutes.
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 5, 30
DEV_ARGS = ["--dev", "--guard.header-timeout-s", str(HEADER_TIMEOUT_S), "--guard.body-timeout-s", str(BODY_TIMEOUT_S)]

# Generated test media (evaluator/synthetic_media.py) are cached inside the work tree, for this process
# and the mera-eval/mera-serve processes the tests start; the first session renders them (minutes), later
# ones reuse them.
MEDIA_CACHE = Path(os.environ.setdefault("MERA_MEDIA_CACHE", str(PROJECT_ROOT / ".cache" / "mera-multi" / "media")))


@pytest.fixture(scope="session")
def dev_server():
    server = start_server(DEV_ARGS)
    server.model_dir = DEV_CACHE / "tiny-gemma4"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def judge_server():
    server = start_server(["--judge", "--dev"])
    server.model_dir = DEV_CACHE / "tiny-judge"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def media_cache():
    from evaluator.synthetic_media import MediaCache

    return MediaCache(MEDIA_CACHE)


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory, media_cache) -> Path:
    """The bundled synthetic MERA Multi snapshot (every task, both splits, real-world media), written once."""
    from evaluator.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("sample-data"), cache=media_cache)


@pytest.fixture(scope="session")
def short_video_data_dir(tmp_path_factory, media_cache) -> Path:
    """The same snapshot with every video cut to 5 s (same codecs and sizes), for runs that decode frames."""
    from evaluator.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("sample-data-short-video"), cache=media_cache, video_seconds=5)
