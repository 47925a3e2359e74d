"""On the sample data, for real: `mera-eval run` on the dev server, then score, report, submit, validate."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from evaluator.registry import TASKS
from tests.server_process import PROJECT_ROOT, child_env


def mera_eval(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=900)


@pytest.mark.server
def test_run_score_report_submit_on_sample_data(dev_server, sample_data_dir, tmp_path):
    run = tmp_path / "run"
    result = mera_eval("run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key, "--data-dir",
                       sample_data_dir, "--output", run, "--limit", "1", "--max-tokens", "8", "--concurrency", "4",
                       "--rutie-history", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    result = mera_eval("score", run)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("results.json", "report.md", "report.html"):
        assert (run / name).is_file()
    data = json.loads((run / "results.json").read_text())
    tasks = data["splits"]["test"]["tasks"]
    assert set(tasks) == set(TASKS)
    assert all(t["ok"] == t["expected"] and not t["incomplete"] for t in tasks.values())
    public = {n for n, s in TASKS.items() if not s.test_gold_hidden}
    assert {n for n, t in tasks.items() if t["score"] is not None} == public

    assert mera_eval("report", run, "--reference", "none").returncode == 0
    result = mera_eval("submit", run)
    assert result.returncode == 0, result.stdout[-3000:]
    with zipfile.ZipFile(run / "submission.zip") as zf:
        assert len(zf.namelist()) == 19
    assert mera_eval("validate-submission", run / "submission.zip", "--run", run).returncode == 0
