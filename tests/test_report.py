"""Reports: files written, problems first, shots apart, self-contained HTML with one chart per board."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from evaluator.cli import main
from evaluator.reference import GEMMA_4_E4B_IT
from evaluator.report import load_results, render_html, write_reports
from evaluator.scoring import ScoreOptions, score_run
from tests.scoring_fixtures import make_run

VOID = {"meta", "br", "rect", "input", "img", "link"}


class TagChecker(HTMLParser):
    """Balanced tags, no external resources."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.errors.append(f"external resource {value}")
        if tag == "svg":
            self.svgs += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_reports_written_with_problems_on_top(tmp_path):
    run = make_run(tmp_path / "run", drop=("RealVQA",), fail=("WEIRD",))
    results = score_run(run, ScoreOptions())
    paths = write_reports(results, run, GEMMA_4_E4B_IT)
    assert all(p.is_file() for p in paths.values())

    data = json.loads(paths["results"].read_text())
    assert data["em"] == "squad" and data["corrected"] is False and data["judge_model"] is None
    assert set(data["splits"]) == {"test", "shots"}
    test = data["splits"]["test"]["tasks"]
    assert test["WEIRD"]["failed"] == 1 and test["WEIRD"]["incomplete"] is True
    assert test["LabTabVQA"]["score"] is None and "leaderboard" in test["LabTabVQA"]["note"]
    assert test["ruCLEVR"]["metrics"]["judge_score"] is None  # no judge: absent, never 0
    assert data["splits"]["shots"]["aggregate"]["tasks_scored"] == 18

    md = paths["markdown"].read_text()
    assert md.index("Problems") < md.index("## Test split") < md.index("## Shots split")
    assert "test/RealVQA: 1 missing" in md and "test/WEIRD: 1 failed" in md and "dev estimate" in md
    assert load_results(run).splits["test"].tasks["WEIRD"].failed == 1


def test_html_is_self_contained_with_a_chart_per_board(tmp_path):
    run = make_run(tmp_path / "run", fail=("WEIRD",))
    html = render_html(score_run(run, ScoreOptions()), GEMMA_4_E4B_IT)
    checker = TagChecker()
    checker.feed(html)
    assert not checker.errors and checker.stack == []
    assert checker.svgs == 6  # 3 boards x (test, shots)
    assert "<h2>Failures: 2 samples, 1 reason</h2>" in html and "<h3>Per-domain scores</h3>" in html
    assert '<table class="header"><tr><th>run</th>' in html
    assert "0.474" in html and "0.467" in html  # the reference figures
    assert "ruCLEVR*" in html  # inferred reference names are marked


def test_cli_score_report_round_trip(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["score", str(run), "--em", "lm-eval", "--corrected"]) == 0
    assert json.loads((run / "results.json").read_text())["em"] == "lm-eval"
    (run / "report.html").unlink()
    assert main(["report", str(run), "--reference", "none"]) == 0
    assert (run / "report.html").is_file()
    assert "Multi" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser installed (apt-get install chromium)")
def test_html_opens_in_a_headless_browser_without_errors(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_reports(score_run(run, ScoreOptions()), run, GEMMA_4_E4B_IT)["html"]
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("<svg") == 6 and "MERA Multi run report" in result.stdout
    assert ":CONSOLE" not in result.stderr  # no script errors or warnings logged by the page
