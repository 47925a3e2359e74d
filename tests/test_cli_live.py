"""`mera-eval` against the real vLLM dev server, as a user runs it: a piped run writes progress lines while
it runs (not only at the end), the report of that run says what was evaluated with a sane throughput,
and Ctrl-C in the middle stores what arrived and the same command finishes the run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from evaluator.store import RunStore
from tests.server_process import PROJECT_ROOT, child_env, like_a_terminal_job

pytestmark = pytest.mark.server


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            preexec_fn=like_a_terminal_job)


def test_a_piped_run_writes_progress_while_it_runs_and_its_report_identifies_it(dev_server, sample_data_dir,
                                                                               tmp_path):
    out = tmp_path / "run"
    proc = spawn("run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key, "--data-dir",
                 sample_data_dir, "--output", out, "--tasks", "ruCLEVR", "WEIRD", "ruEnvAQA", "CommonVideoQA",
                 "ruNaturalScienceVQA", "--split", "shots", "--max-tokens", "8", "--concurrency", "2",
                 "--progress-interval", "1")
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line.rstrip()) for line in proc.stderr))
    reader.start()
    stdout = proc.stdout.read()
    assert proc.wait(600) == 0, "\n".join(line for _, line in lines)
    ended = time.monotonic()
    reader.join(10)
    text = [line for _, line in lines]
    periodic = [(t, line) for t, line in lines if " samples (" in line and "tasks done" in line]
    # lines arrive as the run goes, flushed one by one: the first long before the process ends
    assert periodic and ended - periodic[0][0] > 1.0, text
    assert any("ruCLEVR done: 4/4 (0 errors)" in line for line in text), text
    assert any("ruNaturalScienceVQA done: 16/16" in line for line in text), text
    assert "32 samples (32 sent, 0 already stored" in stdout

    result = subprocess.run([sys.executable, "-m", "evaluator.cli", "score", out], cwd=PROJECT_ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("ruNaturalScienceVQA ")]
    md = (out / "report.md").read_text()
    for fact in (f"| **model** | {dev_server.model} |", f"| **endpoint** | {dev_server.base_url} |",
                 "| **split** | shots (MERA's dev split, with answers) |", "max_tokens 8", "1 invocation",
                 "| **evaluator** | mera-multi "):
        assert fact in md, fact
    data = json.loads((out / "results.json").read_text())
    assert data["run"]["invocations"] == 1 and data["run"]["sent"] == 32 and data["run"]["duration_s"] > 0
    for name, task in data["splits"]["shots"]["tasks"].items():
        # never more than 2 requests in flight: at most 2 per mean latency (the old figure, samples over the gap
        # between first and last completion, broke this bound by orders of magnitude)
        assert 0 < task["throughput_per_min"] <= 1.05 * 2 * 60 / task["latency_mean_s"], name
    assert data["run"]["throughput_per_min"] == pytest.approx(60 * 32 / data["run"]["duration_s"])


def stored(run) -> int:
    try:
        with sqlite3.connect(run / "store.sqlite") as conn:
            return conn.execute("SELECT count(*) FROM replies").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_ctrl_c_mid_run_keeps_the_replies_and_the_same_command_finishes(dev_server, sample_data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key, "--data-dir", sample_data_dir,
            "--output", out, "--tasks", "image", "--split", "shots", "--max-tokens", "8", "--concurrency", "2"]
    proc = spawn(*args)
    deadline = time.monotonic() + 300
    while stored(out) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    kept = stored(out)
    assert stderr.strip().splitlines()[-1] == (
        f"mera-eval run: interrupted; {kept} replies are stored in {out}; run the same command again to resume "
        "(stored replies are not sent again)")
    again = subprocess.run([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT, env=child_env(),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    store = RunStore.open_existing(out)
    total = len(list(store.expected()))
    assert len({r.sample_key for r in store.replies()}) == total == stored(out)
    assert f"{total} samples ({total - kept} sent, {kept} already stored" in again.stdout
