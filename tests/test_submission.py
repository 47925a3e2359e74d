"""The submission zip: MERA's layout, filtered outputs, ruTiE ids, validation before every write."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from evaluator.cli import main
from evaluator.registry import TASKS
from evaluator.submission import SubmissionError, validate_files, validate_zip, write_submission
from tests.scoring_fixtures import make_run


def test_complete_run_gives_the_leaderboard_layout(tmp_path):
    run = make_run(tmp_path / "run")
    path, report = write_submission(run)
    assert report.ok and not report.warnings
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert names == {f"{s.submission_name}.json" for s in TASKS.values()} | {"logs_public.zip"}
        school = json.loads(zf.read("SchoolScienceVQA.json"))
        assert len(school["data"]["test"]) == 6  # two domains merged into one file
        item = school["data"]["test"][0]
        assert set(item) == {"outputs", "meta"} and isinstance(item["meta"]["id"], int)
        slun = json.loads(zf.read("ruSLUn.json"))["data"]["test"][0]["outputs"]
        assert slun == '{"intent": "alarm/set", "slots": [{"time": "семь утра"}]}'  # after its filter
        tie = json.loads(zf.read("ruTiE_Image.json"))["data"]["test"]
        assert [e["meta"]["id"] for e in tie] == [111, 112, 113] and tie[0]["outputs"] == "A"  # submission ids, lstrip
        raw = json.loads(zf.read("ruCLEVR.json"))["data"]["test"]
        assert [e["outputs"] for e in raw] == ["A", "ОТВЕТ A", "A"]  # raw text, no extraction
        logs = zipfile.ZipFile(io.BytesIO(zf.read("logs_public.zip"))).namelist()
        assert logs and all(n.startswith("samples_") for n in logs)
    assert validate_zip(path, run).ok
    assert main(["validate-submission", str(path), "--run", str(run)]) == 0


def test_incomplete_run_refuses_without_flag(tmp_path):
    run = make_run(tmp_path / "run", drop=("RealVQA",), fail=("AQUARIA",))
    with pytest.raises(SubmissionError) as err:
        write_submission(run)
    assert any("RealVQA.json" in e for e in err.value.report.errors)
    assert any("AQUARIA.json" in e for e in err.value.report.errors)
    assert not (run / "submission.zip").exists()
    assert main(["submit", str(run)]) == 1
    assert main(["submit", str(run), "--allow-incomplete"]) == 0
    assert (run / "submission.zip").is_file()
    assert not validate_zip(run / "submission.zip", run).ok
    assert validate_zip(run / "submission.zip", run, allow_incomplete=True).ok


def test_validator_catches_bad_shapes():
    good = {"data": {"test": [{"outputs": "A", "meta": {"id": 1}}]}}
    files = {f"{s.submission_name}.json": good for s in TASKS.values()}
    assert validate_files(files).ok
    bad = dict(files)
    bad["WEIRD.json"] = {"data": {"test": [{"outputs": 1, "meta": {"id": 1}}, {"outputs": "A", "meta": {"id": 1}}]}}
    bad["ruCLEVR.json"] = {"test": []}
    bad["Extra.json"] = good
    bad["ruEnvAQA.json"] = {"data": {"test": [{"outputs": "A", "meta": {"id": "1"}}]}}
    errors = "\n".join(validate_files(bad).errors)
    for needle in ("outputs is int", "appears more than once", "ruCLEVR.json: not shaped", "Extra.json",
                   "meta.id is not an integer"):
        assert needle in errors
    partial = {"WEIRD.json": good}
    assert not validate_files(partial).ok and validate_files(partial, allow_incomplete=True).ok
    assert "2 expected ids" in "\n".join(validate_files(files, {"WEIRD.json": {1, 2, 3}}).errors)


def test_zip_with_nested_paths_is_rejected(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("sub/WEIRD.json", "{}")
        zf.writestr("ruCLEVR.json", "not json")
    errors = "\n".join(validate_zip(path).errors)
    assert "zip root" in errors and "not UTF-8 JSON" in errors


def test_the_logs_are_built_from_the_store_never_from_files_a_previous_run_left(tmp_path):
    """`samples/` is written only when a run ends normally: after an interrupted resume it is stale."""
    run = make_run(tmp_path / "run")
    stale = run / "samples"
    stale.mkdir()
    (stale / "samples_weird_2099-01-01T00-00-00.000001.jsonl").write_text('{"resps": [["stale answer"]]}\n')
    (run / "results_2099-01-01T00-00-00.json").write_text("{}")
    path, _ = write_submission(run)
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(io.BytesIO(zf.read("logs_public.zip"))) as logs:
        names = logs.namelist()
        weird = next(n for n in names if n.startswith("samples_weird_"))
        lines = [json.loads(line) for line in logs.read(weird).decode().splitlines()]
    assert "2099" not in " ".join(names) and all(n.startswith("samples_") for n in names)
    assert len(lines) == 6 and {tuple(line["resps"][0]) for line in lines} == {("A",), ("ОТВЕТ A",)}
    assert len({n.rsplit("_", 1)[0] for n in names}) == len(names)  # one log per lm-eval task
