"""The leaderboard submission zip, as MERA's `scripts/log_to_submission.py` (@0f32158) builds it.

Layout (files at the zip root): one `<SubmissionName>.json` per dataset,
`{"data": {"test": [{"outputs": <str>, "meta": {"id": <int>}}, ...]}}`, domains merged into one
file; plus `logs_public.zip` holding the `samples_*` logs. `outputs` is what the official script
submits, lm-eval's `filtered_resps[0]`: the raw reply text, except ruSLUn (lowercase + its JSON
clean-up filter) and ruTiE gen (leading whitespace removed). ruTiE ids: `meta["submission_id"]`
when the dialogue runner set one, else the sample's `meta.id` (the official script uses `meta.id`
when present and rebuilds it from question/dialog ids otherwise).

The validator runs on the in-memory submission before anything is written, and on any zip on disk.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from evaluator.errors import UserError
from evaluator.export import TIMESTAMP_FORMAT, log_name, sample_logs
from evaluator.filters import filtered_output
from evaluator.registry import TASKS
from evaluator.schema import Reply
from evaluator.store import RunStore

SUBMISSION_NAMES: dict[str, str] = {spec.submission_name: spec.name for spec in TASKS.values()}
LOGS_NAME = "logs_public.zip"


class ValidationReport(BaseModel):
    errors: list[str] = Field(default_factory=list)  # the site would reject or zero these
    warnings: list[str] = Field(default_factory=list)  # accepted under --allow-incomplete
    counts: dict[str, int] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


class SubmissionError(Exception):
    def __init__(self, report: ValidationReport) -> None:
        super().__init__("submission is not valid:\n  " + "\n  ".join(report.errors + report.warnings))
        self.report = report


class WrongSplitError(UserError):
    pass


def check_test_split(store: RunStore) -> None:
    """The leaderboard scores the test split: a run made on `shots` only has nothing to submit."""
    if next(store.expected(split="test"), None) is None and next(store.expected(split="shots"), None) is not None:
        raise WrongSplitError(f"{store.run_dir} was run on the shots split (MERA's dev split, for local scores); "
                              "the leaderboard takes the test split",
                              fix="run `mera-eval run ... --split test` into a new --output and submit that folder")


def submission_id(reply: Reply) -> int:
    value = reply.meta.get("submission_id")
    return int(value) if value is not None else int(reply.sample_id)


def build_files(store: RunStore) -> tuple[dict[str, dict[str, Any]], dict[str, set[int]]]:
    """{file name: JSON body} from the test-split ok replies, and {file name: expected ids}."""
    files: dict[str, dict[str, Any]] = {}
    expected: dict[str, set[int]] = {}
    for spec in TASKS.values():
        entries = []
        replies = {r.sample_key: r for r in store.replies(task=spec.name, split="test", status="ok")}
        for reply in replies.values():
            entries.append({"outputs": filtered_output(spec, reply.content), "meta": {"id": submission_id(reply)}})
        ids: set[int] = set()
        for exp in store.expected(task=spec.name, split="test"):
            done = replies.get(exp.sample_key)
            ids.add(submission_id(done) if done else int(exp.sample_id))
        for reply in store.replies(task=spec.name, split="test"):
            ids.add(submission_id(reply))
        if entries or ids:
            name = f"{spec.submission_name}.json"
            entries.sort(key=lambda e: e["meta"]["id"])
            files[name] = {"data": {"test": entries}}
            expected[name] = ids
    return files, expected


def validate_files(files: Mapping[str, Any], expected_ids: Mapping[str, set[int]] | None = None, *,
                   allow_incomplete: bool = False, has_logs: bool = True) -> ValidationReport:
    """Names, shapes, string outputs, int ids, each id once, every expected id present."""
    report = ValidationReport()
    incomplete = report.warnings if allow_incomplete else report.errors
    for name in files:
        if name.removesuffix(".json") not in SUBMISSION_NAMES or not name.endswith(".json"):
            report.errors.append(f"{name}: not a MERA Multi submission file name")
    for sub_name in SUBMISSION_NAMES:
        if f"{sub_name}.json" not in files:
            incomplete.append(f"{sub_name}.json: missing (the leaderboard scores a missing dataset 0)")
    if not has_logs:
        incomplete.append(f"{LOGS_NAME}: missing")
    for name, body in files.items():
        try:
            items = body["data"]["test"]
        except (TypeError, KeyError):
            report.errors.append(f'{name}: not shaped {{"data": {{"test": [...]}}}}')
            continue
        if not isinstance(items, list):
            report.errors.append(f"{name}: data.test is not a list")
            continue
        seen: set[int] = set()
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            if not isinstance(item, dict) or set(item) != {"outputs", "meta"}:
                report.errors.append(f'{where}: must be {{"outputs": str, "meta": {{"id": int}}}}')
                continue
            if not isinstance(item["outputs"], str):
                report.errors.append(f"{where}: outputs is {type(item['outputs']).__name__}, not a string")
            meta = item["meta"]
            sid = meta.get("id") if isinstance(meta, dict) else None
            if not isinstance(sid, int) or isinstance(sid, bool):
                report.errors.append(f"{where}: meta.id is not an integer")
                continue
            if sid in seen:
                report.errors.append(f"{where}: id {sid} appears more than once")
            seen.add(sid)
        report.counts[name] = len(items)
        if expected_ids is not None and name in expected_ids:
            absent = expected_ids[name] - seen
            extra = seen - expected_ids[name]
            if absent:
                incomplete.append(f"{name}: {len(absent)} expected ids have no output (e.g. {sorted(absent)[:5]})")
            if extra:
                report.errors.append(f"{name}: {len(extra)} ids the run never expected (e.g. {sorted(extra)[:5]})")
    return report


def logs_zip_bytes(store: RunStore) -> bytes | None:
    """`logs_public.zip`: the `samples_*` logs built from the store now (never from files a previous run
    left in `samples/`, which are written only when a run ends normally)."""
    logs = sample_logs(store)
    if not logs:
        return None
    stamp = datetime.now().strftime(TIMESTAMP_FORMAT)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for lm_task, lines in sorted(logs.items()):
            zf.writestr(log_name(lm_task, stamp), "\n".join(lines) + "\n")
    return buffer.getvalue()


def write_submission(run_dir: Path, out_path: Path | None = None, *, allow_incomplete: bool = False) -> tuple[Path, ValidationReport]:
    """Build, validate, then write the zip (nothing is written when validation fails)."""
    run_dir = Path(run_dir)
    store = RunStore.open_existing(run_dir)
    try:
        check_test_split(store)
        files, expected = build_files(store)
        logs = logs_zip_bytes(store)
    finally:
        store.close()
    report = validate_files(files, expected, allow_incomplete=allow_incomplete, has_logs=logs is not None)
    if not report.ok:
        raise SubmissionError(report)
    out_path = Path(out_path) if out_path else run_dir / "submission.zip"
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, body in sorted(files.items()):
                zf.writestr(name, json.dumps(body, ensure_ascii=False, indent=4))
            if logs is not None:
                zf.writestr(LOGS_NAME, logs)
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written zip behind
        raise
    return out_path, report


def read_zip(path: Path) -> tuple[dict[str, Any], list[str], bool]:
    """(JSON files by name, problems reading it, has logs_public.zip)."""
    files: dict[str, Any] = {}
    problems: list[str] = []
    has_logs = False
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            if "/" in name:
                problems.append(f"{name}: files must sit at the zip root")
                continue
            if name == LOGS_NAME:
                has_logs = True
                try:
                    zipfile.ZipFile(io.BytesIO(zf.read(name))).testzip()
                except zipfile.BadZipFile:
                    problems.append(f"{name}: not a zip")
                continue
            try:
                files[name] = json.loads(zf.read(name).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"{name}: not UTF-8 JSON ({exc})")
    return files, problems, has_logs


def validate_zip(path: Path, run_dir: Path | None = None, *, allow_incomplete: bool = False) -> ValidationReport:
    """Check a zip on disk; with `run_dir`, also that every id the run expected is present once."""
    try:
        files, problems, has_logs = read_zip(Path(path))
    except (zipfile.BadZipFile, OSError) as exc:
        return ValidationReport(errors=[f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"])
    expected = None
    if run_dir is not None:
        store = RunStore.open_existing(run_dir)
        try:
            expected = build_files(store)[1]
        finally:
            store.close()
    report = validate_files(files, expected, allow_incomplete=allow_incomplete, has_logs=has_logs)
    report.errors[:0] = problems
    return report
