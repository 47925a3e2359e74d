"""Orchestration: samples -> requests (in worker threads) -> client -> store, with progress.

One queue feeds every task, so the server always has `concurrency` requests in flight while the
dataset is streamed (never loaded whole) and media are encoded off the event loop, a bounded
number of samples ahead. Each reply is persisted the moment it arrives. ruTiE's dialogues are
handed to `evaluator.dialogue` (turns in order within a dialogue, dialogues in parallel).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from evaluator.client import ChatClient, Outcome, RetryPolicy
from evaluator.data import DataSource, count_samples, iter_samples
from evaluator.export import export_samples
from evaluator.registry import TaskSpec, resolve_tasks
from evaluator.requests import RequestOptions, SampleError, build_request, question_text
from evaluator.runinfo import invocation_record
from evaluator.schema import ChatRequest, Reply, Sample, Split
from evaluator.store import ExpectedSample, RunStore

log = logging.getLogger(__name__)


class RunConfig(BaseModel):
    endpoints: list[str]
    output: Path
    tasks: list[str] | None = None
    split: Split = "test"
    source: DataSource = Field(default_factory=DataSource)
    limit: int | None = Field(None, gt=0)
    concurrency: int = Field(64, gt=0)
    api_key: str | None = Field(None, exclude=True)
    options: RequestOptions = Field(default_factory=RequestOptions)
    timeouts: dict[str, float] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    retry_errors: bool = False
    rutie_history: int = Field(5, ge=0, description="ruTiE dialogue history length (the official num_fewshot).")
    rutie_history_format: Literal["official", "formatted"] = "official"
    # The server's --limit-mm-per-prompt (mera-serve's defaults): ruTiE turns over it are reported, not sent.
    mm_limits: dict[str, int] = Field(default_factory=lambda: {"image": 6, "audio": 6, "video": 1})

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run. Task selection, limits, endpoints and concurrency may change
        between invocations of one run (resume, extend); anything that changes the answers may not."""
        return {
            "model": self.options.params.model,
            "params": self.options.params.model_dump(mode="json"),
            "media": self.options.model_dump(mode="json", exclude={"params"}),
            "split": self.split,
            "data": self.source.describe(),
            "rutie_history": self.rutie_history,
            "rutie_history_format": self.rutie_history_format,
        }


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


def reply_for(sample: Sample, outcome: Outcome, request: ChatRequest | None) -> Reply:
    try:
        question = question_text(sample)
    except SampleError:
        question = sample.instruction
    return Reply(
        sample_key=sample.key, task=sample.task, domain=sample.domain, split=sample.split, sample_id=sample.id,
        status=outcome.status, content=outcome.content if outcome.status == "ok" else None,
        finish_reason=outcome.finish_reason, http_status=outcome.http_status, error=outcome.error,
        attempts=outcome.attempts, latency_s=outcome.latency_s, prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens, endpoint=outcome.endpoint,
        request_digest=request.digest if request else None, question=question, gold=sample.outputs,
        meta=sample.meta,
    )  # fmt: skip


