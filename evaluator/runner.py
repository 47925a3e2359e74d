"""Orchestration: local checks, then the run store, then the endpoint; then samples -> requests (in worker
threads) -> client -> store, as one task group.

`run` checks everything it can without the network first (endpoint URLs, tasks, the data folder and its
layout, the output folder, the stored configuration as far as it is known without the model name),
then opens and locks the store, resolves the datasets' revisions, and only then waits for the endpoint.

One queue feeds every task, so the server always has `concurrency` requests in flight while the
dataset is streamed (never loaded whole, by a daemon thread) and media are encoded off the event loop
by a few builders, a bounded number of requests ahead of the senders (one per slot). The first
requests leave together, once every sender has one (`StartGate`), so the server starts on a full
batch. Each reply is persisted the moment it arrives (the replies of one event-loop turn share a
commit). ruTiE's dialogues are handed to `evaluator.dialogue` (turns in order within a dialogue,
dialogues in parallel).

Structured: the producer, the builders, the senders and the dialogues are one `asyncio.TaskGroup`. A
per-sample problem (a sample that cannot be built, a 4xx, retries exhausted, a reply that is not an
answer) is recorded for that sample and the run goes on; anything else (a refused key, a dead endpoint,
a full disk, a changed request on resume, a bug) cancels the group at once, keeps every reply already
received, and surfaces as one `UserError` naming the cause. Ctrl-C becomes `RunInterrupted`, saying what is stored.
On resume the request each stored sample would get now is rebuilt and compared with the stored digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from evaluator.client import ChatClient, Outcome, RetryPolicy
from evaluator.concurrency import DEFAULT_CONCURRENCY, ConcurrencyChoice, choose_concurrency
from evaluator.data import DataSource, SplitRows, count_samples, iter_samples
from evaluator.data_identity import resolve_revisions
from evaluator.endpoints import Notice, normalise_endpoint
from evaluator.errors import UserError
from evaluator.export import export_samples
from evaluator.http_policy import Clock
from evaluator.limits import check_run as check_media_limits
from evaluator.limits import sample_problem as media_limit_problem
from evaluator.registry import TASKS, TaskSpec, resolve_tasks
from evaluator.requests import (
    RequestOptions,
    SampleError,
    build_request,
    builder_fingerprint,
    generation_for,
    question_text,
    source_digest,
)
from evaluator.runinfo import invocation_record
from evaluator.schema import ChatRequest, Reply, Sample, Split
from evaluator.store import ExpectedSample, RunStore, StoreWriteError
from evaluator.structured import ThreadFeed, primary_cause

log = logging.getLogger(__name__)

EXPECT_BATCH = 256  # expected samples written per commit
# Requests are built by as many tasks as the default executor has threads (more would only queue for
# them) and kept ready, at most BUILD_AHEAD (each holds its encoded media), for the next free slot: a
# burst of answers is followed by a burst of requests, not by a round of thread hops (measured on the dev
# server: the server's mean latency per request was ~10% higher with requests built only after a slot freed).
BUILDERS = min(32, (os.cpu_count() or 1) + 4)
BUILD_AHEAD = 64
START_WAIT_S = 1.0  # the longest the first requests wait for the others to be built (StartGate)


class RunConfig(BaseModel):
    endpoints: list[str]
    output: Path
    tasks: list[str] | None = None
    split: Split = "test"
    source: DataSource = Field(default_factory=DataSource)
    limit: int | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0, description="Requests in flight; None: chosen from what the "
                                    "server says (evaluator/concurrency.py), after it is ready.")
    api_key: str | None = Field(None, exclude=True)
    options: RequestOptions = Field(default_factory=RequestOptions)
    timeouts: dict[str, float] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    retry_errors: bool = False
    rebuild_changed: bool = Field(False, description="Re-send stored samples whose request would differ now.")
    wait_s: float = Field(600.0, ge=0, description="How long to wait for an endpoint to become ready.")
    rutie_history: int = Field(5, ge=0, description="ruTiE dialogue history length (the official num_fewshot).")
    rutie_history_format: Literal["official", "formatted"] = "official"
    # The server's --limit-mm-per-prompt (mera-serve's defaults): a setting over it refuses the run up front,
    # a sample or ruTiE turn over it is recorded with the reason, not sent (evaluator/limits.py).
    mm_limits: dict[str, int] = Field(default_factory=lambda: {"image": 6, "audio": 6, "video": 1})

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run. Task selection, limits, endpoints and concurrency may change
        between invocations of one run (resume, extend); anything that changes the answers may not. Which
        data exactly is each dataset's revision, kept by the store per task."""
        params = self.options.params
        return {
            "model": params.model,
            # the flags given explicitly, then what every task is generated with (registry + those flags)
            "params": params.model_dump(mode="json", include=params.model_fields_set - {"model"}),
            "generation": {name: generation_for(spec, params).model_dump(mode="json", exclude={"model"})
                           for name, spec in TASKS.items()},
            "media": self.options.model_dump(mode="json", exclude={"params"}),
            "split": self.split,
            "data": self.source.describe(),
            "rutie_history": self.rutie_history,
            "rutie_history_format": self.rutie_history_format,
        }


