"""The run store: one row per sample, committed per reply, config-bound, no media inside."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from evaluator.client import Outcome
from evaluator.requests import RequestOptions, build_request
from evaluator.runner import reply_for
from evaluator.schema import ImageMedia, Reply, Sample
from evaluator.store import CONFIG_FILE, STORE_FILE, ExpectedSample, RunStore, StoreError
from tests.server_process import PROJECT_ROOT

CONFIG = {"model": "m", "params": {"temperature": 0.0, "max_tokens": 16}, "split": "test", "data": "local:/x"}


def reply(key_id: int = 1, status: str = "ok", task: str = "ruCLEVR", content: str | None = "A", **kw) -> Reply:
    return Reply(sample_key=f"{task}/-/test/{key_id}", task=task, domain=None, split="test", sample_id=key_id,
                 status=status, content=content if status == "ok" else None, **kw)


@pytest.fixture
def store(tmp_path):
    s = RunStore.open(tmp_path / "run", CONFIG)
    yield s
    s.close()


def test_record_is_an_upsert_one_row_per_sample(store):
    store.record(reply(1, "failed", error="ConnectError"))
    store.record(reply(1, "ok", content="B"))
    store.record(reply(2, "ok", content="C"))
    assert [r.sample_key for r in store.replies()] == ["ruCLEVR/-/test/1", "ruCLEVR/-/test/2"]
    got = store.get("ruCLEVR/-/test/1")
    assert got.status == "ok" and got.content == "B" and got.error is None and got.created_at is not None
    assert store.get("ruCLEVR/-/test/99") is None


def test_done_keys_leave_errors_to_be_retried_only_when_asked(store):
    store.record(reply(1, "ok"))
    store.record(reply(2, "failed", error="retries exhausted"))
    store.record(reply(3, "invalid_request", http_status=400, error="too long"))
    assert store.done_keys() == {"ruCLEVR/-/test/1"}
    assert store.done_keys(include_errors=True) == {f"ruCLEVR/-/test/{i}" for i in (1, 2, 3)}


def test_same_config_reopens_with_its_replies_and_writes_run_json(tmp_path):
    first = RunStore.open(tmp_path, CONFIG)
    first.record(reply(1))
    first.close()
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == CONFIG
    again = RunStore.open(tmp_path, json.loads(json.dumps(CONFIG)))  # equal content, different dict object
    assert again.done_keys() == {"ruCLEVR/-/test/1"} and again.run_config() == CONFIG
    again.close()


def test_a_changed_config_is_refused_and_names_what_changed(tmp_path):
    RunStore.open(tmp_path, CONFIG).close()
    changed = {**CONFIG, "params": {"temperature": 0.0, "max_tokens": 32}}
    with pytest.raises(StoreError, match=r"different configuration \(changed: params\)") as err:
        RunStore.open(tmp_path, changed)
    assert err.value.fix == "use a new --output folder for a new run"
    with pytest.raises(StoreError, match="model"):
        RunStore.open(tmp_path, {**CONFIG, "model": "other"})
    assert RunStore.open_existing(tmp_path).run_config() == CONFIG  # the old run is untouched


def test_open_existing_needs_a_store(tmp_path):
    with pytest.raises(StoreError, match="no run store"):
        RunStore.open_existing(tmp_path)


def test_expected_and_status_counts_show_what_is_missing(store):
    store.expect([ExpectedSample(f"ruCLEVR/-/test/{i}", "ruCLEVR", None, "test", i) for i in range(1, 4)])
    store.expect([("WEIRD/-/test/7", "WEIRD", None, "test", 7)])
    store.expect([ExpectedSample("ruCLEVR/-/test/1", "ruCLEVR", None, "test", 1)])  # registering twice is harmless
    store.record(reply(1, "ok"))
    store.record(reply(2, "failed", error="x"))
    assert [e.sample_id for e in store.expected(task="ruCLEVR")] == [1, 2, 3]
    assert store.status_counts() == {"ruCLEVR": {"ok": 1, "failed": 1, "missing": 1}, "WEIRD": {"missing": 1}}


def test_replies_filter_by_task_split_and_status(store):
    store.record(reply(1, "ok"))
    store.record(reply(2, "failed", error="x"))
    store.record(reply(5, "ok", task="WEIRD"))
    store.record(Reply(sample_key="ruCLEVR/-/shots/9", task="ruCLEVR", domain=None, split="shots", sample_id=9,
                       status="ok", content="D"))
    assert [r.sample_id for r in store.replies(task="ruCLEVR", split="test")] == [1, 2]
    assert sorted(r.sample_id for r in store.replies(status="ok", split="test")) == [1, 5]
    assert [r.sample_id for r in store.replies(split="shots")] == [9]


def test_a_committed_reply_survives_sigkill(tmp_path):
    """record() returns only once the reply is committed: a process killed right after keeps it."""
    script = textwrap.dedent(f"""
        import os, signal
        from evaluator.schema import Reply
        from evaluator.store import RunStore
        store = RunStore.open({str(tmp_path)!r}, {CONFIG!r})
        for i in range(50):
            store.record(Reply(sample_key=f"ruCLEVR/-/test/{{i}}", task="ruCLEVR", domain=None, split="test",
                               sample_id=i, status="ok", content=str(i)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == -9
    store = RunStore.open_existing(tmp_path)
    assert len(store.done_keys()) == 50 and store.get("ruCLEVR/-/test/49").content == "49"
    store.close()


def test_a_reader_sees_replies_while_the_writer_is_open(store, tmp_path):
    """WAL: scoring or `report` can read a run that is still being written."""
    store.record(reply(1))
    reader = RunStore.open_existing(tmp_path / "run")
    store.record(reply(2))
    assert len(list(reader.replies())) == 2
    reader.close()


def test_media_are_stored_only_as_hashes(tmp_path):
    """A sample with a 50 KB image: its base64 never reaches the store, only the request digest."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    image = buf.getvalue()
    sample = Sample(task="ruCLEVR", split="test", index=0, id=3, instruction="Изображение:<image>\n{question}",
                    inputs={"question": "Сколько кубов?"}, media={"image": ImageMedia(image)}, outputs="2",
                    meta={"id": 3})
    request = build_request(sample, RequestOptions())
    assert base64.b64encode(image).decode()[:64] in json.dumps(request.messages)  # it was sent ...
    store = RunStore.open(tmp_path, CONFIG)
    store.record(reply_for(sample, Outcome("ok", content="2", http_status=200, attempts=1), request))
    store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(STORE_FILE))
    assert base64.b64encode(image)[:64] not in stored and b"base64," not in stored  # ... but never stored
    row = sqlite3.connect(tmp_path / STORE_FILE).execute("SELECT body FROM replies").fetchone()[0]
    assert json.loads(row)["request_digest"] == request.digest and len(row) < 2000


def test_writes_from_several_threads_do_not_collide(store):
    """The runner registers samples from a data thread while the event loop records replies and a
    dialogue task registers its own: one connection, so writes must not nest transactions."""
    import threading

    errors: list[BaseException] = []

    def expect_many(task: str) -> None:
        try:
            for i in range(300):
                store.expect([ExpectedSample(f"{task}/-/test/{i}", task, None, "test", i)])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    def record_many() -> None:
        try:
            for i in range(300):
                store.record(reply(i, "ok", task="WEIRD"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=expect_many, args=(t,)) for t in ("ruCLEVR", "ruTiE-Image")]
    threads.append(threading.Thread(target=record_many))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    counts = store.status_counts()
    assert counts["ruCLEVR"] == {"missing": 300} and counts["WEIRD"] == {"ok": 300}


# --- one writer, honest under write failures, schema-aware -------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_close(tmp_path):
    import os

    from evaluator.store import RunFolderBusy

    first = RunStore.open(tmp_path, CONFIG)
    with pytest.raises(RunFolderBusy) as err:
        RunStore.open(tmp_path, CONFIG)
    assert f"in use by another mera-eval run (pid {os.getpid()} on " in str(err.value)
    reader = RunStore.open_existing(tmp_path)  # readers (score, report) need no lock
    first.record(reply(1))
    assert reader.done_keys() == {"ruCLEVR/-/test/1"}
    first.close()
    RunStore.open(tmp_path, CONFIG).close()


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from evaluator.store import RunStore
        RunStore.open({str(tmp_path)!r}, {CONFIG!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, timeout=120).returncode == -9
    RunStore.open(tmp_path, CONFIG).close()  # no stale lock to clean up by hand


def test_a_reply_whose_write_failed_stays_in_memory_and_goes_with_the_next_write(store, monkeypatch):
    from evaluator.store import StoreWriteError

    full = {"on": True}

    def hook(op):
        if full["on"]:
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(hook))
    with pytest.raises(StoreWriteError) as err:
        store.record(reply(1))
    assert "database or disk is full" in str(err.value) and err.value.exit_code == 1
    assert store.unsaved == 1 and store.done_keys() == set()
    full["on"] = False
    store.record(reply(2))
    assert store.unsaved == 0 and store.done_keys() == {"ruCLEVR/-/test/1", "ruCLEVR/-/test/2"}


def test_what_cannot_be_committed_at_close_is_rescued_and_imported_by_the_next_writer(tmp_path, monkeypatch):
    from evaluator.store import RESCUE_FILE, StoreWriteError

    monkeypatch.setattr("time.sleep", lambda s: None)  # close() retries with pauses
    store = RunStore.open(tmp_path, CONFIG)
    store.record(reply(1))
    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(lambda op: (_ for _ in ()).throw(
        sqlite3.OperationalError("attempt to write a readonly database"))))
    for i in (2, 3):
        with pytest.raises(StoreWriteError):
            store.record(reply(i, "ok", content=f"answer {i}"))
    store.close()
    assert store.rescued_to == tmp_path / RESCUE_FILE and len((tmp_path / RESCUE_FILE).read_text().splitlines()) == 2
    monkeypatch.setattr(RunStore, "fault_hook", None)
    again = RunStore.open(tmp_path, CONFIG)
    assert again.done_keys() == {f"ruCLEVR/-/test/{i}" for i in (1, 2, 3)}
    assert again.get("ruCLEVR/-/test/3").content == "answer 3" and not (tmp_path / RESCUE_FILE).exists()
    again.close()


def test_a_rescue_file_in_the_temp_dir_is_found_when_the_folder_was_not_writable(tmp_path, monkeypatch):
    from evaluator.store import rescue_paths

    store = RunStore.open(tmp_path, CONFIG)
    store.close()
    elsewhere = rescue_paths(tmp_path)[1]
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    elsewhere.write_text(reply(7).model_dump_json() + "\n")
    again = RunStore.open(tmp_path, CONFIG)
    assert again.done_keys() == {"ruCLEVR/-/test/7"} and not elsewhere.exists()
    again.close()


def test_a_folder_from_an_older_store_schema_is_read_but_not_resumed(tmp_path):
    from evaluator.store import StoreSchemaError

    RunStore.open(tmp_path, CONFIG).close()
    with sqlite3.connect(tmp_path / STORE_FILE) as conn:  # what schema 1 wrote: a config, no schema row
        conn.execute("DELETE FROM run WHERE key='schema'")
        conn.execute("DROP TABLE datasets")
    with pytest.raises(StoreSchemaError) as err:
        RunStore.open(tmp_path, CONFIG)
    line = err.value.one_line()
    assert "written by an older mera-eval (run store schema 1, this one uses 2)" in line
    assert "`score`, `report` and `submit` still read it" in line and "new --output folder" in line
    old = RunStore.open_existing(tmp_path)
    assert old.run_config() == CONFIG and list(old.replies()) == []
    old.close()


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        RunStore.open(tmp_path / "run", CONFIG)


def test_the_config_without_the_model_is_compared_before_the_model_is_known(tmp_path):
    config = {**CONFIG, "params": {**CONFIG["params"], "model": "m"}}
    RunStore.open(tmp_path, config).close()
    store = RunStore.open_for_run(tmp_path)
    store.check_config({**config, "model": "", "params": {**config["params"], "model": ""}}, model_known=False)
    with pytest.raises(StoreError, match=r"changed: params"):
        store.check_config({**config, "model": "", "params": {"temperature": 0.5, "model": ""}}, model_known=False)
    with pytest.raises(StoreError, match=r"changed: model"):
        store.bind({**config, "model": "other"})
    store.close()


async def test_replies_arriving_in_one_loop_turn_share_one_commit_and_each_caller_waits_for_it(store, monkeypatch):
    commits = []
    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(lambda op: commits.append(op)))
    await asyncio.gather(*(store.record_grouped(reply(i)) for i in range(1, 33)))
    assert commits == ["record"] and store.unsaved == 0 and len(store.done_keys()) == 32
    await store.record_grouped(reply(40))  # a later turn: a commit of its own, done when the call returns
    assert commits == ["record", "record"] and "ruCLEVR/-/test/40" in store.done_keys()


async def test_a_failed_group_commit_raises_in_every_caller_and_keeps_the_replies_for_the_next_write(store,
                                                                                                 monkeypatch):
    from evaluator.store import StoreWriteError

    full = {"on": True}

    def hook(op):
        if full["on"]:
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(hook))
    results = await asyncio.gather(*(store.record_grouped(reply(i)) for i in (1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, StoreWriteError) and "disk is full" in str(r) for r in results)
    assert store.unsaved == 3 and store.done_keys() == set()
    full["on"] = False
    await store.record_grouped(reply(4))
    assert store.unsaved == 0 and len(store.done_keys()) == 4


async def test_a_bug_in_a_group_commit_reaches_every_caller_instead_of_leaving_them_waiting(store, monkeypatch):
    def hook(op):
        raise RuntimeError("a bug in writing")

    monkeypatch.setattr(RunStore, "fault_hook", staticmethod(hook))
    results = await asyncio.wait_for(
        asyncio.gather(*(store.record_grouped(reply(i)) for i in (1, 2)), return_exceptions=True), 5)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError] and store.unsaved == 2


async def test_a_cancelled_caller_does_not_cancel_the_commit_of_its_group(store):
    waiting = [asyncio.ensure_future(store.record_grouped(reply(i))) for i in (1, 2)]
    await asyncio.sleep(0)  # both joined the group; its commit is scheduled
    waiting[0].cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert store.done_keys() == {"ruCLEVR/-/test/1", "ruCLEVR/-/test/2"}
