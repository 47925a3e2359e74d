"""`mera-eval run` end to end: the real dev server on every task, kill-and-resume, server restarts,
4xx handling, ruTiE history. Fault cases use the loopback fault server; the rest the real vLLM."""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluator.registry import TASKS
from evaluator.store import RunStore
from tests.faults import FaultServer
from tests.server_process import PROJECT_ROOT, child_env, like_a_terminal_job, start_server

# The export's `_<timestamp>.jsonl` tail (evaluator/export.py TIMESTAMP_FORMAT, any year).
EXPORT_STAMP = re.compile(r"_\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d+\.jsonl$")


def mera_eval(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=kwargs.pop("timeout", 900), **kwargs)


def spawn_eval(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT,
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def spawn_eval_piped(*args, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def without_file_permission_override() -> None:
    """In the child: obey file modes even as root (drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the
    bounding set before exec), so a folder without write permission is read-only for it as for anyone."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def small_disk(limit_bytes: int):
    """In the child: every file it writes stops growing at `limit_bytes` (EFBIG, as a full disk stops it)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


def stored(run_dir: Path) -> dict[str, str]:
    with sqlite3.connect(run_dir / "store.sqlite") as conn:
        return dict(conn.execute("SELECT sample_key, status FROM replies").fetchall())


def wait_for_rows(run_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(stored(run_dir)) >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} replies stored after {timeout}s")


# --- against the real vLLM dev server ------------------------------------------------------------
@pytest.mark.server
def test_every_task_completes_on_the_dev_server(dev_server, sample_data_dir, tmp_path):
    out = tmp_path / "run"
    result = mera_eval("run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key,
                       "--data-dir", sample_data_dir, "--output", out, "--max-tokens", "8", "--concurrency", "8",
                       "--rutie-history", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    store = RunStore.open_existing(out)
    replies = list(store.replies())
    expected = list(store.expected())
    assert {r.task for r in replies} == set(TASKS)
    assert len(replies) == len(expected) and all(r.status == "ok" for r in replies)
    assert all(r.prompt_tokens and r.finish_reason in ("stop", "length") for r in replies)
    # ruTiE turns carry their history: later turns have far more prompt tokens than the first
    rutie = sorted((r for r in replies if r.task == "ruTiE-Image" and r.meta["dialog_id"] == 0),
                   key=lambda r: r.meta["question_id"])
    assert rutie[2].meta["submission_id"] == rutie[2].meta["question_id"] + 11
    exports = sorted(EXPORT_STAMP.sub("", p.name) for p in (out / "samples").glob("samples_*.jsonl"))
    assert "samples_rucommonvqa" in exports and "samples_unisciencevqa_business" in exports
    # Re-running the same command sends nothing.
    again = mera_eval("run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key,
                      "--data-dir", sample_data_dir, "--output", out, "--max-tokens", "8", "--rutie-history", "2")
    assert again.returncode == 0 and "(0 sent" in again.stdout.replace("\n", " ")


@pytest.mark.server
def test_server_killed_and_restarted_mid_run_the_run_completes(sample_data_dir, tmp_path):
    server = start_server(["--dev"])
    try:
        out = tmp_path / "run"
        proc = spawn_eval("run", "--endpoint", server.base_url, "--api-key", server.api_key, "--data-dir",
                          sample_data_dir, "--output", out, "--tasks", "image", "--max-tokens", "4", "--concurrency", "2")
        wait_for_rows(out, 5, timeout=300)
        server.kill()  # crash: SIGKILL the whole server
        time.sleep(2)
        assert proc.poll() is None  # the evaluator waits for the endpoint instead of giving up
        server.start()
        assert proc.wait(600) == 0, proc.stderr.read()[-3000:]
        statuses = stored(out)
        total = len(list(RunStore.open_existing(out).expected()))
        assert len(statuses) == total and set(statuses.values()) == {"ok"}
    finally:
        server.stop()


# --- faults (loopback fault server) ---------------------------------------------------------------
def test_killed_evaluator_resumes_without_loss_or_duplicates(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.05") as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                "--tasks", "image", "audio", "--concurrency", "4")
        proc = spawn_eval(*args)
        wait_for_rows(out, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        before = stored(out)
        total = len(list(RunStore.open_existing(out).expected()))
        assert 20 <= len(before) < total
        assert mera_eval(*args).returncode == 0
        after = stored(out)
        total = len(list(RunStore.open_existing(out).expected()))
    assert len(after) == total and set(after.values()) == {"ok"}  # nothing lost, one row per sample
    assert len(server.per_prompt) == total
    # Finished samples were never re-sent: only those in flight at the kill (<= concurrency) went twice.
    assert sum(1 for n in server.per_prompt.values() if n > 1) <= 4
    assert max(server.per_prompt.values()) <= 2


def test_400_is_recorded_reported_and_not_retried(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(script=["400"], default="ok") as server:
        result = mera_eval("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                           "--tasks", "ruCLEVR", "--concurrency", "1")
        assert server.chat_requests == 4  # 4 samples, the 400 not retried
    assert result.returncode == 1  # errors over --max-error-rate 0
    bad = [r for r in RunStore.open_existing(out).replies() if r.status != "ok"]
    assert len(bad) == 1 and bad[0].status == "invalid_request" and bad[0].http_status == 400
    assert "maximum context length" in bad[0].error and bad[0].content is None
    # --retry-errors re-sends only that one
    with FaultServer() as server:
        again = mera_eval("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                          "--tasks", "ruCLEVR", "--retry-errors")
        assert again.returncode == 0 and server.chat_requests == 1


def test_a_changed_configuration_is_refused(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        base = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out, "--tasks", "WEIRD")
        assert mera_eval(*base).returncode == 0
        changed = mera_eval(*base, "--max-tokens", "5")
    assert changed.returncode == 2 and "different configuration" in changed.stderr and "params" in changed.stderr


def test_rutie_turn_k_carries_the_models_own_earlier_answers_and_media(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(answers=["Думаю, ОТВЕТ B", "ОТВЕТ C.", "не знаю"]) as server:
        result = mera_eval("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                           "--tasks", "ruTiE-Audio", "--rutie-history", "2", "--concurrency", "1")
        bodies = server.bodies
    assert result.returncode == 0, result.stderr[-2000:]
    histories = sorted(sum(m["role"] == "assistant" for m in b["messages"]) for b in bodies)
    assert histories == [0, 0, 1, 1, 2, 2, 2, 2]  # two dialogues of 4 turns, history capped at 2
    replies = {r.sample_key: r for r in RunStore.open_existing(out).replies()}
    by_turn = sorted(replies.values(), key=lambda r: (r.meta["dialog_id"], r.meta["question_id"]))
    # Check turn 2 of dialogue 0 against what was stored for turns 0 and 1.
    turn2 = next(r for r in by_turn if r.meta["dialog_id"] == 0 and r.meta["question_id"] == 2)
    body = next(b for b in bodies if _digest_of(b) == turn2.request_digest)
    letters = [m["content"][0]["text"] for m in body["messages"] if m["role"] == "assistant"]
    from evaluator.dialogue import answer_letter

    previous = [r for r in by_turn if r.meta["dialog_id"] == 0 and r.meta["question_id"] in (0, 1)]
    assert letters == [answer_letter(r.content) for r in previous]
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert len(users) == 3 and all(any(p["type"] == "audio_url" for p in u["content"]) for u in users)
    # Official quirk: history user turns carry the raw instruction (placeholders unformatted).
    assert "{option_a}" in "".join(p.get("text", "") for p in users[0]["content"])


def _digest_of(body: dict) -> str:
    from evaluator.requests import request_digest
    from evaluator.schema import GenerationParams

    params = GenerationParams(model=body["model"], temperature=body["temperature"], max_tokens=body["max_tokens"],
                              seed=body.get("seed"), stop=body.get("stop", []))
    return request_digest(body["messages"], params)


def test_rutie_resumes_mid_dialogue_with_stored_answers(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.3", answers=["ОТВЕТ D"]) as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                "--tasks", "ruTiE-Image", "--rutie-history", "2")
        proc = spawn_eval(*args)
        wait_for_rows(out, 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        n_before = len(stored(out))
        assert 2 <= n_before < 8
        assert mera_eval(*args).returncode == 0
        assert len(stored(out)) == 8
        assert max(server.per_prompt.values()) <= 2 and sum(server.per_prompt.values()) <= 8 + 2
        # every resumed turn's history holds the stored letter D for the earlier turns
        for body in server.bodies[n_before:]:
            assert all(m["content"][0]["text"] == "D" for m in body["messages"] if m["role"] == "assistant")
    assert json.loads((out / "run.json").read_text())["rutie_history"] == 2


def test_a_second_evaluator_on_the_same_output_exits_at_once(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.2") as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                "--tasks", "image", "--concurrency", "1")
        first = spawn_eval(*args)
        try:
            wait_for_rows(out, 1)
            started = time.monotonic()
            second = mera_eval(*args, timeout=60)
            elapsed = time.monotonic() - started
            assert first.poll() is None  # the first one is unharmed
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
    assert second.returncode == 2 and elapsed < 15  # interpreter start-up included
    line = one_error_line(second.stderr)
    assert f"is in use by another mera-eval run (pid {first.pid} on " in line and "another --output" in line
    assert len(server.per_prompt) == sum(server.per_prompt.values())  # the second sent nothing


def test_ctrl_c_says_how_many_replies_are_stored_and_exits_130(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.1") as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                "--tasks", "image", "--concurrency", "2")
        proc = spawn_eval_piped(*args, preexec_fn=like_a_terminal_job)
        wait_for_rows(out, 4)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        n = len(stored(out))
        assert proc.returncode == 130, stderr[-3000:]
        assert one_error_line(stderr) == (f"mera-eval run: interrupted; {n} replies are stored in {out}; run the same "
                                          "command again to resume (stored replies are not sent again)")
        assert mera_eval(*args).returncode == 0
    assert set(stored(out).values()) == {"ok"} and max(server.per_prompt.values()) <= 2


def test_a_full_disk_loses_no_received_reply_and_prints_one_line(sample_data_dir, tmp_path):
    """A real write failure: the child's files cannot grow past 256 KiB (RLIMIT_FSIZE, EFBIG), so the
    store's WAL fills up mid-run. The replies that arrived are stored or rescued; resuming stores them
    without sending them again."""
    out = tmp_path / "run"
    with FaultServer() as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out,
                "--tasks", "image", "audio", "--concurrency", "4")
        proc = spawn_eval_piped(*args, preexec_fn=small_disk(256 * 1024))
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-3000:]
        line = one_error_line(stderr)
        assert line.startswith(f"mera-eval run: cannot write to {out / 'store.sqlite'}") and "stopped sending" in line
        answered = sum(server.per_prompt.values())
        kept = len(stored(out))
        rescue = out / "unsaved-replies.jsonl"
        rescued = len(rescue.read_text().splitlines()) if rescue.exists() else 0
        print(line)
        assert 0 < kept < answered and kept + rescued <= answered
        assert ("saved in" in line) == bool(rescued) and ("every reply received is stored" in line) == (not rescued)
        again = mera_eval(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        total = len(list(RunStore.open_existing(out).expected()))
    assert len(stored(out)) == total and set(stored(out).values()) == {"ok"}
    # nothing received was lost: only requests cancelled in flight at the stop (<= concurrency) went twice
    assert sum(1 for n in server.per_prompt.values() if n > 1) <= 4 and not rescue.exists()


def test_a_read_only_output_folder_is_one_line_and_sends_nothing(sample_data_dir, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    with FaultServer() as server:
        proc = spawn_eval_piped("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir,
                                "--output", parent / "run", "--tasks", "WEIRD",
                                preexec_fn=without_file_permission_override)
        _, stderr = proc.communicate(timeout=120)
        assert server.chat_requests == 0 and server.models_requests == 0
    parent.chmod(0o755)
    assert proc.returncode == 2
    assert one_error_line(stderr) == (f"mera-eval run: --output {parent / 'run'} is not writable (Permission denied); "
                                      "choose a folder you can write to, or free space / fix permissions there")


def test_a_run_folder_made_read_only_is_refused_before_sending(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        args = ("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output", out, "--tasks", "WEIRD")
        assert mera_eval(*args).returncode == 0
        for path in [*out.rglob("*"), out]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        proc = spawn_eval_piped(*args, "--retry-errors", preexec_fn=without_file_permission_override)
        _, stderr = proc.communicate(timeout=120)
        for path in [out, *out.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert server.chat_requests == 4
    assert proc.returncode == 2
    assert one_error_line(stderr) == (f"mera-eval run: --output {out} is not writable (Permission denied); "
                                      "choose a folder you can write to, or free space / fix permissions there")
