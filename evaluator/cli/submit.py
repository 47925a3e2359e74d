"""`mera-eval submit RUN_DIR` and `mera-eval validate-submission ZIP`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from evaluator.cli.tables import make_console
from evaluator.errors import UserError
from evaluator.submission import SubmissionError, validate_zip, write_submission


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="Write the leaderboard submission zip of a run (validated first).",
                       description="Pack the test-split replies of RUN_DIR into the zip mera.a-ai.ru accepts: one "
                       "<Dataset>.json per dataset plus logs_public.zip. Refuses an incomplete run unless "
                       "--allow-incomplete.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--output", "-o", type=Path,
                   help="Zip file, or a folder to write submission.zip into (default RUN_DIR/submission.zip).")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="Write the zip even if datasets or samples are missing (the site scores them 0).")
    p.set_defaults(func=submit)

    v = sub.add_parser("validate-submission", help="Check a submission zip: names, shapes, ids, string outputs.")
    v.add_argument("zip_path", type=Path, metavar="ZIP")
    v.add_argument("--run", type=Path, metavar="RUN_DIR", help="Also check every id this run expected is present once.")
    v.add_argument("--allow-incomplete", action="store_true", help="Report missing datasets/ids as warnings.")
    v.set_defaults(func=validate)


def _print_report(console: Console, report) -> None:
    for error in report.errors:
        console.print(Text("error: ", style="red") + Text(error))
    for warning in report.warnings:
        console.print(Text("warning: ", style="yellow") + Text(warning))


def zip_path(run_dir: Path, output: Path | None) -> Path:
    """Where the zip goes: -o FILE, or submission.zip inside -o FOLDER (default: the run folder)."""
    if output is None:
        return run_dir / "submission.zip"
    if output.is_dir():
        return output / "submission.zip"
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: there is no folder {output.parent}", fix="create it, or choose another path")
    return output


def submit(args) -> int:
    console = make_console()
    out = zip_path(args.run_dir, args.output)
    try:
        path, report = write_submission(args.run_dir, out, allow_incomplete=args.allow_incomplete)
    except SubmissionError as exc:
        _print_report(console, exc.report)
        console.print("no zip written" + ("" if args.allow_incomplete else
                      " (use --allow-incomplete to write a partial submission)"), style="red")
        return 1
    _print_report(console, report)
    total = sum(report.counts.values())
    console.print(f"wrote {path} ({len(report.counts)} dataset files, {total} outputs)")
    return 0


def validate(args) -> int:
    console = make_console()
    report = validate_zip(args.zip_path, args.run, allow_incomplete=args.allow_incomplete)
    _print_report(console, report)
    if report.ok:
        console.print(f"{args.zip_path}: valid ({len(report.counts)} dataset files, {sum(report.counts.values())} outputs)")
        return 0
    return 1
