"""`mera-eval` as a user meets it, run as a real subprocess: every mistake is one line on stderr with the
fix and a non-zero exit, never a traceback; local checks come before any network call; piped output is
whole lines; `--json`; Ctrl-C stores what arrived and says how to resume. Endpoints here are a closed
port or the loopback fault server (slow answers, for interrupting); tests/test_cli_live.py does the same
against the real vLLM dev server."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from evaluator.registry import TASKS
from evaluator.store import RunStore
from tests.faults import FaultServer
from tests.scoring_fixtures import make_run
from tests.server_process import PROJECT_ROOT, child_env, free_port, like_a_terminal_job


def mera_eval(*args, timeout: float = 120, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "evaluator.cli", *map(str, args)], cwd=PROJECT_ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *needles: str, command: str = "run",
                   after_progress: bool = False) -> str:
    """The shape every user error has: non-zero exit, exactly one stderr line naming the command (the last
    one, after the run's own progress lines, for an error in the middle of a run)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if after_progress:
        assert all(line.startswith("[") for line in lines[:-1]), result.stderr  # time-stamped progress only
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mera-eval {command}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def timed(*args) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, CPU seconds of the child). The machine is shared: CPU time is the figure
    that does not depend on the load; wall time shows that nothing waited for the network."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = mera_eval(*args)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --- local checks come first, on one line, in under 2 s ----------------------------------------------
def test_a_task_typo_with_a_dead_endpoint_fails_at_once_with_did_you_mean(sample_data_dir, tmp_path):
    result, wall, cpu = timed("run", "--endpoint", dead_endpoint(), "--data-dir", sample_data_dir, "--output",
                              tmp_path / "run", "--tasks", "ruCLVR")
    one_line_error(result, "unknown task 'ruCLVR'", "did you mean ruCLEVR?", "mera-eval tasks")
    assert cpu < 2.0 and wall < 10.0, (cpu, wall)  # a wait for the dead endpoint would take minutes
    assert not (tmp_path / "run").exists()  # nothing created for a run that cannot start


@pytest.mark.parametrize("layout, needle", [
    ("missing", "no such folder"),
    ("file", "is a file, not a folder"),
    ("empty", "holds none of the chosen datasets in the hub's layout"),
    ("no-split", "has no test split"),
])  # fmt: skip
def test_a_data_dir_that_cannot_serve_the_run_is_refused_before_the_network(tmp_path, sample_data_dir, layout,
                                                                            needle):
    data = tmp_path / "data"
    if layout == "file":
        data.write_text("x")
    elif layout == "empty":
        (data / "somewhere-else").mkdir(parents=True)
    elif layout == "no-split":
        shutil.copytree(sample_data_dir / "MERA-evaluation" / "ruCLEVR", data / "MERA-evaluation" / "ruCLEVR")
        for path in data.rglob("test-*.parquet"):
            path.unlink()
    result, wall, cpu = timed("run", "--endpoint", dead_endpoint(), "--data-dir", data, "--output",
                              tmp_path / "run", "--tasks", "ruCLEVR")
    line = one_line_error(result, needle)
    assert cpu < 2.0 and wall < 10.0, (cpu, wall)
    assert "sample-data" in line or "--split shots" in line or "MERA-evaluation" in line  # the fix


def test_an_output_that_is_a_file_or_under_a_file_is_one_line(tmp_path, sample_data_dir):
    (tmp_path / "taken").write_text("x")
    for output in (tmp_path / "taken", tmp_path / "taken" / "run"):
        result = mera_eval("run", "--endpoint", dead_endpoint(), "--data-dir", sample_data_dir, "--output", output,
                           "--tasks", "ruCLEVR")
        one_line_error(result, "is a file, not a folder")


@pytest.mark.parametrize("flag, value, needle", [
    ("--concurrency", "0", "--concurrency: must be ≥ 1, got 0"),
    ("--limit", "-3", "--limit: must be ≥ 1"),
    ("--max-tokens", "many", "--max-tokens: a whole number expected"),
    ("--max-error-rate", "2", "--max-error-rate: must be ≤ 1"),
    ("--extra-body", "{bad", "--extra-body: not valid JSON"),
    ("--extra-body", "[1, 2]", "must be a JSON object"),
    ("--timeout", '{"vidoe": 10}', "unknown modality 'vidoe'"),
    ("--timeout", "{video: 10}", "--timeout: not valid JSON"),
    ("--mm-limits", '{"image": 2.5}', "image: a whole number expected"),
    ("--progress-interval", "0", "must be > 0"),
])  # fmt: skip
def test_every_bad_value_is_one_readable_line(tmp_path, flag, value, needle):
    result = mera_eval("run", "--endpoint", dead_endpoint(), "--output", tmp_path / "run", flag, value)
    line = one_line_error(result, needle, "--help")
    assert "pydantic" not in line and "errors.pydantic.dev" not in line