class RunInterrupted(UserError):
    """Ctrl-C (or a cancelled run): the store is consistent and the same command resumes."""

    exit_code = 130

    def __init__(self, message: str, *, stored: int, sent: int, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.stored, self.sent = stored, sent


class ChangedRequestError(UserError):
    """On resume, a stored sample would now get a different request than the one its reply answered."""


class RunAborted(UserError):
    """The run stopped on an unexpected error (a bug); the replies received are stored."""

    exit_code = 1


@dataclass
class TaskProgress:
    total: int | None = None
    done: int = 0
    errors: int = 0
    skipped: int = 0  # already in the store


@dataclass
class RunSummary:
    progress: dict[str, TaskProgress]
    seconds: float
    sent: int
    retries: int
    output: Path
    stored: int = 0  # replies in the store after this invocation
    rebuilt: int = 0  # stored samples re-sent because their request changed (--rebuild-changed)
    concurrency: ConcurrencyChoice | None = None  # what was in flight, and why

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.progress.values())

    @property
    def total(self) -> int:
        return sum(p.done + p.skipped for p in self.progress.values())


ProgressHook = Callable[[str, TaskProgress], None]


@dataclass
class DispatchContext:
    """What a task with its own control flow (ruTiE) gets from the runner."""

    client: ChatClient
    store: RunStore
    options: RequestOptions
    config: RunConfig
    dispatch: Callable[[Sample, ChatRequest], Awaitable[Reply]]  # send + persist; returns the stored reply
    record_error: Callable[[Sample, str], Reply]  # persist a sample that could not be sent
    progress: dict[str, TaskProgress] = field(default_factory=dict)
    on_progress: ProgressHook | None = None
    # For a stored turn: True to keep it (its request is unchanged), False to re-send it; raises otherwise.
    check_stored: Callable[..., bool] | None = None  # (sample, digest now or None, problem=None)


def reply_for(sample: Sample, outcome: Outcome, request: ChatRequest | None) -> Reply:
    try:
        question = question_text(sample)
    except SampleError:
        question = sample.instruction
    return Reply(
        sample_key=sample.key, task=sample.task, domain=sample.domain, split=sample.split, sample_id=sample.id,
        status=outcome.status, content=outcome.content if outcome.status == "ok" else None,
        finish_reason=outcome.finish_reason, http_status=outcome.http_status, error=outcome.error,
        attempts=outcome.attempts, latency_s=outcome.latency_s, queue_s=outcome.queue_s, wait_s=outcome.wait_s,
        evidence=outcome.evidence, prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens, endpoint=outcome.endpoint,
        request_digest=request.digest if request else None,
        source_digest=request.source_digest if request else None, question=question, gold=sample.outputs,
        meta=sample.meta,
    )  # fmt: skip


class StartGate:
    """Holds each sender's first request until every sender has one built (or has nothing to send), or
    `max_wait_s` after the first was ready, then lets them all go at once: the server starts on a full
    batch instead of a ramp of requests trickling out as the first samples are read and built (measured:
    0.2-1.1 s to reach 64 in flight without it). Open for good after that."""

    def __init__(self, senders: int, max_wait_s: float = START_WAIT_S) -> None:
        self._pending = senders
        self._max_wait_s = max_wait_s
        self._open = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    async def ready(self) -> None:
        """A sender with its first request built: wait for the others."""
        if self._timer is None and not self._open.is_set():
            self._timer = asyncio.get_running_loop().call_later(self._max_wait_s, self._open.set)
        self.leave()
        await self._open.wait()

    def leave(self) -> None:
        """A sender that is ready or will send nothing."""
        self._pending -= 1
        if self._pending <= 0:
            self._open.set()
            if self._timer is not None:
                self._timer.cancel()


