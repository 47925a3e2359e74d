"""lm-eval-compatible sample logs (`samples_<task>_<timestamp>.jsonl`) so MERA's own tooling
(`scripts/log_to_submission.py`) can read a run. Media never appear: the prompt is logged as text."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from evaluator.registry import TASKS
from evaluator.store import RunStore

# log_to_submission.py parses the timestamp with this format.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H-%M-%S.%f"


def sample_logs(store: RunStore) -> dict[str, list[str]]:
    """{lm-eval task: JSON lines} of the ok replies in the store (domains separately, as lm-eval writes them)."""
    logs: dict[str, list[str]] = {}
    for spec in TASKS.values():
        for reply in store.replies(task=spec.name):
            if reply.status != "ok":
                continue
            record = {
                "doc_id": reply.sample_id,
                "doc": {"meta": reply.meta, "outputs": reply.gold},
                "target": reply.gold,
                "arguments": [[reply.question]],
                "resps": [[reply.content]],
                "filtered_resps": [reply.content],
                "split": reply.split,
                "finish_reason": reply.finish_reason,
            }
            logs.setdefault(spec.lm_eval_task(reply.domain), []).append(json.dumps(record, ensure_ascii=False))
    return logs


def log_name(lm_task: str, stamp: str | None = None) -> str:
    return f"samples_{lm_task}_{stamp or datetime.now().strftime(TIMESTAMP_FORMAT)}.jsonl"


def export_samples(store: RunStore, out_dir: Path) -> list[Path]:
    """One file per lm-eval task in `out_dir`, replacing the previous export. Returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("samples_*.jsonl"):  # one current export per run, rewritten after each invocation
        old.unlink()
    stamp = datetime.now().strftime(TIMESTAMP_FORMAT)
    written = []
    for lm_task, lines in sample_logs(store).items():
        path = out_dir / log_name(lm_task, stamp)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written
