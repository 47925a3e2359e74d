"""What the CLI prints: tables at 80×24 and 120×40 and unbounded (a pipe), progress bars and log lines
(with a fake clock), failures grouped by reason, the throughput figure, the report header."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from evaluator.cli.progress import LiveProgress, LogProgress, Tally
from evaluator.cli.show import print_results
from evaluator.cli.tables import UNBOUNDED, Col, fit_table
from evaluator.cli.tasks import COLUMNS, row
from evaluator.failures import group_failures, verdict
from evaluator.reference import GEMMA_4_E4B_IT
from evaluator.registry import TASKS
from evaluator.report import render_markdown, write_reports
from evaluator.runinfo import invocation_record
from evaluator.runner import TaskProgress
from evaluator.schema import Reply, sample_key
from evaluator.scoring import ScoreOptions, busy_seconds, score_run
from evaluator.store import RunStore
from tests.scoring_fixtures import make_run


def render(renderable_fn, width: int) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=True, color_system=None, highlight=False)
    renderable_fn(console)
    return buffer.getvalue().splitlines()


# --- tables that fit -----------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 120, UNBOUNDED])
def test_tasks_table_fits_the_width_and_never_cuts_a_name(width):
    lines = render(lambda c: c.print(fit_table(COLUMNS, [row(s) for s in TASKS.values()], c.width)), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    for name in TASKS:
        assert sum(1 for line in lines if line.startswith(name + " ")) == 1, name
    assert not any("…" in line for line in lines)
    header = lines[0].split()
    assert header[:2] == ["dataset", "board"]
    if width == 80:
        assert len(lines) <= 24 and "hub" not in header  # 80×24: the less important columns are gone
    if width == UNBOUNDED:
        assert "hub" in header and "lm-eval" in header  # a pipe gets everything


def test_a_fold_column_wraps_only_at_spaces_and_only_when_nothing_less_important_is_left():
    cols = [Col("name"), Col("words", 1, fold=True), Col("extra", 2)]
    rows = [["ruNaturalScienceVQA", "group EM, group JudgeScore", "x" * 30]]
    lines = render(lambda c: c.print(fit_table(cols, rows, c.width)), 50)
    assert "extra" not in lines[0] and lines[2].startswith("ruNaturalScienceVQA  group EM, group JudgeScore")
    lines = render(lambda c: c.print(fit_table(cols, rows, c.width)), 40)
    assert [line.rstrip() for line in lines[2:]] == ["ruNaturalScienceVQA  group EM, group", "                     JudgeScore"]


@pytest.mark.parametrize("width, height", [(80, 24), (120, 40)])
def test_score_output_fits_the_terminal_with_one_table_per_split(tmp_path, width, height):
    run = make_run(tmp_path / "run", fail=("WEIRD",))
    results = score_run(run, ScoreOptions())
    lines = render(lambda c: print_results(results, GEMMA_4_E4B_IT, c), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    for name in TASKS:  # every name whole, each once per split table
        assert sum(1 for line in lines if line.startswith(name + " ")) == 2, name
    assert not any("…" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("Multi ")) == 2
    # a note is written once, as a footnote, not in every row it concerns
    assert sum(1 for line in lines if "scored by the leaderboard (test gold is hidden)" in line) == 1
    assert sum(1 for line in lines if line.startswith("LabTabVQA ") and "—³" in line) == 1
    test_table = lines[lines.index("Test split (leaderboard-comparable where gold is public)"):]
    test_table = test_table[: test_table.index("Shots split — dev estimate only, not comparable to the leaderboard")]
    if height >= 40:  # 18 datasets and 4 board rows need more than 24 lines: at 80×24 the table scrolls
        assert len(test_table) < height


# --- progress ------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_writes_a_line_every_interval_and_at_each_task_end():
    clock, buffer = FakeClock(), io.StringIO()
    display = LogProgress(Console(file=buffer, width=UNBOUNDED), interval=10, clock=clock, wallclock=lambda: "12:00:00")
    with display:
        display.update("ruCLEVR", TaskProgress(total=4))
        display.update("WEIRD", TaskProgress(total=6))
        display.tick()
        assert buffer.getvalue() == ""  # nothing to say before the interval
        for done in range(1, 5):
            clock.now += 1
            display.update("ruCLEVR", TaskProgress(total=4, done=done, errors=1 if done == 4 else 0))
        clock.now += 6
        display.tick()
        clock.now += 3
        display.tick()  # within the interval of the last line: no line
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "[12:00:00] ruCLEVR done: 4/4 (1 error) in 3s",
        # first reply at +1 s, 4 replies by +10 s: 0.44/s, 6 to go
        "[12:00:00] 4/10 samples (40%) · 0.4/s · ETA 14s · 1 error · 1 of 2 tasks done, 0 running, 1 waiting",
        "[12:00:00] done: 4/10 samples (40%) · 0.3/s · ETA 18s · 1 error",
    ]


def test_tally_rate_and_eta_count_this_invocation_only():
    clock = FakeClock()
    tally = Tally(clock)
    tally.update("a", TaskProgress(total=100, skipped=50))  # already stored: not part of the rate
    clock.now += 30  # waiting for the endpoint: not part of the rate either
    tally.update("a", TaskProgress(total=100, skipped=50, done=1))
    clock.now += 10
    tally.update("a", TaskProgress(total=100, skipped=50, done=11))
    assert tally.rate() == pytest.approx(1.1)
    assert tally.eta() == pytest.approx(39 / 1.1)
    assert tally.summary() == "61/100 samples (61%) · 1.1/s · ETA 35s · 0 errors"


def test_live_progress_starts_a_task_clock_only_when_it_starts():
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    display = LiveProgress(console)
    with display:
        display.update("ruCLEVR", TaskProgress(total=4))
        display.update("WEIRD", TaskProgress(total=4))
        display.update("ruCLEVR", TaskProgress(total=4, done=1))
        tasks = {t.description.strip(): t for t in display.bars.tasks}
        assert tasks["ruCLEVR"].started and not tasks["WEIRD"].started
        assert tasks["WEIRD"].elapsed is None  # shown as -:--:--, not a running clock
        overall = tasks["all tasks"]
        assert (overall.completed, overall.total) == (1, 8)


# --- failures, throughput, header ----------------------------------------------------------------
def reply(key_id: int, status: str, http: int | None, error: str | None, task: str = "ruCLEVR") -> Reply:
    return Reply(sample_key=sample_key(task, None, "test", key_id), task=task, domain=None, split="test",
                 sample_id=key_id, status=status, http_status=http, error=error)


def test_failures_are_grouped_by_status_and_message_with_what_a_retry_can_do():
    context = ("This model's maximum context length is 10000 tokens. However, you requested {} tokens "
               "({} in the messages, 10000 in the completion).")
    replies = [reply(i, "invalid_request", 400, context.format(10000 + i, i), task) for i, task in
               enumerate(["ruTiE-Image"] * 3 + ["ruCLEVR"])]
    replies += [reply(10, "failed", 503, "Service Unavailable"), reply(11, "failed", None, "ReadTimeout: ")]
    # a status this module has never seen (the store's statuses grow): shown as it is, without a code change
    replies += [reply(12, "ok", 200, "200 with content null").model_copy(update={"status": "empty_content"})]
    replies += [reply(13, "ok", 200, None)]
    groups = group_failures(replies)
    assert [(g.count, g.status, g.retry) for g in groups] == [
        (4, "invalid_request", "no"), (1, "empty_content", "maybe"), (1, "failed", "yes"), (1, "failed", "yes")]
    context_group = groups[0]
    assert context_group.tasks == {"ruTiE-Image": 3, "ruCLEVR": 1} and context_group.label == "rejected 400"
    assert context_group.example == context.format(10000, 0)  # the server's own words, once
    assert "--max-tokens" in context_group.advice
    assert verdict("invalid_request", 401, "bad key")[0] == "after a fix"
    assert verdict("invalid_request", 413, "too big")[0] == "no"
    assert verdict("invalid_request", 429, "slow down")[0] == "yes"


def test_throughput_is_samples_over_time_in_flight_not_over_the_completion_gap():
    # 4 samples sent together at t=0, answered at 0.5 .. 2.0 s: 4 samples in 2 s of work = 120/min.
    replies = [Reply(sample_key=f"k{i}", task="ruCLEVR", domain=None, split="test", sample_id=i, status="ok",
                     latency_s=0.5 * (i + 1), created_at=100 + 0.5 * (i + 1)) for i in range(4)]
    assert busy_seconds(replies) == pytest.approx(2.0)
    # two invocations a day apart: the gap is not work
    later = [r.model_copy(update={"sample_key": r.sample_key + "b", "created_at": r.created_at + 86400}) for r in replies]
    assert busy_seconds(replies + later) == pytest.approx(4.0)


def test_the_report_says_what_was_evaluated(tmp_path):
    run = tmp_path / "run"
    config = {"model": "google/gemma-4-E4B-it", "split": "shots", "data": "/data/mera",
              "params": {"model": "google/gemma-4-E4B-it", "temperature": 0.0, "max_tokens": 10000, "seed": 1234,
                         "stop": ["<eos>"], "extra_body": {}},
              "media": {"audio_part": "audio_url", "image_max_side": None, "video_frames": 8},
              "rutie_history": 5, "rutie_history_format": "official"}
    store = RunStore.open(run, config)
    first = invocation_record(["http://user:secret@gpu-a:8000", "http://gpu-b:8000"], 1_760_000_000.0)
    store.record_invocation({**first, "ended_at": 1_760_000_600.0, "sent": 3})
    store.record_invocation({**invocation_record(["http://gpu-a:8000"], 1_760_090_000.0), "ended_at": 1_760_090_060.0,
                             "sent": 1})  # a resume a day later
    for i in range(4):
        store.record(Reply(sample_key=sample_key("ruCLEVR", None, "shots", i), task="ruCLEVR", domain=None,
                           split="shots", sample_id=i, status="ok", content="A", gold="A", latency_s=1.0,
                           created_at=1_760_000_010.0 + i))
    store.close()
    results = score_run(run, ScoreOptions())
    md = render_markdown(results, GEMMA_4_E4B_IT)
    for fact in ("| **model** | google/gemma-4-E4B-it |", "| **endpoint** | http://gpu-a:8000, http://gpu-b:8000 |",
                 "shots (MERA's dev split, with answers)", "| **data** | /data/mera |",
                 "11m00s in 2 invocations, 0.4 requests/min", "temperature 0.0, max_tokens 10000, seed 1234",
                 "stop ['<eos>']", "video_frames 8", "rutie_history 5", "| **judge** | none (JudgeScore absent) |",
                 "| **evaluator** | mera-multi "):
        assert fact in md, fact
    assert "secret" not in md
    paths = write_reports(results, run, GEMMA_4_E4B_IT)
    data = json.loads(paths["results"].read_text())
    assert data["run"]["model"] == "google/gemma-4-E4B-it" and data["run"]["duration_s"] == 660.0
    assert data["run"]["endpoints"] == ["http://gpu-a:8000", "http://gpu-b:8000"] and data["run"]["invocations"] == 2
    assert data["run"]["generation"]["max_tokens"] == 10000 and data["run"]["media"]["video_frames"] == 8
    assert data["run"]["throughput_per_min"] == pytest.approx(60 * 4 / 660)
    # 4 answers of 1 s each, one after another: 4 samples in 4 s of requests in flight
    assert data["splits"]["shots"]["tasks"]["ruCLEVR"]["throughput_per_min"] == pytest.approx(60.0)


def test_per_domain_scores_use_the_leaderboard_labels_with_the_reference(tmp_path):
    run = make_run(tmp_path / "run")
    results = score_run(run, ScoreOptions())
    md = render_markdown(results, GEMMA_4_E4B_IT)
    section = md[md.index("### Per-domain scores"):]
    assert "| ruNaturalScienceVQA | biology | biology | 3 | 0.667 | — | 0.439 / 0.456 |" in section
    data = json.loads(results.to_json())
    shots = data["splits"]["shots"]["tasks"]["UniScienceVQA"]
    assert shots["domains"]["Applied_Sciences"]["exact_match"] is not None and shots["domain_samples"]["Business"] == 3


def test_the_report_groups_failures_with_the_servers_message(tmp_path):
    run = make_run(tmp_path / "run", fail=("WEIRD", "ruCLEVR"))
    md = render_markdown(score_run(run, ScoreOptions()), None)
    assert "## Failures: 4 samples, 1 reason" in md
    assert "| 4 | failed | boom | ruCLEVR 2, WEIRD 2 | yes |" in md
