"""Session fixtures: one real dev server (tiny Gemma-4 on vLLM CPU, guard on, API key set) and
one real judge server (tiny classifier), started on first use and stopped at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_process import PROJECT_ROOT, start_server

# Short slow-client deadlines, so the guard's live tests see them pass in seconds, not minutes.
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 5, 30
DEV_ARGS = ["--dev", "--guard.header-timeout-s", str(HEADER_TIMEOUT_S), "--guard.body-timeout-s", str(BODY_TIMEOUT_S)]


@pytest.fixture(scope="session")
def dev_server():
    server = start_server(DEV_ARGS)
    server.model_dir = PROJECT_ROOT / ".cache" / "mera-multi" / "tiny-gemma4"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def judge_server():
    server = start_server(["--judge", "--dev"])
    server.model_dir = PROJECT_ROOT / ".cache" / "mera-multi" / "tiny-judge"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    """The bundled synthetic MERA Multi snapshot (every task, both splits), generated once."""
    from evaluator.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("sample-data"))