def test_a_value_only_the_config_model_checks_is_named_by_its_flag():
    """pydantic's own errors, as the CLI prints them: the flag, the problem, the value; no URL."""
    from pydantic import ValidationError

    from evaluator.cli import _validation_line
    from evaluator.runner import RunConfig

    with pytest.raises(ValidationError) as exc:
        RunConfig(endpoints=["http://x"], output=Path("r"), concurrency=0, rutie_history=-1)
    line = _validation_line(exc.value, {"concurrency": "--concurrency", "rutie_history": "--rutie-history"})
    assert line == ("--concurrency: input should be greater than 0 (got 0); "
                    "--rutie-history: input should be greater than or equal to 0 (got -1)")


def test_board_names_work_in_either_spelling_and_show_in_one(tmp_path):
    from evaluator.registry import BOARD_LABELS, resolve_tasks

    for word in ("image", "images", "Images", "IMAGE"):
        assert [s.modality for s in resolve_tasks([word])] == ["image"] * 11
    assert len(resolve_tasks(["videos", "Audio"])) == 7
    result = mera_eval("tasks")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1] in ([n] for n in TASKS)}
    for spec in TASKS.values():
        assert f" {BOARD_LABELS[spec.modality]} " in rows[spec.name]


def test_split_help_says_what_shots_is():
    result = mera_eval("run", "--help")
    help_text = " ".join(result.stdout.split())
    assert "shots: MERA's dev split, with answers for every dataset" in help_text
    assert "test: the leaderboard's split" in help_text


# --- no tracebacks, --debug shows them ---------------------------------------------------------------
def test_score_and_report_of_a_folder_without_a_run_are_one_line(tmp_path):
    one_line_error(mera_eval("score", tmp_path / "nothing"), "no run store", command="score")
    one_line_error(mera_eval("report", tmp_path / "nothing"), "no run store", command="report")
    one_line_error(mera_eval("report", tmp_path, "--reference", "gpt-9"), "unknown reference 'gpt-9'",
                   command="report")


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = mera_eval("--debug", "score", tmp_path / "nothing")
    assert result.returncode == 2 and "Traceback" in result.stderr and "StoreError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mera-eval score: no run store")
    later = mera_eval("score", tmp_path / "nothing", "--debug")  # after the command works too
    assert "Traceback" in later.stderr


