"""`mera-eval tasks`: the registry as a table (or JSON)."""

from __future__ import annotations

import json
import os

from pydantic import BaseModel

from evaluator.cli.tables import Col, fit_table, make_console
from evaluator.registry import BOARD_LABELS, GENERATION_SOURCES, TASKS, TaskSpec
from evaluator.report import METRIC_LABELS

# TaskSpec fields with a column of their own; any other field shows in "settings" where it is not the default,
# so what the registry gains (e.g. per-task generation settings) appears without a change here.
_SHOWN = {"name", "modality", "media_fields", "test_gold_hidden", "public", "metrics", "domains", "submission_name",
          "hub_id", "lm_eval_tasks", "dialogue", "generation"}

COLUMNS = [
    Col("dataset"), Col("board"), Col("media", 1), Col("test answers", 2), Col("metrics", 3, fold=True),
    Col("domains", 5, justify="right"), Col("runs as", 4), Col("submission file", 6), Col("hub id", 7),
    Col("lm-eval tasks", 8), Col("generation (source)", 4, fold=True), Col("settings", 9, fold=True),
]


def add_parser(sub) -> None:
    parser = sub.add_parser("tasks", help="List the 18 MERA Multi datasets and how they are run and scored.",
                            description="The 18 MERA Multi datasets. On a terminal the table fits its width; piped, "
                            "every column is printed in full (`mera-eval tasks | grep audio`).")
    parser.add_argument("--json", action="store_true", help="Print the registry as JSON (every field of every task).")
    parser.set_defaults(func=main)


def _lm_eval(spec: TaskSpec) -> str:
    names = spec.lm_eval_tasks
    if len(names) == 1:
        return names[0]
    return f"{os.path.commonprefix(names)}* ({len(names)})"


def _settings(spec: TaskSpec) -> str:
    out = []
    for name, field in type(spec).model_fields.items():
        value = getattr(spec, name)
        if name in _SHOWN or value == field.default:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_defaults=True)
        out.append(f"{name}={value}")
    return " ".join(out)


def _generation(spec: TaskSpec) -> str:
    g = spec.generation
    sources = ", ".join(sorted(set(g.sources.values())))
    return f"temperature {g.temperature:g}, max_tokens {g.max_tokens}, stop {list(g.stop)}, seed {g.seed} ({sources})"


def row(spec: TaskSpec) -> list[str]:
    return [
        spec.name, BOARD_LABELS[spec.modality], ", ".join(spec.media_fields),
        "hidden" if spec.test_gold_hidden else "public",
        ", ".join(METRIC_LABELS.get(m, m) for m in spec.metrics), str(len(spec.domains)) if spec.domains else "",
        "dialogues" if spec.dialogue else "", f"{spec.submission_name}.json", spec.hub_id, _lm_eval(spec),
        _generation(spec), _settings(spec),
    ]  # fmt: skip


def main(args) -> int:
    console = make_console()
    if args.json:
        data = [{**spec.model_dump(mode="json"), "board": BOARD_LABELS[spec.modality]} for spec in TASKS.values()]
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    specs = list(TASKS.values())
    sections = [i for i in range(1, len(specs)) if specs[i].modality != specs[i - 1].modality]
    console.print(f"MERA Multi: {len(specs)} datasets")
    console.print(fit_table(COLUMNS, [row(s) for s in specs], console.width, sections=sections))
    console.print("generation sources: " + "; ".join(f"{k}: {v}" for k, v in GENERATION_SOURCES.items()),
                  soft_wrap=True, highlight=False)
    return 0