class Runner:
    def __init__(self, config: RunConfig, store: RunStore, client: ChatClient,
                 on_progress: ProgressHook | None = None) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.on_progress = on_progress
        self.progress: dict[str, TaskProgress] = {}
        self.sent = 0
        self._done = store.done_keys(include_errors=not config.retry_errors)
        # Failures kept from an earlier invocation still count as errors (progress, summary, exit status).
        self._kept_errors = self._done - store.done_keys()

    def _tick(self, task: str) -> None:
        if self.on_progress:
            self.on_progress(task, self.progress[task])

    # --- one sample ------------------------------------------------------------------------------
    async def dispatch(self, sample: Sample, request: ChatRequest) -> Reply:
        outcome = await self.client.send(request)
        self.sent += 1
        reply = reply_for(sample, outcome, request)
        self.store.record(reply)
        self._count(sample.task, reply)
        return reply

    def record_error(self, sample: Sample, problem: str) -> Reply:
        reply = reply_for(sample, Outcome("invalid_request", error=f"bad sample: {problem}"), None)
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

    async def _process(self, sample: Sample) -> None:
        try:
            request = await asyncio.to_thread(build_request, sample, self.config.options)
        except SampleError as exc:
            self.record_error(sample, exc.problem)
            return
        await self.dispatch(sample, request)

    # --- the run -----------------------------------------------------------------------------------
    def _pending(self, spec: TaskSpec):
        """Samples of a task not yet in the store (registered as expected as they stream by)."""
        for sample in iter_samples(spec, self.config.split, self.config.source, limit=self.config.limit):
            self.store.expect([ExpectedSample(sample.key, sample.task, sample.domain, sample.split, sample.id)])
            if sample.key in self._done:
                self.progress[spec.name].skipped += 1
                self.progress[spec.name].errors += sample.key in self._kept_errors
                continue
            yield sample

    async def run(self) -> None:
        specs = resolve_tasks(self.config.tasks)
        for spec in specs:
            total = count_samples(spec, self.config.split, self.config.source, limit=self.config.limit)
            self.progress[spec.name] = TaskProgress(total=total)
            self._tick(spec.name)
        queue: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=self.config.concurrency * 2)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.config.concurrency)]
        # Dialogues are long sequential chains: start them first so they never end up the tail of the run.
        dialogue_jobs = [asyncio.create_task(self._run_dialogue(spec)) for spec in specs if spec.dialogue]
        try:
            for spec in specs:
                if spec.dialogue:
                    continue
                iterator = self._pending(spec)
                while (sample := await asyncio.to_thread(next, iterator, None)) is not None:
                    await queue.put(sample)
                self._tick(spec.name)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers, *dialogue_jobs)
        finally:
            for task in [*workers, *dialogue_jobs]:
                task.cancel()

    async def _worker(self, queue: asyncio.Queue[Sample | None]) -> None:
        while (sample := await queue.get()) is not None:
            await self._process(sample)

    async def _run_dialogue(self, spec: TaskSpec) -> None:
        from evaluator import dialogue

        samples = await asyncio.to_thread(
            lambda: list(iter_samples(spec, self.config.split, self.config.source, limit=self.config.limit))
        )
        self.store.expect([ExpectedSample(s.key, s.task, s.domain, s.split, s.id) for s in samples])
        ctx = DispatchContext(client=self.client, store=self.store, options=self.config.options, config=self.config,
                              dispatch=self.dispatch, record_error=self.record_error, progress=self.progress,
                              on_progress=self.on_progress)
        await dialogue.run_task(spec, samples, ctx)


async def run(config: RunConfig, on_progress: ProgressHook | None = None) -> RunSummary:
    """Run (or resume) a whole evaluation; returns per-task counts. The store lives in `config.output`."""
    started = time.monotonic()
    invocation = invocation_record(config.endpoints, time.time())  # for the report: when, against what
    async with ChatClient(config.endpoints, api_key=config.api_key, concurrency=config.concurrency,
                          timeouts=config.timeouts, retry=config.retry) as client:
        await client.wait_healthy(timeout=config.retry.max_downtime_s)
        if not config.options.params.model:
            model = await client.served_model()
            config = config.model_copy(update={"options": config.options.model_copy(
                update={"params": config.options.params.model_copy(update={"model": model})})})
        store = RunStore.open(config.output, config.identity())
        runner = None
        try:
            store.record_invocation(invocation)
            runner = Runner(config, store, client, on_progress)
            await runner.run()
            export_samples(store, config.output / "samples")
        finally:
            try:
                if runner is not None:  # an end is recorded for interrupted invocations too
                    store.record_invocation({**invocation, "ended_at": time.time(), "sent": runner.sent})
            finally:
                store.close()
        return RunSummary(runner.progress, time.monotonic() - started, runner.sent, client.retries, config.output)
