"""Task -> board -> Multi arithmetic, checked against the reference leaderboard entry."""

from __future__ import annotations

import pytest

from evaluator.aggregate import aggregate, task_score
from evaluator.metrics import DEFAULT_EM
from evaluator.reference import GEMMA_4_E4B_IT, PAGE_ROWS
from evaluator.registry import TASKS
from evaluator.schema import Reply
from evaluator.scoring import ScoreOptions, score_task


def test_reference_entry_reproduces_boards_and_multi():
    agg = aggregate(GEMMA_4_E4B_IT.tasks)
    assert agg.complete and agg.tasks_scored == 18
    for board, printed in GEMMA_4_E4B_IT.boards.items():
        assert round(agg.boards[board].score, 3) == printed
    assert round(agg.multi, 3) == GEMMA_4_E4B_IT.multi == 0.467
    # and not the plain mean of the boards, which would print 0.470
    assert round(sum(GEMMA_4_E4B_IT.boards.values()) / 3, 3) == 0.470


def test_reference_rows_cover_every_dataset_once_with_its_board():
    names = [name for _, _, name in PAGE_ROWS]
    assert sorted(names) == sorted(TASKS)
    for _, board, name in PAGE_ROWS:
        assert TASKS[name].modality == board


def test_task_score_is_the_mean_of_available_metrics():
    assert task_score({"exact_match": 0.2, "judge_score": 0.6}, ["exact_match", "judge_score"]) == (pytest.approx(0.4), [])
    assert task_score({"exact_match": 0.2, "judge_score": None}, ["exact_match", "judge_score"]) == (0.2, ["judge_score"])
    assert task_score({}, ["exact_match"]) == (None, ["exact_match"])


def test_partial_aggregate_says_so():
    agg = aggregate({"ruCLEVR": 0.5, "WEIRD": 1.0, "ruEnvAQA": 0.25, "LabTabVQA": None})
    assert agg.tasks_scored == 3 and agg.tasks_total == 18 and not agg.complete
    assert agg.boards["image"].score == 0.75 and agg.boards["image"].tasks_scored == 2
    assert agg.multi == pytest.approx(1.75 / 3)


def reply(task, sid, content, gold, *, domain=None, status="ok", meta=None, split="test") -> Reply:
    return Reply(sample_key=f"{task}/{domain or '-'}/{split}/{sid}", task=task, domain=domain, split=split,
                 sample_id=sid, status=status, content=content if status == "ok" else None, gold=gold,
                 question="Q", meta=meta or {}, finish_reason="stop" if status == "ok" else None, latency_s=1.0)


def test_domains_pool_samples_so_they_weigh_by_count():
    spec = TASKS["ruNaturalScienceVQA"]
    replies = [reply(spec.name, 1, "A", "A", domain="biology"),
               *[reply(spec.name, 10 + i, "B", "C", domain="physics") for i in range(3)]]
    result = score_task(spec, "test", replies, {r.sample_key for r in replies}, ScoreOptions(), {})
    assert result.metrics["exact_match"] == 0.25  # not the 0.5 of a mean over domains
    assert result.domains == {"biology": {"exact_match": 1.0, "judge_score": None},
                              "physics": {"exact_match": 0.0, "judge_score": None}}
    assert result.score == 0.25 and result.missing_metrics == ["judge_score"]  # no judge: absent, not 0


def test_ruhhh_groups_and_failed_samples_are_counted_not_scored():
    spec = TASKS["ruHHH-Image"]
    replies = [reply(spec.name, 1, "A", "A", meta={"group_id": 0}), reply(spec.name, 2, "B", "B", meta={"group_id": 0}),
               reply(spec.name, 3, "A", "A", meta={"group_id": 1}), reply(spec.name, 4, "A", "B", meta={"group_id": 1}),
               reply(spec.name, 5, None, "A", status="failed", meta={"group_id": 2})]
    expected = {r.sample_key for r in replies} | {"ruHHH-Image/-/test/6"}
    result = score_task(spec, "test", replies, expected, ScoreOptions(), {})
    assert result.metrics["group_exact_match"] == 0.5
    assert (result.ok, result.failed, result.missing, result.expected) == (4, 1, 1, 6) and result.incomplete


def test_private_test_split_has_no_local_score():
    spec = TASKS["LabTabVQA"]
    replies = [reply(spec.name, 1, "A", "")]
    result = score_task(spec, "test", replies, {replies[0].sample_key}, ScoreOptions(), {})
    assert result.score is None and "leaderboard" in result.note


def test_ruslun_uses_filter_and_official_metrics():
    spec = TASKS["ruSLUn"]
    gold = "{'intent': 'alarm/set', 'slots': [{'time': 'семь утра'}]}"
    replies = [reply(spec.name, 1, '```json\n{"intent": "alarm/set", "slots": [{"time": "Семь утра"}]}\n```', gold, split="shots"),
               reply(spec.name, 2, "[1, 2]", gold, split="shots")]
    result = score_task(spec, "shots", replies, set(), ScoreOptions(em=DEFAULT_EM), {})
    assert result.metrics == {"intent_em": 0.5, "slot_f1": 0.5}
    assert result.score == 0.5 and len(result.scorer_problems) == 1
