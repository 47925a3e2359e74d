"""`mera-eval report RUN_DIR`: re-render the reports of a scored run (scores it first if needed)."""

from __future__ import annotations

from pathlib import Path

from evaluator.cli.score import add_output_flags, show
from evaluator.reference import get_reference
from evaluator.report import RESULTS_FILE, load_results
from evaluator.scoring import ScoreOptions, score_run


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="Write report.md / report.html / results.json for a run and print the table.",
                       description="Render the reports from RUN_DIR/results.json; if the run was never scored, "
                       "score it first with the defaults (squad EM, official behaviour, no judge).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--reference", default=None, help="Reference entry (default gemma-4-e4b-it; none for no comparison).")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    ref = get_reference(args.reference)
    if (args.run_dir / RESULTS_FILE).is_file():
        results = load_results(args.run_dir)
    else:
        results = score_run(args.run_dir, ScoreOptions())
    show(results, args, ref)
    return 0
