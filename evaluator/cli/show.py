"""The scored run on a terminal (or in a log): a short header, problems, failures by reason, one table
per split with the boards inside it, footnotes. What `score` and `report` print."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.text import Text

from evaluator.cli.tables import Col, fit_table
from evaluator.reference import ReferenceEntry
from evaluator.report import (
    SPLIT_TITLES,
    Notes,
    board_rows,
    domain_metric_names,
    domain_rows,
    failure_line,
    failures_title,
    header,
    task_rows,
    throughput_note,
    write_reports,
)
from evaluator.scoring import Results, SplitResult

# Header facts a terminal shows (all of them are in report.md / report.html / results.json).
THROUGHPUT_HEADER = "samples/min†"
_TERMINAL_HEADER = (("model", "endpoint", "split", "date"), ("generation", "media"), ("scoring", "judge"))


def split_table(results: Results, split: SplitResult, ref: ReferenceEntry | None, width: int, notes: Notes):
    """One row per dataset, grouped by board with the board's row under its datasets, Multi last."""
    tasks = task_rows(split, ref, notes)
    labels = Counter(tuple(t.metric_labels) for t in tasks).most_common(1)[0][0] if tasks else ("EM", "JudgeScore")
    cols = [Col("dataset"), Col("score", justify="right"), Col("reference", 2, justify="right"),
            *(Col(label, 3, justify="right") for label in labels), Col("ok/expected", 1, justify="right"),
            Col("errors", 1, justify="right"), Col("latency s", 5, justify="right"),
            Col(THROUGHPUT_HEADER, 6, justify="right")]
    rows, sections = [], []
    blank = [None] * len(labels)
    boards = board_rows(split, ref)
    for b in boards[:-1]:
        for t in (t for t in tasks if t.board == b.label):
            values = list(t.metric_values[: len(labels)]) + [""] * (len(labels) - len(t.metric_values))
            if tuple(t.metric_labels) != tuple(labels) and values[0] != "—":  # ruHHH, ruSLUn: which metrics
                values[0] += notes.mark(f"{t.name}: {', '.join(t.metric_labels)}")
            errors = Text(str(t.errors), style="red") if t.errors else ""
            rows.append([t.name, t.score, t.reference, *values, t.ok_expected, errors, t.latency, t.throughput])
        rows.append([Text(b.label, style="bold"), Text(b.score, style="bold"), b.reference, *blank, b.scored_short,
                     None, None, None])
        sections.append(len(rows))
    multi = boards[-1]
    rows.append([Text("Multi", style="bold"), Text(multi.score, style="bold"), multi.reference, *blank,
                 multi.scored_short, None, None, None])
    table = fit_table(cols, rows, width, sections=sections)
    if any(str(c.header) == THROUGHPUT_HEADER for c in table.columns):
        notes.symbols["†"] = throughput_note(results)
    return table


def domain_table(split: SplitResult, ref: ReferenceEntry | None, width: int):
    names = domain_metric_names(split)
    cols = [Col("dataset"), Col("domain"), Col("samples", 2, justify="right"),
            *(Col(n, 1, justify="right") for n in names), Col("leaderboard", 4), Col("reference EM / JudgeScore", 3)]
    rows = [[d.task, d.domain, str(d.samples), *d.metrics, d.label, d.reference] for d in domain_rows(split, ref)]
    return fit_table(cols, rows, width)


def print_results(results: Results, ref: ReferenceEntry | None, console: Console, *, domains: bool = False) -> None:
    facts = dict(header(results))
    console.print(Text(results.run_dir, style="bold"))
    for group in _TERMINAL_HEADER:
        shown = [f"{k} {facts[k]}" for k in group if facts.get(k) not in (None, "—")]
        if shown:
            console.print("  " + " · ".join(shown))
    if results.problems:
        console.print("Problems:")
        for problem in results.problems:
            console.print(Text("  • ", style="red") + Text(problem))
    if results.failures:
        console.print(failures_title(results.failures) + ":")
        for group in results.failures:
            console.print(Text("  • ", style="red") + Text(failure_line(group)))
    for split in results.splits.values():
        notes = Notes()
        console.print()
        console.print(Text(SPLIT_TITLES.get(split.split, split.split), style="bold"))
        console.print(split_table(results, split, ref, console.width, notes))
        if domains and any(t.domains for t in split.tasks.values()):
            console.print(Text("per-domain scores", style="bold"))
            console.print(domain_table(split, ref, console.width))
        for line in notes.lines():
            console.print(Text(line, style="dim"))


def publish(results: Results, run_dir: Path, ref: ReferenceEntry | None, console: Console, *,
            domains: bool = False) -> dict[str, Path]:
    """Write every report file for a run and print it (what `score` and `report` both end with)."""
    paths = write_reports(results, run_dir, ref)
    print_results(results, ref, console, domains=domains)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths
