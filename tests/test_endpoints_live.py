"""Endpoint handling as a user meets it, against the real vLLM dev server (tiny Gemma-4, guard on, key set)
and with the real `mera-eval` command: a path-prefix gateway without /health, https against plain http, a
wrong key with --model; and, needing no server, a closed port waited for with messages, a URL without a
scheme, a task typo with a dead endpoint."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from evaluator.store import RunStore
from tests.gateway import PrefixGateway
from tests.server_process import PROJECT_ROOT, child_env, free_port


def mera_eval(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


# --- against the dev server ---------------------------------------------------------------------------------
@pytest.mark.server
def test_a_path_prefix_gateway_without_health_runs_to_the_end(dev_server, sample_data_dir, tmp_path):
    with PrefixGateway(dev_server.base_url) as gateway:
        result = mera_eval("run", "--endpoint", gateway.base_url, "--api-key", dev_server.api_key, "--data-dir",
                           sample_data_dir, "--output", tmp_path / "run", "--tasks", "WEIRD", "ruEnvAQA",
                           "--limit", "2", "--max-tokens", "4")
        assert result.returncode == 0, result.stderr[-3000:]
        # it never asked for a /health the gateway does not have; the one route it lacks that was asked for is
        # vLLM's /metrics (--concurrency auto), and its absence gives the default
        assert gateway.not_found == ["/openai/metrics"]
        assert "concurrency 64 (auto: no vLLM /metrics; --concurrency overrides)" in result.stderr
    replies = list(RunStore.open_existing(tmp_path / "run").replies())
    assert len(replies) == 4 and all(r.status == "ok" for r in replies)
    assert {r.endpoint for r in replies} == {gateway.base_url.removesuffix("/v1")}


@pytest.mark.server
def test_https_against_the_plain_http_server_ends_at_once_saying_use_http(dev_server, sample_data_dir, tmp_path):
    started = time.monotonic()
    result = mera_eval("run", "--endpoint", dev_server.base_url.replace("http://", "https://"), "--api-key",
                       dev_server.api_key, "--data-dir", sample_data_dir, "--output", tmp_path / "run", "--tasks",
                       "WEIRD")
    assert result.returncode == 2 and time.monotonic() - started < 30
    line = last_line(result)
    assert "TLS handshake failed" in line and "use http:// instead of https://" in line


@pytest.mark.server
def test_a_wrong_key_with_model_stops_after_the_first_401(dev_server, sample_data_dir, tmp_path):
    with PrefixGateway(dev_server.base_url) as gateway:  # the gateway counts what reaches the server
        result = mera_eval("run", "--endpoint", gateway.base_url, "--api-key", "not-the-key", "--model",
                           dev_server.model, "--data-dir", sample_data_dir, "--output", tmp_path / "run",
                           "--tasks", "WEIRD", "ruCLEVR")
        assert gateway.forwarded == 1  # the key is refused on the first request; no sample is sent
    assert result.returncode == 2
    line = last_line(result)
    assert "/v1/models answered 401" in line and "check --api-key / MERA_API_KEY" in line
    assert RunStore.open_existing(tmp_path / "run").count() == 0


# --- no server needed ---------------------------------------------------------------------------------------
def test_a_closed_port_is_waited_for_with_a_message_then_given_up(sample_data_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = mera_eval("run", "--endpoint", url, "--data-dir", sample_data_dir, "--output", tmp_path / "run",
                       "--tasks", "WEIRD", "--wait", "3s", timeout=120)
    assert result.returncode == 2 and 3 <= time.monotonic() - started < 30
    assert f"waiting for {url}: connection refused (0 s, up to 3 s)" in result.stderr
    assert last_line(result) == (f"mera-eval run: not ready after 3 s ({url}: connection refused); start the "
                                 "server or check the URL, or wait longer with --wait")


def test_a_url_without_a_scheme_and_a_task_typo_are_refused_before_any_network(sample_data_dir, tmp_path):
    no_scheme = mera_eval("run", "--endpoint", "localhost:8000", "--data-dir", sample_data_dir, "--output",
                          tmp_path / "run", "--tasks", "WEIRD", timeout=60)
    assert no_scheme.returncode == 2
    assert last_line(no_scheme) == ("mera-eval run: endpoint 'localhost:8000' is not an http:// or https:// URL; "
                                    "write it with its scheme, e.g. http://localhost:8000")
    typo = mera_eval("run", "--endpoint", f"http://127.0.0.1:{free_port()}", "--data-dir", sample_data_dir,
                     "--output", tmp_path / "run", "--tasks", "ruCLEVER", timeout=60)
    assert typo.returncode == 2 and "unknown task 'ruCLEVER'" in last_line(typo)
    assert not (tmp_path / "run").exists()  # nothing was created either
