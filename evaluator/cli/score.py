"""`mera-eval score RUN_DIR`: score a stored run and write results.json, report.md, report.html."""

from __future__ import annotations

import os
from pathlib import Path

from evaluator.cli.args import positive_int
from evaluator.cli.show import publish
from evaluator.cli.tables import make_console
from evaluator.judge import DEFAULT_JUDGE_MODEL, JudgeConfig
from evaluator.metrics import DEFAULT_EM, EM_KINDS
from evaluator.reference import get_reference
from evaluator.report import write_reports
from evaluator.scoring import ScoreOptions, score_run


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="Score a run (EM, Slot F1, groups; JudgeScore with a judge) and write reports.",
                       description="Score the replies stored in RUN_DIR the way MERA does and write results.json, "
                       "report.md and report.html there. Private test sets have no local score.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--em", choices=EM_KINDS, default=DEFAULT_EM,
                   help="Exact-match definition: squad (compute_exact, MERA's judge-era scorer; default) or "
                   "lm-eval (the @0f32158 YAMLs' exact_match with per-task case/punctuation options).")
    p.add_argument("--corrected", action="store_true",
                   help="Fix the official scorer's known quirks (see evaluator/metrics.py) instead of reproducing them.")
    p.add_argument("--judge-url", default=os.environ.get("MERA_JUDGE_URL"),
                   help="Judge server base URL (vLLM classify), e.g. http://localhost:8001 (env MERA_JUDGE_URL). "
                   "Without it JudgeScore is absent.")
    p.add_argument("--judge-model", default=os.environ.get("MERA_JUDGE_MODEL", DEFAULT_JUDGE_MODEL),
                   help="Served judge model name (env MERA_JUDGE_MODEL).")
    p.add_argument("--judge-api-key", default=os.environ.get("MERA_JUDGE_API_KEY"), help="env MERA_JUDGE_API_KEY")
    p.add_argument("--judge-sep", default="[SEP]", help="The judge tokenizer's sep_token (default [SEP]).")
    p.add_argument("--judge-concurrency", type=positive_int, default=8)
    p.add_argument("--reference", default=None, help="Reference entry for comparison (default gemma-4-e4b-it; none).")
    add_output_flags(p)
    p.set_defaults(func=run)


def add_output_flags(p) -> None:
    p.add_argument("--json", action="store_true", help="Print results.json to stdout instead of the table.")
    p.add_argument("--domains", action="store_true", help="Also print per-domain scores (always in the reports).")


def show(results, args, ref) -> None:
    """The end of `score` and `report`: the report files, then the table (or the JSON)."""
    if args.json:
        write_reports(results, args.run_dir, ref)
        print(results.to_json())
    else:
        publish(results, args.run_dir, ref, make_console(), domains=args.domains)


def run(args) -> int:
    judge = None
    if args.judge_url:
        judge = JudgeConfig(url=args.judge_url, model=args.judge_model, api_key=args.judge_api_key,
                            sep_token=args.judge_sep, concurrency=args.judge_concurrency)
    ref = get_reference(args.reference)
    results = score_run(args.run_dir, ScoreOptions(em=args.em, corrected=args.corrected, judge=judge))
    show(results, args, ref)
    return 0
