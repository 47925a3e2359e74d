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


def export_samples(store: RunStore, out_dir: Path) -> list[Path]:
    """One file per lm-eval task (domains separately, as lm-eval writes them). Returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("samples_*.jsonl"):  # one current export per run, rewritten after each invocation
        old.unlink()
    stamp = datetime.now().strftime(TIMESTAMP_FORMAT)
    written = []
    for spec in TASKS.values():
        by_task: dict[str, list[str]] = {}
        for reply in store.replies(task=spec.name):
            if reply.status != "ok":
                continue
            lm_task = spec.lm_eval_task(reply.domain)
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
            by_task.setdefault(lm_task, []).append(json.dumps(record, ensure_ascii=False))
        for lm_task, lines in by_task.items():
            path = out_dir / f"samples_{lm_task}_{stamp}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            written.append(path)
    return written
