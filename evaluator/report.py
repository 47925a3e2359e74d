"""Report files of a scored run: results.json, report.md and a self-contained report.html.

Every report opens with what was evaluated (model, endpoints, split, dates, settings, versions, judge),
then the run's problems and its failures grouped by reason, then the test figures and the `shots` dev
estimate, always apart, each with per-domain scores where the leaderboard shows them. Notes are
footnotes, written once under the table. The HTML has no external resources: styles inline, one SVG
bar chart per board (run vs the reference entry). The same row views feed the terminal table
(`evaluator.cli.show`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from evaluator.aggregate import BOARD_LABELS
from evaluator.errors import UserError
from evaluator.failures import FailureGroup
from evaluator.reference import ReferenceEntry, reference_domain
from evaluator.registry import BOARDS
from evaluator.runinfo import duration, header_lines
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
INFERRED_NOTE = "reference dataset name inferred from the leaderboard page order (evaluator/reference.py)"
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def load_results(run_dir: Path) -> Results:
    path = Path(run_dir) / RESULTS_FILE
    try:
        return Results.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise UserError(f"{path} is not a results file of this version ({exc.error_count()} problems)",
                        fix=f"score the run again: `mera-eval score {run_dir}`") from None


# --- views shared by every renderer ------------------------------------------------------------------
@dataclass
class Notes:
    """Footnotes: each distinct text gets one number; rows carry only the marker."""

    texts: list[str] = field(default_factory=list)
    symbols: dict[str, str] = field(default_factory=dict)  # notes with a fixed marker (e.g. † in a header)

    def mark(self, text: str) -> str:
        if not text:
            return ""
        if text not in self.texts:
            self.texts.append(text)
        return str(self.texts.index(text) + 1).translate(_SUPERSCRIPT)

    def lines(self) -> list[str]:
        return ([f"{str(i + 1).translate(_SUPERSCRIPT)} {text}" for i, text in enumerate(self.texts)]
                + [f"{symbol} {text}" for symbol, text in self.symbols.items()])


@dataclass
class TaskRow:
    name: str
    board: str
    score: str  # with its footnote marker
    reference: str
    metrics: str
    metric_values: list[str]  # formatted, in the task's metric order
    metric_labels: list[str]
    ok_expected: str
    errors: int  # failed + rejected + missing
    failed: int
    rejected: int
    missing: int
    finish: str
    latency: str  # mean / p95 seconds
    throughput: str  # samples per minute while the task had requests in flight
    tokens: str


@dataclass
class BoardRow:
    label: str
    score: str
    reference: str
    scored: str  # "6/11 datasets"
    scored_short: str  # "6/11 scored"


def metrics_text(task: TaskResult) -> str:
    return ", ".join(f"{METRIC_LABELS.get(m, m)} {fmt(task.metrics.get(m))}" for m in task.metrics_wanted)


def task_rows(split: SplitResult, ref: ReferenceEntry | None, notes: Notes) -> list[TaskRow]:
    use_ref = ref if split.split == "test" else None
    rows = []
    for t in split.tasks.values():
        reference = "—"
        if use_ref is not None and t.task in use_ref.tasks:
            reference = fmt(use_ref.tasks[t.task]) + (notes.mark(INFERRED_NOTE) if t.task in use_ref.task_names_inferred
                                                      else "")
        rows.append(TaskRow(
            name=t.task, board=BOARD_LABELS[t.board], score=fmt(t.score) + notes.mark(t.note),
            reference=reference, metrics=metrics_text(t), metric_values=[fmt(t.metrics.get(m)) for m in t.metrics_wanted],
            metric_labels=[METRIC_LABELS.get(m, m) for m in t.metrics_wanted], ok_expected=f"{t.ok}/{t.expected}",
            errors=t.failed + t.invalid_request + t.missing, failed=t.failed, rejected=t.invalid_request,
            missing=t.missing, finish=", ".join(f"{k}: {v}" for k, v in sorted(t.finish_reasons.items())),
            latency=f"{fmt(t.latency_mean_s, 2)} / {fmt(t.latency_p95_s, 2)}", throughput=fmt(t.throughput_per_min, 1),
            tokens=f"{t.prompt_tokens} / {t.completion_tokens}",
        ))  # fmt: skip
    return rows


def board_rows(split: SplitResult, ref: ReferenceEntry | None) -> list[BoardRow]:
    use_ref = ref if split.split == "test" else None
    agg = split.aggregate
    rows = [BoardRow(b.label, fmt(b.score), fmt(use_ref.boards.get(board)) if use_ref else "—",
                     f"{b.tasks_scored}/{b.tasks_total} datasets", f"{b.tasks_scored}/{b.tasks_total} scored")
            for board, b in agg.boards.items()]
    rows.append(BoardRow("Multi", fmt(agg.multi), fmt(use_ref.multi) if use_ref else "—",
                         f"{agg.tasks_scored}/{agg.tasks_total} datasets", f"{agg.tasks_scored}/{agg.tasks_total} scored"))
    return rows


@dataclass
class DomainRow:
    task: str
    domain: str
    label: str  # as the leaderboard page prints it, "—" where it shows none
    samples: int
    metrics: list[str]  # the task's metrics for this domain, formatted
    reference: str  # "EM / JudgeScore" of the reference entry


def domain_rows(split: SplitResult, ref: ReferenceEntry | None) -> list[DomainRow]:
    use_ref = ref if split.split == "test" else None
    rows = []
    for t in split.tasks.values():
        for domain, values in t.domains.items():
            label, ref_values = reference_domain(use_ref, t.task, domain)
            rows.append(DomainRow(
                task=t.task, domain=domain, label=label or "—", samples=t.domain_samples.get(domain, 0),
                metrics=[fmt(values.get(m)) for m in t.metrics_wanted],
                reference=" / ".join(fmt(v) for v in ref_values) if ref_values else "—",
            ))  # fmt: skip
    return rows


def domain_metric_names(split: SplitResult) -> list[str]:
    names: list[str] = []
    for t in split.tasks.values():
        if t.domains:
            names += [METRIC_LABELS.get(m, m) for m in t.metrics_wanted if METRIC_LABELS.get(m, m) not in names]
    return names


def failures_title(groups: list[FailureGroup]) -> str:
    total, n = sum(g.count for g in groups), len(groups)
    return f"Failures: {total} sample{'s' if total != 1 else ''}, {n} reason{'s' if n != 1 else ''}"


def failure_line(group: FailureGroup) -> str:
    tasks = ", ".join(f"{name} {n}" for name, n in sorted(group.tasks.items(), key=lambda kv: -kv[1]))
    retry = {"yes": "a retry can fix it", "no": "a retry will not fix it", "after a fix": "retry after a fix",
             "maybe": "a retry may fix it"}[group.retry]
    return f"{group.count} × {group.label}: {group.example} — {tasks} — {retry}: {group.advice}"


def scoring_text(results: Results) -> str:
    return f"EM {results.em}{' (corrected)' if results.corrected else ' (official)'}"


def header(results: Results) -> list[tuple[str, str]]:
    lines = [("run", results.run_dir)]
    for label, value in header_lines(results.run):
        if label == "judge":
            lines.append(("scoring", scoring_text(results)))
        lines.append((label, value))
    return lines


def throughput_note(results: Results) -> str:
    text = "samples/min: answered samples per minute while the dataset had requests in flight"
    rate = results.run.throughput_per_min
    if results.run.duration_s:
        text += f" (the whole run: {duration(results.run.duration_s)}" + (f", {rate:.1f} requests/min)" if rate else ")")
    return text


# --- markdown ------------------------------------------------------------------------------------
def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[object]], align: str = "---") -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join([align] * len(head)) + "|",
            *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)]


def render_markdown(results: Results, ref: ReferenceEntry | None) -> str:
    out = ["# MERA Multi run report", ""]
    out += _md_table(["", ""], [[f"**{k}**", v] for k, v in header(results)]) + [""]
    if ref is not None:
        out += [f"Reference: {ref.name}.", ""]
    if results.problems:
        out += ["**Problems with this run:**", ""] + [f"- {p}" for p in results.problems] + [""]
    if results.failures:
        out += [f"## {failures_title(results.failures)}", ""]
        out += _md_table(["samples", "status", "server's message", "datasets", "retry fixes it?", "what to do"],
                         [[g.count, g.label, g.example, ", ".join(f"{t} {n}" for t, n in g.tasks.items()),
                           g.retry, g.advice] for g in results.failures]) + [""]
    for split in results.splits.values():
        notes = Notes()
        out += [f"## {SPLIT_TITLES.get(split.split, split.split)}", ""]
        out += _md_table(["Board", "Score", "Reference", "datasets scored"],
                         [[f"**{b.label}**", b.score, b.reference, b.scored] for b in board_rows(split, ref)]) + [""]
        rows = task_rows(split, ref, notes)
        per_min = "samples/min" + notes.mark(throughput_note(results))
        out += _md_table(["Dataset", "Board", "Score", "Reference", "Metrics", "ok / expected", "failed", "rejected",
                          "missing", "finish reasons", "latency mean / p95 s", per_min, "tokens in / out"],
                         [[r.name, r.board, r.score, r.reference, r.metrics, r.ok_expected, r.failed, r.rejected,
                           r.missing, r.finish, r.latency, r.throughput, r.tokens] for r in rows])
        out += [""] + [f"{line}  " for line in notes.lines()] + [""]
        domains = domain_rows(split, ref)
        if domains:
            names = domain_metric_names(split)
            out += ["### Per-domain scores", ""]
            out += _md_table(["Dataset", "Domain", "leaderboard label", "samples", *names, "Reference EM / JudgeScore"],
                             [[d.task, d.domain, d.label, d.samples, *d.metrics, d.reference] for d in domains]) + [""]
    return "\n".join(out) + "\n"


# --- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.problems{background:#fff1f0;border:1px solid #e88;padding:.5em 1em}
.charts{display:flex;flex-wrap:wrap;gap:2em}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px}
.dev{color:#855}.notes{font-size:13px;color:#555}table.header th{text-align:right;background:none}
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


def _html_table(head: list[str], rows: list[list[object]], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return (f"<table{attr}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def _html_split(results: Results, split: SplitResult, ref: ReferenceEntry | None) -> str:
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
    out.append(_html_table(["Board", "Score", "Reference", "datasets scored"],
                           [[b.label, b.score, b.reference, b.scored] for b in board_rows(split, ref)]))
    notes = Notes()
    rows = task_rows(split, ref, notes)
    per_min = "samples/min" + notes.mark(throughput_note(results))
    out.append(_html_table(["Dataset", "Board", "Score", "Reference", "Metrics", "ok / expected", "failed", "rejected",
                            "missing", "finish reasons", "latency mean / p95 (s)", per_min, "tokens in / out"],
                           [[r.name, r.board, r.score, r.reference, r.metrics, r.ok_expected, r.failed, r.rejected,
                             r.missing, r.finish, r.latency, r.throughput, r.tokens] for r in rows]))
    out.append('<p class="notes">' + "<br>".join(html.escape(line) for line in notes.lines()) + "</p>")
    domains = domain_rows(split, ref)
    if domains:
        out.append("<h3>Per-domain scores</h3>")
        out.append(_html_table(["Dataset", "Domain", "leaderboard label", "samples", *domain_metric_names(split),
                                "Reference EM / JudgeScore"],
                               [[d.task, d.domain, d.label, d.samples, *d.metrics, d.reference] for d in domains]))
    return "\n".join(out)


def render_html(results: Results, ref: ReferenceEntry | None) -> str:
    body = ["<h1>MERA Multi run report</h1>",
            '<table class="header">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                               for k, v in header(results)) + "</table>"]
    if results.problems:
        body.append('<div class="problems"><b>Problems with this run:</b><ul>'
                    + "".join(f"<li>{html.escape(p)}</li>" for p in results.problems) + "</ul></div>")
    if results.failures:
        body.append(f"<h2>{html.escape(failures_title(results.failures))}</h2>")
        body.append(_html_table(["samples", "status", "server's message", "datasets", "retry fixes it?", "what to do"],
                                [[g.count, g.label, g.example, ", ".join(f"{t} {n}" for t, n in g.tasks.items()),
                                  g.retry, g.advice] for g in results.failures]))
    if ref is not None:
        body.append(f'<p class="legend"><span style="background:{_RUN_COLOR}"></span>this run '
                    f'<span style="background:{_REF_COLOR}"></span>{html.escape(ref.name)}; '
                    "* = dataset name inferred from the leaderboard page order</p>")
    body += [_html_split(results, split, ref) for split in results.splits.values()]
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
