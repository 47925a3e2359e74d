"""The runner under faults (loopback fault server, store fault hooks, monkeypatched stages): a failure that is
not a sample's ends the run at once with one typed error and every received reply kept; nothing blocks
forever; Ctrl-C leaves a consistent store; local checks come before any network; a resumed run is the same
run whatever the data path is spelled like, and notices changed data or a changed request builder."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evaluator import dialogue as dialogue_module
from evaluator import requests as requests_module
from evaluator import runner as runner_module
from evaluator.data import DataError, DataSource
from evaluator.http_policy import AuthError, EndpointError, RetryPolicy
from evaluator.registry import UnknownTaskError
from evaluator.requests import RequestOptions, build_request
from evaluator.runner import ChangedRequestError, RunAborted, RunConfig, RunInterrupted, run
from evaluator.schema import GenerationParams
from evaluator.store import RunFolderBusy, RunStore, StoreError, StoreWriteError
from tests.fake_clock import FakeClock
from tests.faults import FaultServer

FAST = RetryPolicy(max_attempts=2, base_delay_s=1.0, max_delay_s=2.0, max_downtime_s=60)
TASKS = ["WEIRD", "ruCLEVR", "ruEnvAQA"]  # 4 test samples each in the sample data


def config(server: FaultServer, data_dir, out, **kw) -> RunConfig:
    kw.setdefault("options", RequestOptions(params=GenerationParams(model=kw.pop("model", ""))))
    return RunConfig(endpoints=[kw.pop("endpoint", server.base_url)], output=out, tasks=kw.pop("tasks", TASKS),
                     source=DataSource(data_dir=data_dir), retry=FAST, **kw)


def stored_keys(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "store.sqlite") as conn:
        return dict(conn.execute("SELECT sample_key, status FROM replies"))


# --- structured concurrency ---------------------------------------------------------------------------
async def test_a_worker_exception_ends_the_run_in_seconds_with_the_replies_intact(sample_data_dir, tmp_path,
                                                                                 monkeypatch):
    """The issue's case: recording a reply raising something that is not a sample's problem. Before, every
    worker died silently, the producer blocked on queue.put, and run() had not returned after 20 s."""
    original = RunStore.record_grouped
    calls = {"n": 0}

    async def record(self, reply):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("a bug in recording")
        return await original(self, reply)

    monkeypatch.setattr(RunStore, "record_grouped", record)
    out = tmp_path / "run"
    with FaultServer(default="slow:0.05") as server:
        started = time.monotonic()
        with pytest.raises(RunAborted) as err:
            await asyncio.wait_for(run(config(server, sample_data_dir, out, concurrency=2)), 30)
        assert time.monotonic() - started < 10
    kept = len(stored_keys(out))  # every reply recorded before the failure (and one the other worker had) is there
    assert kept in (4, 5) and f"{kept} replies are stored" in str(err.value)
    assert "RuntimeError: a bug in recording" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError) and "report it" in err.value.fix
    RunStore.open_for_run(out).close()  # and the lock was released


async def test_a_bug_in_building_replies_is_one_typed_error(sample_data_dir, tmp_path, monkeypatch):
    def broken(sample, outcome, request):
        raise KeyError("question")

    monkeypatch.setattr(runner_module, "reply_for", broken)
    with FaultServer() as server:
        with pytest.raises(RunAborted, match=r"KeyError: 'question'\) at test_runner_faults.py"):
            await asyncio.wait_for(run(config(server, sample_data_dir, tmp_path / "run", concurrency=4)), 30)


async def test_errors_httpx_raises_on_undecodable_bodies_are_a_samples_failure_not_a_dead_worker(
        sample_data_dir, tmp_path):
    with FaultServer(default="badgzip") as server:
        summary = await asyncio.wait_for(run(config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"])), 30)
    assert summary.errors == 4
    replies = list(RunStore.open_existing(tmp_path / "run").replies())
    assert {r.status for r in replies} == {"failed"} and all("could not be decoded" in r.error for r in replies)


async def test_a_refused_key_during_a_run_stops_it_after_the_first_401(sample_data_dir, tmp_path):
    """A wrong key with --model (the model list is open, chat is not): one request, nothing stored as 401."""
    out = tmp_path / "run"
    with FaultServer(api_key="right") as server:
        cfg = config(server, sample_data_dir, out, model="fault-model", concurrency=1).model_copy(
            update={"api_key": "wrong"})
        with pytest.raises(AuthError) as err:
            await asyncio.wait_for(run(cfg), 30)
        assert server.chat_requests == 1
    assert "answered 401" in str(err.value) and stored_keys(out) == {}
    with FaultServer(api_key="right") as server:  # the right key then sends everything, no --retry-errors
        again = await run(config(server, sample_data_dir, out, model="fault-model").model_copy(
            update={"api_key": "right"}))
    assert again.sent == 12 and again.errors == 0


async def test_a_failing_dialogue_ends_the_run(sample_data_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("in a dialogue")

    monkeypatch.setattr(dialogue_module, "build_turn_messages", broken)
    with FaultServer(default="slow:0.05") as server:
        started = time.monotonic()
        with pytest.raises(RunAborted, match="ZeroDivisionError"):
            await asyncio.wait_for(run(config(server, sample_data_dir, tmp_path / "run",
                                              tasks=["ruTiE-Image", "WEIRD"])), 30)
    assert time.monotonic() - started < 10


async def test_a_stalled_dataset_stream_cannot_hold_the_run(sample_data_dir, tmp_path, monkeypatch):
    """The dataset iterator hangs (a stalled hub download) and the user presses Ctrl-C: the run ends at
    once; the thread stuck in the iterator is a daemon and holds nothing."""
    release = threading.Event()
    real = runner_module.iter_samples

    def stalling(spec, *args, **kwargs):
        for i, sample in enumerate(real(spec, *args, **kwargs)):
            if i == 2:
                release.wait(600)  # never released while the run lasts
            yield sample

    monkeypatch.setattr(runner_module, "iter_samples", stalling)
    out = tmp_path / "run"
    with FaultServer() as server:
        task = asyncio.create_task(run(config(server, sample_data_dir, out, tasks=["WEIRD"])))
        while len(stored_keys(out) if (out / "store.sqlite").exists() else {}) < 2:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        task.cancel()  # Ctrl-C while the stream is stuck
        with pytest.raises(RunInterrupted) as err:
            await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 2
    assert err.value.stored == 2 and err.value.exit_code == 130
    assert str(err.value) == f"interrupted: 2 replies are stored in {out}"
    assert err.value.fix == "run the same command to resume"
    release.set()


async def test_ctrl_c_leaves_a_consistent_store_and_the_same_command_resumes(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.2") as server:
        cfg = config(server, sample_data_dir, out, concurrency=2)
        task = asyncio.create_task(run(cfg))
        while len(stored_keys(out) if (out / "store.sqlite").exists() else {}) < 3:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(RunInterrupted) as err:
            await task
        kept = stored_keys(out)
        assert err.value.stored == len(kept) >= 3 and set(kept.values()) == {"ok"}
        server.default = "ok"
        again = await run(cfg)
    assert again.sent == 12 - len(kept) and len(stored_keys(out)) == 12


# --- a full disk or a read-only folder ----------------------------------------------------------------------
@pytest.mark.parametrize("message", ["database or disk is full", "attempt to write a readonly database"])
async def test_a_failed_write_stops_sending_loses_no_received_reply_and_says_so(sample_data_dir, tmp_path,
                                                                               monkeypatch, message):
    failing = {"on": False, "calls": 0}

    def hook(op):
        if op == "record":
            failing["calls"] += 1
            if failing["calls"] == 4:
                failing["on"] = True
        if failing["on"] and op == "record":
            raise sqlite3.OperationalError(message)

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(hook))
    out = tmp_path / "run"
    with FaultServer(default="slow:0.05") as server:
        with pytest.raises(StoreWriteError) as err:
            await asyncio.wait_for(run(config(server, sample_data_dir, out, concurrency=3)), 60)
    line = err.value.one_line()
    assert "\n" not in line and message in line and "stopped sending" in line and err.value.exit_code == 1
    assert "next run imports them" in line
    stored = stored_keys(out)
    rescued = [json.loads(x)["sample_key"] for x in (out / "unsaved-replies.jsonl").read_text().splitlines()]
    # three commits made it (replies of one loop turn share a commit); received = stored + rescued
    assert len(stored) >= 3 and len(rescued) >= 1 and not set(rescued) & set(stored)
    monkeypatch.setattr(RunStore, "fault_hook", None)
    with FaultServer() as server:  # the disk has room again: the rescued replies are imported, not re-sent
        again = await run(config(server, sample_data_dir, out))
        resent = len(server.bodies)  # (sample texts are not unique: two samples may ask the same question)
    assert again.sent == 12 - len(stored) - len(rescued) and again.stored == 12 and len(stored_keys(out)) == 12
    assert not (out / "unsaved-replies.jsonl").exists() and resent == again.sent


async def test_a_write_that_fails_for_a_moment_is_retried_at_the_end_and_nothing_is_rescued(
        sample_data_dir, tmp_path, monkeypatch):
    failures = {"left": 0, "seen": 0}

    def hook(op):
        if op == "record":
            failures["seen"] += 1
            if failures["seen"] == 3:
                failures["left"] = 2  # this write and the next fail, then the disk has room again
            if failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(hook))
    out = tmp_path / "run"
    with FaultServer() as server:
        with pytest.raises(StoreWriteError, match="every reply received is stored"):
            await run(config(server, sample_data_dir, out, concurrency=1))
        assert len(stored_keys(out)) == server.chat_requests  # nothing lost, nothing in a rescue file
    assert not (out / "unsaved-replies.jsonl").exists()


async def test_an_output_folder_that_cannot_be_written_is_refused_before_any_request(sample_data_dir, tmp_path,
                                                                                    monkeypatch):
    def readonly(op):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(readonly))
    with FaultServer() as server:
        with pytest.raises(StoreWriteError, match="readonly database"):
            await run(config(server, sample_data_dir, tmp_path / "run"))
        assert server.chat_requests == 0 and server.models_requests == 0


# --- local checks come first ------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "error", "needle"), [
    ({"tasks": ["ruCLEVER"]}, UnknownTaskError, "ruCLEVER"),
    ({"data": "missing"}, DataError, "no folder"),
    ({"endpoint": "localhost:1"}, EndpointError, "http://localhost:1"),
    ({"output": "a-file"}, StoreError, "is a file"),
])
async def test_local_mistakes_are_reported_in_under_2_s_with_a_dead_endpoint(sample_data_dir, tmp_path, change,
                                                                             error, needle):
    dead = FaultServer()  # never started: any network call would wait for it
    out = tmp_path / "run"
    if change.get("output"):
        out = tmp_path / "a-file"
        out.write_text("not a folder")
    data = tmp_path / "missing" if change.get("data") else sample_data_dir
    cfg = config(dead, data, out, **{k: v for k, v in change.items() if k in ("tasks", "endpoint")})
    started = time.monotonic()
    with pytest.raises(error) as err:
        await run(cfg)
    assert time.monotonic() - started < 2
    assert needle in err.value.one_line()
    dead.close()


async def test_a_changed_configuration_is_refused_before_waiting_for_the_endpoint(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        await run(config(server, sample_data_dir, out, tasks=["WEIRD"]))
        changed = config(server, sample_data_dir, out, tasks=["WEIRD"])
    changed.options.params.max_tokens = 5  # the model is not given: it is compared once the endpoint answers
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"different configuration \(changed: generation, params\)"):
        await run(changed)  # the server is gone: only a local check can answer this fast
    assert time.monotonic() - started < 2


async def test_a_second_evaluator_on_the_same_output_is_refused_at_once(sample_data_dir, tmp_path):
    out = tmp_path / "run"
    with FaultServer(default="slow:0.3") as server:
        first = asyncio.create_task(run(config(server, sample_data_dir, out, concurrency=1)))
        while not (out / "mera-eval.lock").exists():
            await asyncio.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(RunFolderBusy) as err:
            await run(config(server, sample_data_dir, out))
        assert time.monotonic() - started < 2
        first.cancel()
        with pytest.raises(RunInterrupted):
            await first
    assert f"pid {os.getpid()}" in str(err.value) and "another --output" in err.value.fix


# --- the same run, or a changed one -------------------------------------------------------------------
async def test_the_data_folder_spelled_three_ways_is_one_run(sample_data_dir, tmp_path, monkeypatch):
    local = tmp_path / "data"
    shutil.copytree(sample_data_dir, local)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with FaultServer() as server:
        first = await run(config(server, Path("data"), out, tasks=["WEIRD"]))
        for spelling in (Path("./data"), local, Path("data/../data/")):
            again = await run(config(server, spelling, out, tasks=["WEIRD"]))
            assert again.sent == 0 and again.progress["WEIRD"].skipped == 4
        assert server.chat_requests == first.sent == 4
    assert RunStore.open_existing(out).run_config()["datasets"]["WEIRD"].startswith("local:")


async def test_changed_local_data_is_refused_naming_the_task_or_rebuilt_on_request(sample_data_dir, tmp_path):
    local = tmp_path / "data"
    shutil.copytree(sample_data_dir, local)
    out = tmp_path / "run"
    with FaultServer() as server:
        await run(config(server, local, out, tasks=["WEIRD", "ruCLEVR"]))
        (path,) = list((local / "MERA-evaluation" / "WEIRD" / "data").glob("test-*.parquet"))
        table = pq.read_table(path)
        rows = table.to_pylist()
        rows[1]["inputs"]["question"] = rows[1]["inputs"]["question"] + " (исправлено)"
        pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
        with pytest.raises(DataError, match="WEIRD: the data changed since this run stored replies") as err:
            await run(config(server, local, out, tasks=["WEIRD", "ruCLEVR"]))
        assert "--rebuild-changed" in err.value.fix and server.chat_requests == 8
        rebuilt = await run(config(server, local, out, tasks=["WEIRD", "ruCLEVR"], rebuild_changed=True))
    assert rebuilt.sent == 1 and rebuilt.rebuilt == 1  # only the changed sample went again


async def test_a_changed_request_builder_is_detected_on_resume(sample_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with FaultServer() as server:
        await run(config(server, sample_data_dir, out, tasks=["WEIRD", "ruTiE-Image"], rutie_history=2))

        def changed_builder(sample, options):
            request = build_request(sample, options)
            if sample.index == 2:  # e.g. a fix to how one kind of prompt is split
                request.messages[0]["content"].append({"type": "text", "text": "!"})
                request = request.model_copy(update={"digest": "changed"})
            return request

        monkeypatch.setattr(runner_module, "build_request", changed_builder)
        # a change to the builder's code changes its fingerprint, so stored requests are rebuilt and compared
        monkeypatch.setattr(requests_module, "builder_fingerprint", lambda: "edited code")
        with pytest.raises(ChangedRequestError) as err:
            await run(config(server, sample_data_dir, out, tasks=["WEIRD"], rutie_history=2))
        assert "WEIRD/-/test/" in str(err.value) and "different request now" in str(err.value)
        assert server.chat_requests == 12
        again = await run(config(server, sample_data_dir, out, tasks=["WEIRD"], rutie_history=2,
                                 rebuild_changed=True))
        assert again.sent == again.rebuilt == 1
        # ruTiE turns are checked too: a changed turn builder is noticed for the stored dialogue turns
        real = dialogue_module.build_turn_messages

        def changed_turns(turn, history, options, fmt="official", encoded=None):
            messages = real(turn, history, options, fmt, encoded)
            messages[-1]["content"].append({"type": "text", "text": "?"})
            return messages

        monkeypatch.setattr(dialogue_module, "build_turn_messages", changed_turns)
        with pytest.raises(ChangedRequestError, match="ruTiE-Image/-/test/"):
            await run(config(server, sample_data_dir, out, tasks=["ruTiE-Image"], rutie_history=2))


async def test_a_resumed_run_skips_unchanged_samples_without_rebuilding_their_requests(sample_data_dir, tmp_path,
                                                                                     monkeypatch):
    """Sampling video frames costs seconds per clip: a stored sample built from the same row, options and
    builder code is skipped on its source digest. Replies stored without one (older stores) are rebuilt
    and compared as before, and keep being skipped."""
    out = tmp_path / "run"
    tasks = ["WEIRD", "ruCLEVR", "ruEnvAQA", "ruHHH-Video"]
    options = RequestOptions(params=GenerationParams(model=""), video_frames=3)
    with FaultServer() as server:
        first = await run(config(server, sample_data_dir, out, tasks=tasks, options=options))
        builds = []

        def counted(sample, options):
            builds.append(sample.key)
            return build_request(sample, options)

        monkeypatch.setattr(runner_module, "build_request", counted)
        again = await run(config(server, sample_data_dir, out, tasks=tasks, options=options))
        assert first.sent == server.chat_requests == 16 and again.sent == 0 and builds == []

        with sqlite3.connect(out / "store.sqlite") as conn:  # as a store written before source digests
            conn.execute("UPDATE replies SET body = json_remove(body, '$.source_digest') WHERE task='ruCLEVR'")
        again = await run(config(server, sample_data_dir, out, tasks=tasks, options=options))
        assert again.sent == 0 and len(builds) == 4 and all(key.startswith("ruCLEVR/") for key in builds)

        monkeypatch.setattr(requests_module, "builder_fingerprint", lambda: "edited code")
        again = await run(config(server, sample_data_dir, out, tasks=tasks, options=options))
        assert again.sent == 0 and len(builds) == 20  # rebuilt, compared, unchanged: nothing re-sent
    assert server.chat_requests == 16


async def test_a_hub_run_is_pinned_to_the_commit_it_started_with(tmp_path, monkeypatch):
    """Resolving `main` happens once per dataset; a resumed run streams the stored commit even after the
    hub moved on, and an explicit other --revision is refused."""
    from huggingface_hub import HfApi

    from evaluator import data as data_module
    from evaluator.sample_data import write_sample_data

    snapshot = write_sample_data(tmp_path / "snapshot")
    heads = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo, revision=None, **kw: type("I", (), {
        "sha": next(heads)})())
    streamed: list[str | None] = []

    def hub_rows(spec, split, source, domain):
        streamed.append(source.commits.get(spec.hub_id, source.revision))
        return data_module._iter_local_rows(data_module.parquet_files(spec, split, snapshot, domain))

    monkeypatch.setattr(data_module, "_iter_hub_rows", hub_rows)
    out = tmp_path / "run"
    with FaultServer() as server:
        hub = RunConfig(endpoints=[server.base_url], output=out, tasks=["WEIRD"], retry=FAST, limit=2)
        await run(hub)
        more = await run(hub.model_copy(update={"limit": 4}))  # resumed: "main" is now bbbb...
        assert more.sent == 2
        with pytest.raises(DataError, match="was hf:a{40}, now hf:c{40}"):
            await run(hub.model_copy(update={"source": DataSource(revision="c" * 40)}))
    assert streamed == ["a" * 40, "a" * 40]
    assert RunStore.open_existing(out).run_config()["datasets"] == {"WEIRD": "hf:" + "a" * 40}


async def test_a_reply_that_is_not_an_answer_is_stored_unscored_and_resent_by_retry_errors(sample_data_dir,
                                                                                           tmp_path):
    from evaluator.scoring import ScoreOptions, score_run

    out = tmp_path / "run"
    with FaultServer(script=["null", "ok", "notjson", "ok"]) as server:
        first = await run(config(server, sample_data_dir, out, tasks=["WEIRD"], concurrency=1, split="shots"))
    assert first.errors == 2
    assert sorted(stored_keys(out).values()) == ["no_content", "not_json", "ok", "ok"]
    weird = score_run(out, ScoreOptions()).splits["shots"].tasks["WEIRD"]
    assert weird.ok == 2 and weird.failed == 2 and weird.statuses == {"no_content": 1, "not_json": 1, "ok": 2}
    assert any("2 failed (no_content 1, not_json 1)" in p for p in score_run(out, ScoreOptions()).problems)
    with FaultServer() as server:
        again = await run(config(server, sample_data_dir, out, tasks=["WEIRD"], split="shots", retry_errors=True))
    assert again.sent == 2 and set(stored_keys(out).values()) == {"ok"}


async def test_latency_and_queueing_are_stored_apart(sample_data_dir, tmp_path):
    clock = FakeClock()
    with FaultServer(script=["503"]) as server:
        await run(config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"], concurrency=1), clock=clock)
    replies = list(RunStore.open_existing(tmp_path / "run").replies())
    retried = [r for r in replies if r.attempts == 2]
    assert len(retried) == 1 and retried[0].wait_s >= 0 and clock.sleeps  # the backoff went through the clock
    assert all(r.latency_s is not None and r.queue_s is not None for r in replies)


async def test_a_rutie_turn_resent_by_retry_errors_does_not_flag_the_later_turns_as_changed(sample_data_dir, tmp_path):
    """Re-sending a failed turn gives the stored turns after it a new letter in their history: that is no
    change of the data or the builder, so the resume check leaves them alone (and sends only that turn)."""
    out = tmp_path / "run"
    with FaultServer(script=["ok", "400"], answers=["ОТВЕТ B"]) as server:
        first = await run(config(server, sample_data_dir, out, tasks=["ruTiE-Image"], rutie_history=2, concurrency=1))
    assert first.errors == 1
    with FaultServer(answers=["ОТВЕТ C"]) as server:
        again = await run(config(server, sample_data_dir, out, tasks=["ruTiE-Image"], rutie_history=2,
                                 retry_errors=True))
        assert server.chat_requests == 1
    assert again.sent == 1 and again.errors == 0 and set(stored_keys(out).values()) == {"ok"}
    with FaultServer() as server:  # and a plain resume afterwards checks and keeps everything
        assert (await run(config(server, sample_data_dir, out, tasks=["ruTiE-Image"], rutie_history=2))).sent == 0
