"""`mera-eval tasks`: the registry as a table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from evaluator.registry import GENERATION_SOURCES, TASKS


def add_parser(sub) -> None:
    parser = sub.add_parser("tasks", help="List the 18 MERA Multi datasets and how they are run and scored.")
    parser.set_defaults(func=main)


def generation_cell(spec) -> str:
    g = spec.generation
    sources = sorted(set(g.sources.values()))
    return (f"temperature {g.temperature:g}, max_tokens {g.max_tokens}, stop {list(g.stop)}, seed {g.seed} "
            f"({', '.join(sources)})")


def main(args) -> int:
    table = Table(title="MERA Multi datasets", show_lines=False)
    for col in ("dataset", "board", "hub id", "domains", "media", "gold in test", "metrics", "submission file",
                "lm-eval tasks", "generation (source)"):
        table.add_column(col, overflow="fold")
    for spec in TASKS.values():
        table.add_row(
            spec.name + (" (dialogue)" if spec.dialogue else ""), spec.modality, spec.hub_id,
            ", ".join(spec.domains) or "-", ", ".join(spec.media_fields),
            "hidden" if spec.test_gold_hidden else "public", ", ".join(spec.metrics), f"{spec.submission_name}.json",
            ", ".join(spec.lm_eval_tasks) if len(spec.lm_eval_tasks) < 3 else f"{spec.lm_eval_tasks[0]}, … ({len(spec.lm_eval_tasks)})",
            generation_cell(spec),
        )  # fmt: skip
    Console().print(table)
    Console().print("generation sources: " + "; ".join(f"{k}: {v}" for k, v in GENERATION_SOURCES.items()),
                    soft_wrap=True, highlight=False)
    return 0
