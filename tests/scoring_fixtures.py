"""A run folder with stored replies for all 18 datasets, written straight through the run store."""

from __future__ import annotations

from pathlib import Path

from evaluator.registry import TASKS
from evaluator.schema import Reply, sample_key
from evaluator.store import RunStore

GOLD = {"ruSLUn": "{'intent': 'alarm/set', 'slots': [{'time': 'семь утра'}]}", "ruCommonVQA": ["Да", "да"]}
REPLY = {"ruSLUn": '```json\n{"intent": "alarm/set", "slots": [{"time": "семь утра"}]}\n```', "ruCommonVQA": "да",
         "ruTiE-Image": "  A", "ruTiE-Audio": "\nB"}


def make_run(run_dir: Path, *, per_task: int = 3, drop: tuple[str, ...] = (), fail: tuple[str, ...] = ()) -> Path:
    """Test split for every dataset (gold hidden where the hub hides it), shots with gold everywhere."""
    store = RunStore.open(run_dir, {"model": "tiny", "split": "test"})
    t = 1_700_000_000.0
    for spec in TASKS.values():
        domains = spec.domains[:2] or (None,)
        for split in ("test", "shots"):
            for domain in domains:
                for i in range(per_task):
                    sid = 100 * (domains.index(domain) + 1) + i
                    key = sample_key(spec.name, domain, split, sid)
                    store.expect([(key, spec.name, domain, split, sid)])
                    if spec.name in drop and split == "test" and i == 0:
                        continue
                    hidden = split == "test" and spec.test_gold_hidden
                    gold = "" if hidden else GOLD.get(spec.name, "A")
                    meta = {"id": sid, "group_id": i // 2}
                    if spec.dialogue:
                        meta["submission_id"] = sid + 11
                    status = "failed" if spec.name in fail and i == 0 else "ok"
                    t += 0.5
                    store.record(Reply(
                        sample_key=key, task=spec.name, domain=domain, split=split, sample_id=sid, status=status,
                        content=REPLY.get(spec.name, "A" if i % 2 == 0 else "ОТВЕТ A") if status == "ok" else None,
                        finish_reason="stop" if status == "ok" else None, error=None if status == "ok" else "boom",
                        latency_s=0.5 + i, prompt_tokens=100, completion_tokens=5, question=f"Вопрос {sid}?",
                        gold=gold, meta=meta, created_at=t,
                    ))  # fmt: skip
    store.close()
    return run_dir
