"""Reports of a scored run: terminal table, results.json, report.md, self-contained report.html.

Every report opens with the run's problems (missing, failed, rejected samples; judge errors; datasets
without a local score), then test figures, then the `shots` dev estimate, always apart. The HTML has
no external resources: styles inline, one SVG bar chart per board (run vs the reference entry).
"""

from __future__ import annotations

import html
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evaluator.aggregate import BOARD_LABELS
from evaluator.reference import ReferenceEntry
from evaluator.registry import BOARDS
from evaluator.scoring import Results, SplitResult, TaskResult

RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
METRIC_LABELS = {
    "exact_match": "EM", "judge_score": "JudgeScore", "group_exact_match": "group EM",
    "group_judge_score": "group JudgeScore", "intent_em": "Intent EM", "slot_f1": "Slot F1",
}  # fmt: skip
SPLIT_TITLES = {"test": "Test split (leaderboard-comparable where gold is public)",
                "shots": "Shots split — dev estimate only, not comparable to the leaderboard"}


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def load_results(run_dir: Path) -> Results:
    return Results.model_validate_json((Path(run_dir) / RESULTS_FILE).read_text(encoding="utf-8"))


def _metrics_text(task: TaskResult) -> str:
    return ", ".join(f"{METRIC_LABELS.get(m, m)} {fmt(task.metrics.get(m))}" for m in task.metrics_wanted)


def _ref_task(ref: ReferenceEntry | None, name: str, split: str) -> str:
    if ref is None or split != "test" or name not in ref.tasks:
        return "—"
    return fmt(ref.tasks[name]) + ("*" if name in ref.task_names_inferred else "")


def _settings_line(results: Results) -> str:
    judge = f"{results.judge_model} at {results.judge_url}" if results.judge_model else "none (JudgeScore absent)"
    return f"EM: {results.em}{' (corrected)' if results.corrected else ' (official)'}; judge: {judge}"


# --- terminal -------------------------------------------------------------------------------------
def print_table(results: Results, ref: ReferenceEntry | None, console: Console | None = None) -> None:
    console = console or Console()
    if results.problems:
        console.print("[bold red]Problems:[/]")
        for problem in results.problems:
            console.print(f"  [red]•[/] {problem}")
    console.print(_settings_line(results))
    for split in results.splits.values():
        table = Table(title=SPLIT_TITLES.get(split.split, split.split))
        for col in ("Dataset", "Board", "Score", "Reference", "Metrics", "ok/expected", "errors", "note"):
            table.add_column(col)
        for task in split.tasks.values():
            errors = task.failed + task.invalid_request + task.missing
            table.add_row(task.task, task.board, fmt(task.score), _ref_task(ref, task.task, split.split),
                          _metrics_text(task), f"{task.ok}/{task.expected}", str(errors) if errors else "",
                          task.note)
        agg = split.aggregate
        for board, b in agg.boards.items():
            ref_b = fmt(ref.boards.get(board)) if ref and split.split == "test" else "—"
            table.add_row(f"[bold]{b.label}[/]", "", fmt(b.score), ref_b, f"{b.tasks_scored}/{b.tasks_total} datasets",
                          "", "", "")
        ref_m = fmt(ref.multi) if ref and split.split == "test" else "—"
        table.add_row("[bold]Multi[/]", "", fmt(agg.multi), ref_m, f"{agg.tasks_scored}/{agg.tasks_total} datasets",
                      "", "", "")
        console.print(table)