def test_submit_into_a_folder_writes_submission_zip_there_and_leaves_no_tmp(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    result = mera_eval("submit", run, "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["submission.zip"]
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert len(zf.namelist()) == 19
    one_line_error(mera_eval("submit", run, "-o", tmp_path / "no" / "such" / "x.zip"), "there is no folder",
                   command="submit")
    assert not list(tmp_path.rglob("*.tmp"))


def test_submit_of_a_shots_run_says_the_leaderboard_takes_the_test_split(tmp_path):
    store = RunStore.open(tmp_path / "run", {"model": "m", "split": "shots"})
    store.expect([("ruCLEVR/-/shots/1", "ruCLEVR", None, "shots", 1)])
    store.close()
    line = one_line_error(mera_eval("submit", tmp_path / "run"), command="submit")
    assert "shots split" in line and "the leaderboard takes the test split" in line and "--split test" in line
    assert not (tmp_path / "run" / "submission.zip").exists()


def test_sample_data_into_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(mera_eval("sample-data", tmp_path / "f"), "is a file", command="sample-data")


# --- full disk, read-only folder: real file systems, mounted in a private namespace ------------------
def _can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unprivileged mount namespaces (unshare -rm)")


def on_tmpfs(mount: Path, options: str, then: str = "") -> tuple[str, ...]:
    """A command prefix: mount a tmpfs at `mount` in a private namespace, run `then` (shell), then the command."""
    mount.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && {then + " && " if then else ""}exec "$@"'
    return ("unshare", "-rm", "sh", "-c", script, str(mount))


@needs_mount
def test_a_read_only_output_folder_is_one_line(tmp_path, sample_data_dir):
    with FaultServer() as server:
        result = mera_eval("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output",
                           tmp_path / "ro" / "run", "--tasks", "ruCLEVR", prefix=on_tmpfs(tmp_path / "ro", "ro,size=64k"))
        assert server.chat_requests == 0
    one_line_error(result, "not writable", "Read-only file system")


@needs_mount
def test_a_full_disk_is_one_line_that_says_how_to_resume(tmp_path, sample_data_dir):
    with FaultServer() as server:
        result = mera_eval("run", "--endpoint", server.base_url, "--data-dir", sample_data_dir, "--output",
                           tmp_path / "full" / "run", "--tasks", "image", "--split", "shots",
                           prefix=on_tmpfs(tmp_path / "full", "size=256k"))  # room for the store, not the replies
        assert server.chat_requests > 0
    one_line_error(result, "disk is full", "stopped sending", "the same command resumes", after_progress=True)


@needs_mount
def test_scoring_a_run_on_a_read_only_disk_is_one_line(tmp_path):
    run = make_run(tmp_path / "src")
    mount = tmp_path / "ro"
    # copy the run onto the tmpfs, then make it read-only (SQLite cannot even open a WAL store there)
    result = mera_eval("score", mount / "src", prefix=on_tmpfs(mount, "size=8m", f'cp -r {run} "$0"/ && '
                                                               'mount -o remount,ro "$0"'))
    one_line_error(result, "cannot write the run store", "permissions", command="score")


# --- output for a pipe, and --json ---------------------------------------------------------------
def test_tasks_piped_is_grep_friendly_with_full_names():
    out = mera_eval("tasks").stdout
    audio = [line.split()[0] for line in out.splitlines() if "audio" in line]  # `mera-eval tasks | grep audio`
    assert audio == [n for n, s in TASKS.items() if s.modality == "audio"]
    for spec in TASKS.values():
        row = next(line for line in out.splitlines() if line.startswith(spec.name + " "))
        assert spec.hub_id in row and f"{spec.submission_name}.json" in row  # every column, full width
        assert ("hidden" if spec.test_gold_hidden else "public") in row
    assert "…" not in out


def test_tasks_json_has_every_field_of_every_task():
    data = json.loads(mera_eval("tasks", "--json").stdout)
    assert [d["name"] for d in data] == list(TASKS)
    assert data[0]["board"] == "Images" and data[0]["hub_id"] == "MERA-evaluation/ruCommonVQA"
    assert set(data[0]) >= set(type(TASKS["ruCLEVR"]).model_fields)


def test_score_piped_finds_every_dataset_by_name_and_json_is_the_results_file(tmp_path):
    run = make_run(tmp_path / "run")
    out = mera_eval("score", run).stdout
    assert [line for line in out.splitlines() if "ruNaturalScienceVQA" in line]  # `score | grep ruNatural...`
    for name in TASKS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "…" not in out
    assert out.count("Shots split") == 1 and out.count("Test split") == 1  # each table once
    data = json.loads(mera_eval("score", run, "--json").stdout)
    assert data == json.loads((run / "results.json").read_text())
    report = json.loads(mera_eval("report", run, "--json").stdout)
    assert report["splits"] == data["splits"]


# --- Ctrl-C ----------------------------------------------------------------------------------------
def test_ctrl_c_during_a_run_says_what_is_stored_and_the_same_command_resumes(tmp_path, sample_data_dir):
    out = tmp_path / "run"
    args = ["run", "--data-dir", sample_data_dir, "--output", out, "--tasks", "image", "--split", "shots",
            "--concurrency", "2"]
    with FaultServer(default="slow:0.2") as server:
        proc = subprocess.Popen([sys.executable, "-m", "evaluator.cli", *map(str, args), "--endpoint",
                                 server.base_url], cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=like_a_terminal_job)
        deadline = time.monotonic() + 60
        while server.chat_requests < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
        store = RunStore.open_existing(out)
        stored = len(list(store.replies()))
        store.close()
        last = stderr.strip().splitlines()[-1]
        assert last == (f"mera-eval run: interrupted; {stored} replies are stored in {out}; run the same command "
                        "again to resume (stored replies are not sent again)")
        assert stored >= 4
        sent_before = server.chat_requests
        again = subprocess.run([sys.executable, "-m", "evaluator.cli", *map(str, args), "--endpoint",
                                server.base_url], cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr
        total = len(list(RunStore.open_existing(out).expected()))
        assert server.chat_requests - sent_before == total - stored  # only what was missing went out
    assert f"{total} samples ({total - stored} sent, {stored} already stored" in again.stdout
