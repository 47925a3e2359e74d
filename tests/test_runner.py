"""The runner in process against the loopback fault server: one queue across tasks, requests built
off the event loop a bounded number ahead, bad samples recorded, progress reported, the model read
from the endpoint, a run that starts before its endpoint is up."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from evaluator import runner as runner_module
from evaluator.client import RetryPolicy
from evaluator.data import DataSource
from evaluator.requests import RequestOptions, SampleError, build_request
from evaluator.runner import RunConfig, StartGate, run
from evaluator.schema import GenerationParams
from evaluator.store import RunStore
from tests.fake_clock import FakeClock
from tests.faults import FaultServer

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_downtime_s=60)
TASKS = ["WEIRD", "ruCLEVR", "ruEnvAQA"]  # 4 test samples each in the sample data


def config(server: FaultServer, data_dir, out, **kw) -> RunConfig:
    kw.setdefault("options", RequestOptions(params=GenerationParams(model="")))
    return RunConfig(endpoints=[server.base_url], output=out, tasks=kw.pop("tasks", TASKS),
                     source=DataSource(data_dir=data_dir), retry=FAST, **kw)


def on_each_request(server: FaultServer, hook) -> None:
    """Call `hook()` as each request reaches the fault server, before it is answered."""
    original = server._behave

    async def watch(behaviour, payload, writer):
        hook()
        return await original(behaviour, payload, writer)

    server._behave = watch


async def test_one_queue_keeps_every_slot_busy_across_tasks(sample_data_dir, tmp_path):
    """12 samples of 3 tasks, 8 slots: the server holds 8 at once, so tasks overlap (no per-task barrier)."""
    with FaultServer(default="slow:0.3") as server:
        summary = await run(config(server, sample_data_dir, tmp_path / "run", concurrency=8))
        assert server.max_in_flight == 8 and server.chat_requests == 12
    assert summary.sent == 12 and summary.errors == 0
    assert {t: p.done for t, p in summary.progress.items()} == {t: 4 for t in TASKS}


async def test_requests_are_built_in_worker_threads_a_bounded_number_ahead(sample_data_dir, tmp_path, monkeypatch):
    built: list[str] = []
    on_loop: list[str] = []
    lock = threading.Lock()

    def spy(sample, options):
        try:
            asyncio.get_running_loop()
            on_loop.append(sample.key)  # base64 encoding on the event loop would stall every request
        except RuntimeError:
            pass
        with lock:
            built.append(sample.key)
        return build_request(sample, options)

    monkeypatch.setattr(runner_module, "build_request", spy)
    ahead: list[int] = []
    with FaultServer(default="slow:0.2") as server:
        on_each_request(server, lambda: ahead.append(len(built) - server.chat_requests))  # built, not yet there
        await run(config(server, sample_data_dir, tmp_path / "run", concurrency=2))
    assert len(built) == 12 and not on_loop
    # built but not yet at the server: at most the slots' own, the ready ones (2: min(slots, BUILD_AHEAD))
    # and one per builder (2: min(slots, BUILDERS)) waiting for room, never the whole run's
    assert max(ahead) <= 2 + 2 + 2


async def test_the_first_requests_leave_together_once_every_slot_has_one_built(sample_data_dir, tmp_path,
                                                                             monkeypatch):
    """Two builders, 0.15 s a build: the 8 slots' first requests are ready over 0.6 s. They reach the server
    as one batch, not as a ramp of 2 every 0.15 s. Afterwards nothing waits for anything but a free slot."""
    def slow(sample, options):
        time.sleep(0.15)
        return build_request(sample, options)

    monkeypatch.setattr(runner_module, "build_request", slow)
    monkeypatch.setattr(runner_module, "BUILDERS", 2)
    arrivals: list[float] = []
    with FaultServer(default="slow:0.2") as server:
        on_each_request(server, lambda: arrivals.append(time.monotonic()))
        await run(config(server, sample_data_dir, tmp_path / "run", concurrency=8))
    first = sorted(arrivals)[:8]
    assert len(arrivals) == 12 and first[-1] - first[0] < 0.15  # one batch (a ramp spans 0.45 s)


async def test_the_next_request_is_built_while_the_slot_is_busy(sample_data_dir, tmp_path, monkeypatch):
    """One slot, 0.3 s at the server, 0.2 s a build: the next request is ready when the reply comes back,
    so requests arrive ~0.3 s apart, not 0.5 s (a build after each reply)."""
    def slow(sample, options):
        time.sleep(0.2)
        return build_request(sample, options)

    monkeypatch.setattr(runner_module, "build_request", slow)
    arrivals: list[float] = []
    with FaultServer(default="slow:0.3") as server:
        on_each_request(server, lambda: arrivals.append(time.monotonic()))
        await run(config(server, sample_data_dir, tmp_path / "run", concurrency=1, tasks=["ruCLEVR"]))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 4 and max(gaps) < 0.45, gaps


async def test_the_start_gate_opens_when_every_sender_is_ready_or_gone_or_after_its_longest_wait():
    gate = StartGate(3, max_wait_s=10)
    waiting = [asyncio.ensure_future(gate.ready()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)
    gate.leave()  # the third sender had nothing to send
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    await asyncio.wait_for(gate.ready(), 0.1)  # open for good

    slow = StartGate(2, max_wait_s=0.05)  # the second sender's first build takes long: wait no longer than that
    started = time.monotonic()
    await asyncio.wait_for(slow.ready(), 1)
    assert 0.04 < time.monotonic() - started < 0.5


async def test_a_bad_sample_is_recorded_and_the_run_goes_on(sample_data_dir, tmp_path, monkeypatch):
    def flaky(sample, options):
        if sample.task == "ruCLEVR" and sample.index == 1:
            raise SampleError(sample.key, "2 <image> placeholders but 1 image")
        return build_request(sample, options)

    monkeypatch.setattr(runner_module, "build_request", flaky)
    with FaultServer() as server:
        summary = await run(config(server, sample_data_dir, tmp_path / "run", concurrency=4))
        assert server.chat_requests == 11
    assert summary.errors == 1 and summary.progress["ruCLEVR"].errors == 1
    store = RunStore.open_existing(tmp_path / "run")
    (bad,) = store.replies(status="not_sent")
    assert bad.task == "ruCLEVR" and "placeholders" in bad.error and bad.content is None and bad.http_status is None


async def test_progress_hooks_count_to_the_totals_and_resume_counts_skips(sample_data_dir, tmp_path):
    seen: dict[str, tuple[int | None, int, int]] = {}

    def on_progress(task, p):
        seen[task] = (p.total, p.done, p.skipped)

    with FaultServer() as server:
        await run(config(server, sample_data_dir, tmp_path / "run", concurrency=4, limit=3), on_progress)
        assert seen == {t: (3, 3, 0) for t in TASKS}
        await run(config(server, sample_data_dir, tmp_path / "run", concurrency=4), on_progress)  # limit lifted
        assert seen == {t: (4, 1, 3) for t in TASKS}
        assert server.chat_requests == 12 and len(server.per_prompt) == 12


async def test_the_model_comes_from_the_endpoint_when_not_given(sample_data_dir, tmp_path):
    with FaultServer() as server:
        await run(config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"]))
        assert {b["model"] for b in server.bodies} == {"fault-model"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"] == "fault-model"


async def test_a_run_started_before_its_endpoint_waits_for_it(sample_data_dir, tmp_path):
    server = FaultServer()
    clock, notices = FakeClock(), []
    clock.at(45, server.start)  # the server comes up 45 s after the run started
    try:
        cfg = config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"])
        summary = await run(cfg, on_notice=notices.append, clock=clock)
        assert summary.sent == 4 and summary.errors == 0
        assert notices[0] == f"waiting for {server.base_url}: connection refused (0 s, up to 10 min)"
        assert 45 <= clock.now - 1000 < 55
    finally:
        server.close()


@pytest.mark.parametrize("retry_errors, resent", [(False, 0), (True, 1)])
async def test_recorded_failures_are_resent_only_with_retry_errors(sample_data_dir, tmp_path, retry_errors, resent):
    with FaultServer(script=["400"]) as server:
        first = await run(config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"], concurrency=1))
    assert first.errors == 1
    with FaultServer() as server:
        again = await run(config(server, sample_data_dir, tmp_path / "run", tasks=["WEIRD"], retry_errors=retry_errors))
        assert server.chat_requests == resent
    assert again.progress["WEIRD"].skipped == 4 - resent
    assert again.errors == 1 - resent  # a failure kept in the store still counts (exit status, summary)
    statuses = {r.status for r in RunStore.open_existing(tmp_path / "run").replies()}
    assert statuses == ({"ok"} if retry_errors else {"ok", "invalid_request"})


# The sample files MERA's scripts/log_to_submission.py (@0f32158) looks for: `samples_<name>_*.json*`
# for each of these names, newest first by the timestamp after the last "_" (%Y-%m-%dT%H-%M-%S.%f).
MERA_SAMPLE_FILES = [
    "unisciencevqa_applied_sciences", "unisciencevqa_business", "unisciencevqa_cultural_studies",
    "unisciencevqa_fundamental_sciences", "unisciencevqa_social_sciences", "unisciencevqa_health_and_medicine",
    "schoolsciencevqa_biology", "schoolsciencevqa_chemistry", "schoolsciencevqa_physics",
    "schoolsciencevqa_earth_science", "schoolsciencevqa_history_all", "schoolsciencevqa_history_ru",
    "schoolsciencevqa_economics", "runaturalsciencevqa_biology", "runaturalsciencevqa_chemistry",
    "runaturalsciencevqa_physics", "runaturalsciencevqa_earth_science", "ruhhh_image", "weird", "ruclevr",
    "rucommonvqa", "realvqa", "rumathvqa", "labtabvqa", "aquaria", "ruenvaqa", "realvideoqa", "ruhhh_video",
    "commonvideoqa", "rutie_vision", "rutie_audio", "ruslun",
]  # fmt: skip


async def test_exports_are_what_meras_log_to_submission_reads_and_carry_no_media(sample_data_dir, tmp_path):
    from datetime import datetime

    from evaluator.export import TIMESTAMP_FORMAT

    out = tmp_path / "run"
    with FaultServer(answers=["ОТВЕТ B"]) as server:
        summary = await run(config(server, sample_data_dir, out, tasks=None, concurrency=16, rutie_history=2))
    assert summary.errors == 0
    store = RunStore.open_existing(out)
    ids_in_store = {(r.task, r.domain, r.sample_id) for r in store.replies()}
    exported = 0
    for name in MERA_SAMPLE_FILES:
        files = list((out / "samples").glob(f"samples_{name}_*.json*"))
        assert len(files) == 1, name
        stamp = files[0].name.split(".json")[0].split("_")[-1]
        datetime.strptime(stamp, TIMESTAMP_FORMAT)
        text = files[0].read_text(encoding="utf-8")
        assert "base64" not in text and "data:" not in text  # prompts logged as text, media stripped
        for line in text.splitlines():
            doc = json.loads(line)
            meta = doc["doc"]["meta"]
            doc_id = meta["id"] if "id" in meta else meta["question_id"] + 500 * meta["dialog_id"] + 11
            assert isinstance(doc_id, int) and doc["filtered_resps"][0] == "ОТВЕТ B"
            assert isinstance(doc["arguments"][0][0], str) and doc["doc_id"] in {i for *_, i in ids_in_store}
            exported += 1
    assert exported == len(ids_in_store) == server.chat_requests


async def test_a_row_whose_media_do_not_decode_is_recorded_and_the_run_goes_on(tmp_path):
    """A corrupt clip in the middle of a split: that sample is stored as not sent, naming the row and the
    decoder's error; every other sample is sent and answered."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.media_factory import audio_bytes

    rows = [{"instruction": "<audio>{question}", "inputs": {"question": f"q{i}", "audio": {
        "bytes": b"RIFF\0\0\0\0WAVEjunk" if i == 1 else audio_bytes(1.0, rate=44100), "path": f"{i}.wav"}},
        "outputs": "A", "meta": {"id": i}} for i in range(3)]
    path = tmp_path / "data" / "MERA-evaluation" / "ruEnvAQA" / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    with FaultServer() as server:
        summary = await run(config(server, tmp_path / "data", tmp_path / "run", tasks=["ruEnvAQA"]))
        assert server.chat_requests == 2
    assert summary.errors == 1 and summary.progress["ruEnvAQA"].done == 3
    store = RunStore.open_existing(tmp_path / "run")
    (bad,) = store.replies(status="not_sent")
    assert bad.sample_id == 1 and bad.error.startswith("ruEnvAQA/-/test row 1 (id 1): cannot decode audio")
    assert len(list(store.replies(status="ok"))) == 2
