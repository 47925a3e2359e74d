"""Score a stored run: replies -> per-sample metrics -> per-task scores -> boards and Multi.

Reads only the run store (replies carry question, gold and meta). Each split is scored on its own:
`test` gives leaderboard-comparable figures for the datasets whose test gold is public; private
test sets (gold "") have no local score ("scored by the leaderboard"); `shots` (gold everywhere) is
a dev estimate, always reported apart from test.

Samples whose reply is not `ok` are not scored (they are counted and flagged as failed/missing);
JudgeScore is absent (None) without a judge, and a sample the judge could not answer is unscored
and counted, never 0.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from evaluator import metrics as M
from evaluator.aggregate import Aggregate, aggregate, task_score
from evaluator.failures import FailureGroup, group_failures
from evaluator.filters import filtered_output
from evaluator.judge import JudgeConfig, JudgeItem, JudgeVerdict, run_judge
from evaluator.registry import TASKS, TaskSpec
from evaluator.runinfo import RunInfo, run_info
from evaluator.schema import Reply
from evaluator.store import RunStore

JUDGE_METRICS = {"judge_score", "group_judge_score"}
SPLITS = ("test", "shots")


class ScoreOptions(BaseModel):
    em: M.EmKind = M.DEFAULT_EM
    corrected: bool = False
    judge: JudgeConfig | None = None


class SampleScore(BaseModel):
    key: str
    domain: str | None = None
    group: Any = None
    em: int | None = None
    judge: int | None = None
    intent_em: int | None = None
    slot_f1: float | None = None
    problem: str | None = None


class TaskResult(BaseModel):
    task: str
    board: str
    split: str
    submission_name: str
    metrics_wanted: list[str]
    expected: int = 0
    ok: int = 0
    invalid_request: int = 0
    failed: int = 0  # every non-ok status but invalid_request; `statuses` has them one by one
    missing: int = 0
    statuses: dict[str, int] = Field(default_factory=dict)  # replies by stored status
    with_gold: int = 0
    metrics: dict[str, float | None] = Field(default_factory=dict)
    missing_metrics: list[str] = Field(default_factory=list)
    score: float | None = None
    note: str = ""
    domains: dict[str, dict[str, float | None]] = Field(default_factory=dict)  # domain -> metric -> value
    domain_samples: dict[str, int] = Field(default_factory=dict)  # scored samples per domain
    judge_unscored: int = 0
    scorer_problems: list[str] = Field(default_factory=list)
    finish_reasons: dict[str, int] = Field(default_factory=dict)
    latency_mean_s: float | None = None
    latency_p95_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_at: float | None = None
    last_at: float | None = None
    active_s: float | None = None  # time some request of this task was in flight (union over replies)

    @property
    def incomplete(self) -> bool:
        return self.failed + self.invalid_request + self.missing > 0

    @property
    def throughput_per_min(self) -> float | None:
        """Answered samples per minute of the time this task had requests in flight."""
        if not self.active_s or not self.ok:
            return None
        return 60.0 * self.ok / self.active_s


class SplitResult(BaseModel):
    split: str
    tasks: dict[str, TaskResult] = Field(default_factory=dict)
    aggregate: Aggregate = Field(default_factory=Aggregate)


class Results(BaseModel):
    run_dir: str
    scored_at: float = Field(default_factory=time.time)
    em: str
    corrected: bool
    judge_model: str | None = None
    judge_url: str | None = None
    run_config: dict[str, Any] = Field(default_factory=dict)
    run: RunInfo = Field(default_factory=RunInfo)  # what was evaluated, where, when (the report header)
    splits: dict[str, SplitResult] = Field(default_factory=dict)
    failures: list[FailureGroup] = Field(default_factory=list)  # failed replies grouped by reason
    problems: list[str] = Field(default_factory=list)  # shown at the top of every report

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        data["run"]["throughput_per_min"] = self.run.throughput_per_min
        for split in data["splits"].values():  # computed properties a reader wants in the file
            for name, task in split["tasks"].items():
                obj = self.splits[split["split"]].tasks[name]
                task["throughput_per_min"] = obj.throughput_per_min
                task["incomplete"] = obj.incomplete
        return json.dumps(data, ensure_ascii=False, indent=2)


# --- per sample ----------------------------------------------------------------------------------
def score_sample(spec: TaskSpec, reply: Reply, options: ScoreOptions) -> SampleScore:
    pred = filtered_output(spec, reply.content)
    out = SampleScore(key=reply.sample_key, domain=reply.domain,
                      group=reply.meta.get(spec.group_field) if spec.group_field else None)
    if spec.output_filter == "ruslun":
        slun = M.slun_scores(str(reply.gold), pred, corrected=options.corrected)
        out.intent_em, out.slot_f1, out.problem = slun["intent_em"], slun["slot_f1"], slun.problem
        return out
    out.em = M.exact_match(reply.gold, pred, kind=options.em, ignore_case=spec.em_ignore_case,
                           ignore_punctuation=spec.em_ignore_punctuation, corrected=options.corrected)
    return out


def _metric_values(spec: TaskSpec, scores: list[SampleScore], judged: bool) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for metric in spec.metrics:
        if metric == "exact_match":
            values[metric] = M.mean(s.em for s in scores if s.em is not None)
        elif metric == "judge_score":
            values[metric] = M.mean(s.judge for s in scores if s.judge is not None) if judged else None
        elif metric == "group_exact_match":
            values[metric] = M.group_score((s.em, s.group) for s in scores if s.em is not None)
        elif metric == "group_judge_score":
            values[metric] = M.group_score((s.judge, s.group) for s in scores if s.judge is not None) if judged else None
        elif metric == "intent_em":
            values[metric] = M.mean(s.intent_em for s in scores if s.intent_em is not None)
        elif metric == "slot_f1":
            values[metric] = M.mean(s.slot_f1 for s in scores if s.slot_f1 is not None)
        else:
            raise ValueError(f"{spec.name}: no implementation for metric {metric!r}")
    return values


def busy_seconds(replies: list[Reply]) -> float | None:
    """Length of the union of the replies' [sent, answered] intervals: time with a request in flight.
    Concurrent requests overlap and gaps between invocations are not counted."""
    spans = sorted((r.created_at - r.latency_s, r.created_at) for r in replies
                   if r.created_at is not None and r.latency_s is not None)
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total if spans else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# --- per task ------------------------------------------------------------------------------------
def score_task(spec: TaskSpec, split: str, replies: list[Reply], expected_keys: set[str],
               options: ScoreOptions, verdicts: dict[str, JudgeVerdict]) -> TaskResult:
    result = TaskResult(task=spec.name, board=spec.modality, split=split, submission_name=spec.submission_name,
                        metrics_wanted=list(spec.metrics))
    replied = {r.sample_key for r in replies}
    result.expected = len(expected_keys | replied)
    result.missing = len(expected_keys - replied)
    statuses = Counter(r.status for r in replies)
    result.statuses = dict(sorted(statuses.items()))
    # Every reply that is not an answer: rejected (4xx), or failed in any other way (retries exhausted, or a
    # 200 that is not an answer: no_content, no_choices, not_json, truncated, oversized). None is scored.
    result.ok, result.invalid_request = statuses["ok"], statuses["invalid_request"]
    result.failed = sum(statuses.values()) - result.ok - result.invalid_request
    ok = [r for r in replies if r.status == "ok"]
    result.finish_reasons = dict(Counter(r.finish_reason or "?" for r in ok))
    latencies = [r.latency_s for r in ok if r.latency_s is not None]
    result.latency_mean_s = statistics.fmean(latencies) if latencies else None
    result.latency_p95_s = _percentile(latencies, 95)
    result.prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    result.completion_tokens = sum(r.completion_tokens or 0 for r in ok)
    stamps = [r.created_at for r in ok if r.created_at is not None]
    result.first_at, result.last_at = (min(stamps), max(stamps)) if stamps else (None, None)
    result.active_s = busy_seconds(ok)

    gold_replies = [r for r in ok if M.has_gold(r.gold)]
    result.with_gold = len(gold_replies)
    if not gold_replies:
        result.note = ("scored by the leaderboard (test gold is hidden)" if split == "test" and ok
                       else "no scoreable replies")
        result.missing_metrics = list(spec.metrics)
        return result
    judged = options.judge is not None and not spec.output_filter
    scores = []
    for reply in gold_replies:
        sample = score_sample(spec, reply, options)
        if judged:
            verdict = verdicts.get(reply.sample_key)
            sample.judge = verdict.score if verdict else None
        if sample.problem:
            result.scorer_problems.append(f"{reply.sample_key}: {sample.problem}")
        scores.append(sample)
    result.judge_unscored = sum(1 for s in scores if judged and s.judge is None)
    result.metrics = _metric_values(spec, scores, judged)
    result.score, result.missing_metrics = task_score(result.metrics, spec.metrics)
    if spec.domains:
        for domain in spec.domains:
            members = [s for s in scores if s.domain == domain]
            if members:
                result.domains[domain] = _metric_values(spec, members, judged)
                result.domain_samples[domain] = len(members)
    if result.missing_metrics:
        result.note = "partial: " + ", ".join(result.missing_metrics) + " absent (no judge configured)"
    return result


def judge_items_for(store: RunStore, options: ScoreOptions) -> list[JudgeItem]:
    items = []
    for spec in TASKS.values():
        if spec.output_filter or not any(m in JUDGE_METRICS for m in spec.metrics):
            continue
        for reply in store.replies(task=spec.name, status="ok"):
            if M.has_gold(reply.gold):
                items.append(JudgeItem(reply.sample_key, reply.question, reply.gold,
                                       filtered_output(spec, reply.content)))
    return items


def score_run(run_dir: Path, options: ScoreOptions) -> Results:
    store = RunStore.open_existing(run_dir)
    try:
        verdicts: dict[str, JudgeVerdict] = {}
        if options.judge is not None:
            verdicts = {v.key: v for v in run_judge(options.judge, judge_items_for(store, options))}
        judge = f"{options.judge.model} at {options.judge.base_url}" if options.judge else None
        results = Results(run_dir=str(run_dir), em=options.em, corrected=options.corrected,
                          judge_model=options.judge.model if options.judge else None,
                          judge_url=options.judge.base_url if options.judge else None,
                          run_config=store.run_config(), run=run_info(store, judge))
        failed: list[Reply] = []
        for split in SPLITS:
            split_result = SplitResult(split=split)
            for spec in TASKS.values():
                replies = list(store.replies(task=spec.name, split=split))
                failed += (r for r in replies if r.status != "ok")
                expected = {e.sample_key for e in store.expected(task=spec.name, split=split)}
                if not replies and not expected:
                    continue
                split_result.tasks[spec.name] = score_task(spec, split, replies, expected, options, verdicts)
            if split_result.tasks:
                split_result.aggregate = aggregate({n: t.score for n, t in split_result.tasks.items()})
                results.splits[split] = split_result
        results.failures = group_failures(failed)
        results.problems = run_problems(results)
        return results
    finally:
        store.close()


def run_problems(results: Results) -> list[str]:
    """Everything a reader must know before trusting the numbers."""
    problems = []
    for split in results.splits.values():
        for task in split.tasks.values():
            bad = []
            if task.missing:
                bad.append(f"{task.missing} missing")
            if task.failed:
                kinds = {k: n for k, n in task.statuses.items() if k not in ("ok", "invalid_request")}
                detail = f" ({', '.join(f'{k} {n}' for k, n in kinds.items())})" if set(kinds) - {"failed"} else ""
                bad.append(f"{task.failed} failed{detail}")
            if task.invalid_request:
                bad.append(f"{task.invalid_request} rejected by the server (4xx)")
            if task.judge_unscored:
                bad.append(f"{task.judge_unscored} not scored by the judge (judge errors)")
            if task.scorer_problems:
                bad.append(f"{len(task.scorer_problems)} inputs the official scorer cannot handle (scored 0)")
            if bad:
                problems.append(f"{split.split}/{task.task}: " + ", ".join(bad) + f" of {task.expected}")
        agg = split.aggregate
        if split.split == "test" and agg.tasks_total and agg.tasks_scored < 18:
            problems.append(f"test: {agg.tasks_scored} of 18 datasets have a local score; board and Multi "
                            "figures are over those only (the rest is scored by the leaderboard)")
    if results.judge_model is None:
        problems.append("no judge configured: JudgeScore is absent, task scores are EM only")
    return problems