class Runner:
    def __init__(self, config: RunConfig, store: RunStore, client: ChatClient,
                 on_progress: ProgressHook | None = None) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.on_progress = on_progress
        self.progress: dict[str, TaskProgress] = {}
        self.sent = 0
        self.rebuilt = 0
        # Stored replies that need no re-send, with the digest of the request each answered.
        self._stored = store.stored_digests(include_errors=not config.retry_errors)
        # Failures kept from an earlier invocation still count as errors (progress, summary, exit status).
        self._kept_errors = set(self._stored) - store.done_keys()

    def _tick(self, task: str) -> None:
        if self.on_progress:
            self.on_progress(task, self.progress[task])

    # --- one sample ------------------------------------------------------------------------------
    async def dispatch(self, sample: Sample, request: ChatRequest) -> Reply:
        outcome = await self.client.send(request)
        self.sent += 1
        reply = reply_for(sample, outcome, request)
        await self.store.record_grouped(reply)
        self._count(sample.task, reply)
        return reply

    def record_error(self, sample: Sample, problem: str) -> Reply:
        reply = reply_for(sample, Outcome("not_sent", error=problem), None)
        self.store.record(reply)
        self._count(sample.task, reply)
        return reply

    def _count(self, task: str, reply: Reply) -> None:
        progress = self.progress[task]
        progress.done += 1
        if reply.status != "ok":
            progress.errors += 1
            log.warning("%s: %s %s", reply.sample_key, reply.status, reply.error)
        self._tick(task)

    def check_stored(self, sample: Sample, digest_now: str | None, problem: str | None = None) -> bool:
        """A sample with a stored reply: True (skip it) when the request it would get now is the one its
        reply answered; False (re-send it) when that changed and --rebuild-changed; else refuse."""
        stored = self._stored.get(sample.key)
        if stored is None or stored.request == digest_now:
            progress = self.progress[sample.task]
            progress.skipped += 1
            progress.errors += sample.key in self._kept_errors
            self._tick(sample.task)
            return True
        if self.config.rebuild_changed:
            self.rebuilt += 1
            return False
        now = f"it cannot be built any more ({problem})" if problem else "it would get a different request now"
        raise ChangedRequestError(
            f"{sample.key}: {now} than the one its stored reply answered (the data, the media encoding or the "
            "request builder changed since)",
            fix="use a new --output folder, or pass --rebuild-changed to re-send the changed samples")

    async def _prepare(self, sample: Sample) -> ChatRequest | None:
        """The request to send for `sample`, or None when there is nothing to send (it is stored and
        unchanged, or it is recorded as not sendable)."""
        stored = sample.key in self._stored
        # over the server's media limits: recorded with the reason, never encoded or sent
        if problem := media_limit_problem(sample, self.config.options, self.config.mm_limits):
            if not (stored and self.check_stored(sample, None, problem)):
                self.record_error(sample, problem)
            return None
        # built from the same row, options and code as the stored reply's request: the same request
        if stored and (source := self._stored[sample.key].source) and source == await asyncio.to_thread(
                source_digest, sample, self.config.options):
            self.check_stored(sample, self._stored[sample.key].request)
            return None
        try:
            if sample.media:  # encoding media is CPU work: a worker thread
                request = await asyncio.to_thread(build_request, sample, self.config.options)
            else:  # text only: ~0.1 ms, less than the hop to a thread and back
                request = build_request(sample, self.config.options)
        except SampleError as exc:
            if not (stored and self.check_stored(sample, None, exc.problem)):
                self.record_error(sample, exc.problem)
            return None
        if stored and self.check_stored(sample, request.digest):
            return None
        return request

    # --- the run -----------------------------------------------------------------------------------
    async def run(self, specs: list[TaskSpec] | None = None, totals: dict[str, int | None] | None = None) -> None:
        specs = specs if specs is not None else resolve_tasks(self.config.tasks)
        for spec in specs:
            total = totals[spec.name] if totals is not None else count_samples(
                spec, self.config.split, self.config.source, limit=self.config.limit)
            self.progress[spec.name] = TaskProgress(total=total)
            self._tick(spec.name)
        # samples -> builders (worker threads) -> built requests -> senders (one per slot)
        builders = min(self.config.concurrency, BUILDERS)
        samples: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=builders * 2)
        built: asyncio.Queue[tuple[Sample, ChatRequest] | None] = asyncio.Queue(
            maxsize=min(self.config.concurrency, BUILD_AHEAD))
        self._builders_left = builders
        await asyncio.to_thread(builder_fingerprint)  # once, before any request is built (~50 ms)
        self._gate = StartGate(self.config.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                # Dialogues are long sequential chains: start them first so they never end up the tail of the run.
                for spec in specs:
                    if spec.dialogue:
                        group.create_task(self._run_dialogue(spec))
                for _ in range(self.config.concurrency):
                    group.create_task(self._send(built))
                for _ in range(builders):
                    group.create_task(self._build(samples, built))
                group.create_task(self._produce([s for s in specs if not s.dialogue], samples, builders))
        except BaseExceptionGroup as group_error:
            raise primary_cause(group_error) from None

    async def _produce(self, specs: list[TaskSpec], queue: asyncio.Queue[Sample | None], builders: int) -> None:
        # The samples read so far are written down in batches (a commit each): before the producer waits
        # for room in the queue, at each task's end, and when the run stops; a reply writes its own row.
        expected: list[ExpectedSample] = []
        try:
            for spec in specs:
                async with self._feed(spec) as feed:
                    async for sample in feed:
                        expected.append(ExpectedSample(sample.key, sample.task, sample.domain, sample.split,
                                                       sample.id))
                        if queue.full() or len(expected) >= EXPECT_BATCH:
                            self.store.expect(expected)
                            expected = []
                        await queue.put(sample)
                self.store.expect(expected)
                expected = []
                self._tick(spec.name)
        finally:
            if expected:
                with contextlib.suppress(StoreWriteError):  # a full disk is reported by the write that hit it
                    self.store.expect(expected)
        for _ in range(builders):
            await queue.put(None)

    def _feed(self, spec: TaskSpec) -> ThreadFeed[Sample]:
        """The task's samples, streamed by a daemon thread a couple of samples ahead."""
        return ThreadFeed(lambda: iter_samples(spec, self.config.split, self.config.source, limit=self.config.limit))

    async def _build(self, samples: asyncio.Queue[Sample | None],
                     built: asyncio.Queue[tuple[Sample, ChatRequest] | None]) -> None:
        """Requests built ahead of the senders: a slot that frees sends the next one at once."""
        while (sample := await samples.get()) is not None:
            if (request := await self._prepare(sample)) is not None:
                await built.put((sample, request))
        self._builders_left -= 1
        if self._builders_left == 0:  # the last builder ends the senders
            for _ in range(self.config.concurrency):
                await built.put(None)

    async def _send(self, built: asyncio.Queue[tuple[Sample, ChatRequest] | None]) -> None:
        first = True
        try:
            while (item := await built.get()) is not None:
                if first:
                    first = False
                    await self._gate.ready()
                await self.dispatch(*item)
        finally:
            if first:
                self._gate.leave()

    async def _run_dialogue(self, spec: TaskSpec) -> None:
        from evaluator import dialogue

        # Streamed: ids first, then each dialogue reads its own turns (never the whole split in memory).
        rows = SplitRows(spec, self.config.split, self.config.source, limit=self.config.limit)
        ctx = DispatchContext(client=self.client, store=self.store, options=self.config.options, config=self.config,
                              dispatch=self.dispatch, record_error=self.record_error, progress=self.progress,
                              on_progress=self.on_progress, check_stored=self.check_stored)
        await dialogue.run_task(spec, rows, ctx)


def _with_model(config: RunConfig, model: str) -> RunConfig:
    params = config.options.params.model_copy(update={"model": model})
    return config.model_copy(update={"options": config.options.model_copy(update={"params": params})})


def _pinned(config: RunConfig, specs: list[TaskSpec], revisions: dict[str, str]) -> RunConfig:
    commits = {s.hub_id: revisions[s.name].removeprefix("hf:") for s in specs if revisions[s.name].startswith("hf:")}
    return config.model_copy(update={"source": config.source.model_copy(update={"commits": commits})})


async def run(config: RunConfig, on_progress: ProgressHook | None = None, on_notice: Notice | None = None, *,
              clock: Clock | None = None) -> RunSummary:
    """Run (or resume) a whole evaluation; returns per-task counts. The store lives in `config.output`.

    Raises a `UserError` for every way a run can stop early (the CLI prints its one line):
    `RunInterrupted` on Ctrl-C, the endpoint's errors, `StoreWriteError`, `ChangedRequestError`,
    `DataError`, and `RunAborted` wrapping anything unexpected."""
    started = time.monotonic()
    invocation = invocation_record(config.endpoints, time.time())  # for the report: when, against what
    # 1. Local checks, no network: endpoint URLs, tasks, the data folder and its layout (row counts).
    endpoints = [normalise_endpoint(url) for url in config.endpoints]
    specs = resolve_tasks(config.tasks)
    check_media_limits(specs, config.options, config.mm_limits)  # a setting over the server's limits
    totals = {spec.name: count_samples(spec, config.split, config.source, limit=config.limit) for spec in specs}
    # 2. The store, locked; the stored configuration compared as far as it is known without the model.
    store = RunStore.open_for_run(config.output)
    model_known = bool(config.options.params.model)
    runner: Runner | None = None
    error: BaseException | None = None
    try:
        store.check_config(config.identity(), model_known=model_known)
        revisions = resolve_revisions(specs, config.split, config.source, store.dataset_revisions(),
                                      accept_changes=config.rebuild_changed)
        config = _pinned(config, specs, revisions)
        # 3. The endpoint.
        async with ChatClient(endpoints, api_key=config.api_key, concurrency=config.concurrency or DEFAULT_CONCURRENCY,
                              timeouts=config.timeouts, retry=config.retry, clock=clock, on_notice=on_notice) as client:
            await client.wait_ready(config.wait_s)
            chosen = await choose_concurrency(client.pool, config.concurrency)
            client.set_concurrency(chosen.value)
            config = config.model_copy(update={"concurrency": chosen.value})
            invocation["concurrency"] = chosen.record()
            (on_notice or log.info)(f"concurrency {chosen.value} ({chosen.reason})")
            if not model_known:
                config = _with_model(config, await client.served_model())
            store.bind(config.identity())
            store.set_dataset_revisions(revisions)
            store.record_invocation(invocation)
            runner = Runner(config, store, client, on_progress)
            await runner.run(specs, totals)
            try:
                export_samples(store, config.output / "samples")
            except OSError as exc:
                raise StoreWriteError(f"cannot write the sample logs in {config.output / 'samples'} ({exc.strerror})",
                                      fix="free some space; the replies are stored, `mera-eval run` again "
                                      "rewrites the logs") from None
            return RunSummary(runner.progress, time.monotonic() - started, runner.sent, client.retries,
                              config.output, stored=store.count(), rebuilt=runner.rebuilt, concurrency=chosen)
    except asyncio.CancelledError:
        error = RunInterrupted(f"interrupted: {store.count()} replies are stored in {config.output}",
                               stored=store.count(), sent=runner.sent if runner else 0,
                               fix="run the same command to resume")
    except StoreWriteError as exc:
        error = exc
    except UserError:
        raise
    except Exception as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else ""
        error = RunAborted(f"stopped by an unexpected error ({type(exc).__name__}: {exc}){where}; "
                           f"{store.count()} replies are stored and the same command resumes",
                           fix="this is a bug in mera-eval: please report it (--debug shows the traceback)")
        error.__cause__ = exc
    finally:
        if runner is not None:  # an end is recorded for interrupted invocations too
            with contextlib.suppress(StoreWriteError):  # a full disk is reported as such, not as this
                store.record_invocation({**invocation, "ended_at": time.time(), "sent": runner.sent})
        store.close()
        if store.rescued_to is not None and not isinstance(error, StoreWriteError):
            (on_notice or log.warning)(f"some received replies could not be stored; they are saved in "
                                       f"{store.rescued_to} and the next run imports them")
    if isinstance(error, StoreWriteError):
        if store.rescued_to is not None:
            kept = f"the replies it could not store are saved in {store.rescued_to} and the next run imports them"
        else:
            kept = "every reply received is stored"
        error = StoreWriteError(f"{error}; stopped sending; {kept}", fix=error.fix)
    raise error
