"""What identifies a run, for the report header and results.json: model, endpoints, split, data, dates,
generation settings, media options, the evaluator version, the judge.

Read from what the run store holds: the run's configuration (`run.json`, also in the store) and one
record per `mera-eval run` invocation (endpoints, start, end, requests sent, version). The settings
are rendered from whatever keys the configuration has, so a new setting appears without a change here.
"""

from __future__ import annotations

import importlib.metadata
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from evaluator.store import RunStore


def evaluator_version() -> str:
    try:
        return importlib.metadata.version("mera-multi")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from evaluator import __version__

        return __version__


def invocation_record(endpoints: list[str], started_at: float) -> dict[str, Any]:
    """The record `runner.run` keeps for one invocation (completed with `ended_at` and `sent` at its end)."""
    return {"started_at": started_at, "ended_at": None, "endpoints": [public_url(e) for e in endpoints],
            "sent": 0, "version": evaluator_version()}


def public_url(url: str) -> str:
    """A URL without user:password (never written into a report)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class RunInfo(BaseModel):
    model: str | None = None
    endpoints: list[str] = Field(default_factory=list)
    split: str | None = None
    data: str | None = None
    started_at: float | None = None  # the first invocation's start
    ended_at: float | None = None  # the last invocation's end
    duration_s: float | None = None  # time spent in invocations (gaps between resumes not counted)
    invocations: int = 0
    interrupted: int = 0  # invocations that ended without recording their end (killed, crashed)
    sent: int = 0  # requests answered during the recorded invocations
    generation: dict[str, Any] = Field(default_factory=dict)
    media: dict[str, Any] = Field(default_factory=dict)  # request options and ruTiE settings
    evaluator_versions: list[str] = Field(default_factory=list)  # of the invocations that made the run
    concurrency: list[str] = Field(default_factory=list)  # requests in flight and why, per distinct invocation setting
    scored_by: str = Field(default_factory=evaluator_version)
    judge: str | None = None
    scored_at: float = Field(default_factory=time.time)

    @property
    def throughput_per_min(self) -> float | None:
        """Requests answered per minute of invocation time."""
        if not self.duration_s or not self.sent:
            return None
        return 60.0 * self.sent / self.duration_s


_GENERATION_ORDER = ("temperature", "max_tokens", "seed", "stop", "extra_body")


def _ordered(settings: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """The usual settings in their usual order, then any others (run.json stores keys sorted)."""
    return {**{k: settings[k] for k in first if k in settings}, **{k: v for k, v in settings.items() if k not in first}}


def run_info(store: RunStore, judge: str | None = None) -> RunInfo:
    config = store.run_config()
    records = store.invocations()
    info = RunInfo(
        model=config.get("model"), split=config.get("split"), data=config.get("data"), judge=judge,
        generation=_ordered({k: v for k, v in (config.get("params") or {}).items() if k != "model"}, _GENERATION_ORDER),
        media={**(config.get("media") or {}),
               **{k: v for k, v in config.items() if k not in ("model", "params", "media", "split", "data")}},
        invocations=len(records),
    )  # fmt: skip
    ended = [r for r in records if r.get("ended_at")]
    info.interrupted = len(records) - len(ended)
    info.endpoints = list(dict.fromkeys(e for r in records for e in r.get("endpoints", [])))
    info.evaluator_versions = list(dict.fromkeys(r["version"] for r in records if r.get("version")))
    info.concurrency = list(dict.fromkeys(f"{c['value']} ({c['reason']})" for r in records
                                          if isinstance(c := r.get("concurrency"), dict) and "value" in c))
    if records:
        info.started_at = min(r["started_at"] for r in records)
    if ended:
        info.ended_at = max(r["ended_at"] for r in ended)
        info.duration_s = sum(r["ended_at"] - r["started_at"] for r in ended)
        info.sent = sum(int(r.get("sent") or 0) for r in ended)
    return info


# --- rendering ------------------------------------------------------------------------------------
def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else _value(v) for v in value) + "]"
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_value(v)}" for k, v in settings.items()) or "—"


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z") if ts else "—"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def header_lines(info: RunInfo) -> list[tuple[str, str]]:
    """(label, value) pairs, in reading order, for every report."""
    runs = f"{info.invocations} invocation{'s' if info.invocations != 1 else ''}"
    if info.interrupted:
        runs += f", {info.interrupted} ended without a record (killed or crashed)"
    rate = f", {info.throughput_per_min:.1f} requests/min" if info.throughput_per_min else ""
    return [
        ("model", info.model or "—"),
        ("endpoint", ", ".join(info.endpoints) or "—"),
        ("split", {"test": "test (the leaderboard's)", "shots": "shots (MERA's dev split, with answers)"}.get(
            info.split or "", info.split or "—")),
        ("data", info.data or "—"),
        ("date", f"{when(info.started_at)}; {duration(info.duration_s)} in {runs}{rate}" if info.invocations else "—"),
        ("concurrency", "; ".join(info.concurrency) or "—"),
        ("generation", settings_text(info.generation)),
        ("media", settings_text(info.media)),
        ("judge", info.judge or "none (JudgeScore absent)"),
        ("evaluator", f"mera-multi {', '.join(info.evaluator_versions) or '(version not recorded)'} "
                      f"(scored by {info.scored_by})"),
    ]
