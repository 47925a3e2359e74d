"""Task, board and Multi scores, as the leaderboard aggregates them.

* task score = mean of the task's metrics (registry `metrics`: EM and JudgeScore; ruSLUn Intent EM
  and Slot F1; ruHHH the group variants), each metric the mean over the task's samples. Datasets
  with domains are one task: their samples are pooled, so domains weigh by sample count (MERA's
  submission concatenates the domain files into one).
* board (image/audio/video) = plain mean over its datasets.
* Multi = plain mean over all 18 datasets (= boards weighted 11/4/3). This reproduces the reference
  entry: Images 0.474, Audio 0.377, Video 0.559 -> Multi 0.467 (a plain mean of boards gives 0.470).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

from evaluator.registry import BOARD_LABELS, BOARDS, TASKS
from evaluator.schema import Modality

__all__ = ["BOARD_LABELS", "Aggregate", "BoardScore", "aggregate", "task_score"]


def task_score(metric_values: Mapping[str, float | None], metrics: Iterable[str]) -> tuple[float | None, list[str]]:
    """Mean of the available metrics, and the names of those that are absent (e.g. no judge)."""
    metrics = list(metrics)
    present = [metric_values[m] for m in metrics if metric_values.get(m) is not None]
    missing = [m for m in metrics if metric_values.get(m) is None]
    return (sum(present) / len(present) if present else None), missing


class BoardScore(BaseModel):
    board: Modality
    label: str
    score: float | None  # mean over the board's scored datasets
    tasks_scored: int
    tasks_total: int

    @property
    def complete(self) -> bool:
        return self.tasks_scored == self.tasks_total


class Aggregate(BaseModel):
    boards: dict[str, BoardScore] = Field(default_factory=dict)
    multi: float | None = None
    tasks_scored: int = 0
    tasks_total: int = 0

    @property
    def complete(self) -> bool:
        return self.tasks_scored == self.tasks_total


def aggregate(task_scores: Mapping[str, float | None], *, tasks: Iterable[str] | None = None) -> Aggregate:
    """Boards and Multi from per-dataset scores (registry names; None = not scored locally).

    `tasks` is the set the scores should cover (default: all 18); boards and Multi are means over the
    scored ones, and `tasks_scored < tasks_total` tells the reader the figure is partial.
    """
    names = list(tasks) if tasks is not None else list(TASKS)
    result = Aggregate(tasks_total=len(names))
    all_scores: list[float] = []
    for board in BOARDS:
        members = [n for n in names if TASKS[n].modality == board]
        if not members:
            continue
        scores = [task_scores[n] for n in members if task_scores.get(n) is not None]
        result.boards[board] = BoardScore(
            board=board, label=BOARD_LABELS[board], score=sum(scores) / len(scores) if scores else None,
            tasks_scored=len(scores), tasks_total=len(members),
        )  # fmt: skip
        all_scores += scores
    result.tasks_scored = len(all_scores)
    result.multi = sum(all_scores) / len(all_scores) if all_scores else None
    return result