# --- markdown ------------------------------------------------------------------------------------
def render_markdown(results: Results, ref: ReferenceEntry | None) -> str:
    out = ["# MERA Multi run report", ""]
    if results.problems:
        out += ["**Problems with this run:**", ""] + [f"- {p}" for p in results.problems] + [""]
    out += [f"Run: `{results.run_dir}`  ", _settings_line(results), ""]
    if ref is not None:
        out += [f"Reference: {ref.name}. `*` = dataset name inferred from the page order (see evaluator/reference.py).", ""]
    for split in results.splits.values():
        out += [f"## {SPLIT_TITLES.get(split.split, split.split)}", ""]
        agg = split.aggregate
        out += ["| Board | Score | Reference | datasets scored |", "|---|---|---|---|"]
        for board, b in agg.boards.items():
            ref_b = fmt(ref.boards.get(board)) if ref and split.split == "test" else "—"
            out.append(f"| {b.label} | {fmt(b.score)} | {ref_b} | {b.tasks_scored}/{b.tasks_total} |")
        ref_m = fmt(ref.multi) if ref and split.split == "test" else "—"
        out += [f"| **Multi** | {fmt(agg.multi)} | {ref_m} | {agg.tasks_scored}/{agg.tasks_total} |", ""]
        out += ["| Dataset | Board | Score | Reference | Metrics | ok / expected | failed | rejected | missing | "
                "finish reasons | latency mean / p95 s | samples/min | note |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in split.tasks.values():
            finish = ", ".join(f"{k}: {v}" for k, v in sorted(t.finish_reasons.items()))
            out.append(f"| {t.task} | {t.board} | {fmt(t.score)} | {_ref_task(ref, t.task, split.split)} | "
                       f"{_metrics_text(t)} | {t.ok} / {t.expected} | {t.failed} | {t.invalid_request} | {t.missing} | "
                       f"{finish} | {fmt(t.latency_mean_s, 2)} / {fmt(t.latency_p95_s, 2)} | "
                       f"{fmt(t.throughput_per_min, 1)} | {t.note} |")
        out.append("")
    return "\n".join(out) + "\n"


# --- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.problems{background:#fff1f0;border:1px solid #e88;padding:.5em 1em}
.charts{display:flex;flex-wrap:wrap;gap:2em}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px}
.dev{color:#855}
"""
_RUN_COLOR, _REF_COLOR = "#3b73b9", "#b0b0b0"


def board_chart_svg(label: str, rows: list[tuple[str, float | None, float | None]]) -> str:
    """Horizontal grouped bars: one pair (run, reference) per dataset, scores 0..1."""
    bar_h, gap, left, width = 10, 8, 170, 260
    height = 30 + len(rows) * (2 * bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" height="{height}" '
             f'role="img" aria-label="{html.escape(label)}">',
             f'<text x="0" y="14" font-size="14" font-weight="bold">{html.escape(label)}</text>']
    y = 26
    for name, run, ref in rows:
        parts.append(f'<text x="{left - 6}" y="{y + bar_h + 3}" font-size="12" text-anchor="end">{html.escape(name)}</text>')
        for value, color, dy in ((run, _RUN_COLOR, 0), (ref, _REF_COLOR, bar_h)):
            if value is None:
                parts.append(f'<text x="{left + 2}" y="{y + dy + bar_h - 1}" font-size="10" fill="#888">n/a</text>')
                continue
            w = max(1.0, width * max(0.0, min(1.0, value)))
            parts.append(f'<rect x="{left}" y="{y + dy}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + dy + bar_h - 1}" font-size="10">{value:.3f}</text>')
        y += 2 * bar_h + gap
    parts.append("</svg>")
    return "".join(parts)


def _html_split(split: SplitResult, ref: ReferenceEntry | None) -> str:
    use_ref = ref if split.split == "test" else None
    cls = ' class="dev"' if split.split != "test" else ""
    out = [f"<h2{cls}>{html.escape(SPLIT_TITLES.get(split.split, split.split))}</h2>", '<div class="charts">']
    for board in BOARDS:
        names = [n for n, t in split.tasks.items() if t.board == board]
        if not names:
            continue
        rows = [(n + ("*" if use_ref and n in use_ref.task_names_inferred else ""), split.tasks[n].score,
                 use_ref.tasks.get(n) if use_ref else None) for n in names]
        b = split.aggregate.boards.get(board)
        rows.append((f"{BOARD_LABELS[board]} (board)", b.score if b else None, use_ref.boards.get(board) if use_ref else None))
        out.append(board_chart_svg(BOARD_LABELS[board], rows))
    out.append("</div>")
    agg = split.aggregate
    out.append(f"<p><b>Multi</b>: {fmt(agg.multi)} over {agg.tasks_scored}/{agg.tasks_total} datasets"
               + (f" (reference {fmt(use_ref.multi)})" if use_ref else "") + "</p>")
    head = ("Dataset", "Board", "Score", "Reference", "Metrics", "ok / expected", "failed", "rejected", "missing",
            "finish reasons", "latency mean / p95 (s)", "samples/min", "tokens in / out", "note")
    out.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for t in split.tasks.values():
        finish = ", ".join(f"{k}: {v}" for k, v in sorted(t.finish_reasons.items()))
        cells = (t.task, t.board, fmt(t.score), _ref_task(use_ref, t.task, split.split), _metrics_text(t),
                 f"{t.ok} / {t.expected}", t.failed, t.invalid_request, t.missing, finish,
                 f"{fmt(t.latency_mean_s, 2)} / {fmt(t.latency_p95_s, 2)}", fmt(t.throughput_per_min, 1),
                 f"{t.prompt_tokens} / {t.completion_tokens}", t.note)
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(results: Results, ref: ReferenceEntry | None) -> str:
    body = ["<h1>MERA Multi run report</h1>"]
    if results.problems:
        body.append('<div class="problems"><b>Problems with this run:</b><ul>'
                    + "".join(f"<li>{html.escape(p)}</li>" for p in results.problems) + "</ul></div>")
    body.append(f"<p>Run: <code>{html.escape(results.run_dir)}</code><br>{html.escape(_settings_line(results))}</p>")
    if ref is not None:
        body.append(f'<p class="legend"><span style="background:{_RUN_COLOR}"></span>this run '
                    f'<span style="background:{_REF_COLOR}"></span>{html.escape(ref.name)}; '
                    "* = dataset name inferred from the leaderboard page order</p>")
    body += [_html_split(split, ref) for split in results.splits.values()]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MERA Multi report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_reports(results: Results, run_dir: Path, ref: ReferenceEntry | None) -> dict[str, Path]:
    run_dir = Path(run_dir)
    paths = {"results": run_dir / RESULTS_FILE, "markdown": run_dir / REPORT_MD, "html": run_dir / REPORT_HTML}
    paths["results"].write_text(results.to_json() + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results, ref), encoding="utf-8")
    paths["html"].write_text(render_html(results, ref), encoding="utf-8")
    return paths


def results_summary(results: Results) -> dict:
    """Compact {split: {multi, boards}} for logs and tests."""
    return {name: {"multi": s.aggregate.multi, "boards": {b: v.score for b, v in s.aggregate.boards.items()}}
            for name, s in results.splits.items()}


def publish(results: Results, run_dir: Path, ref: ReferenceEntry | None, console: Console) -> dict[str, Path]:
    """Write every report file for a run and print its table (what `score` and `report` both end with)."""
    paths = write_reports(results, run_dir, ref)
    print_table(results, ref, console)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths
