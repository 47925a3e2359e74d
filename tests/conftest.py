"""Session fixtures: one real dev server (tiny Gemma-4 on vLLM CPU, guard on, API key set) and
one real judge server (tiny classifier), started on first use and stopped at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_process import DEV_CACHE, start_server

DEV_ARGS = ["--dev"]


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
def sample_data_dir(tmp_path_factory) -> Path:
    """The bundled synthetic MERA Multi snapshot (every task, both splits), generated once."""
    from evaluator.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("sample-data"))
