"""The run store: one SQLite file per run folder, every reply committed the moment it arrives.

The folder belongs to one run configuration (model, generation settings, media options, data
source, split): opening it with a different configuration is refused, so old and new answers are
never mixed. Samples are keyed by `sample_key` (task/domain/split/id), so re-running the same
command sends only what is missing and never stores a sample twice. Media are never stored, only
the request digest (media as sha256).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from evaluator.errors import UserError
from evaluator.schema import Reply

STORE_FILE = "store.sqlite"
CONFIG_FILE = "run.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS expected (
    sample_key TEXT PRIMARY KEY, task TEXT NOT NULL, domain TEXT, split TEXT NOT NULL, sample_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (
    sample_key TEXT PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_task ON replies(task, status);
"""


class StoreError(UserError):
    pass


class ExpectedSample(NamedTuple):
    sample_key: str
    task: str
    domain: str | None
    split: str
    sample_id: int


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, conn: sqlite3.Connection, run_dir: Path) -> None:
        self._conn = conn
        self.run_dir = run_dir
        # One connection, used from the event loop and from the thread that streams the dataset.
        self._lock = threading.RLock()

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def _connect(cls, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed reply survives a process kill
        conn.executescript(_SCHEMA)
        return conn

    @classmethod
    def open(cls, run_dir: Path, config: dict[str, Any]) -> RunStore:
        """Open (or create) the run folder for `config`; refuse a folder made for another config."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(run_dir / STORE_FILE)
        wanted = config_hash(config)
        row = conn.execute("SELECT value FROM run WHERE key='config_hash'").fetchone()
        if row is None:
            conn.execute("INSERT INTO run VALUES ('config_hash', ?), ('config', ?), ('created_at', ?)",
                         (wanted, json.dumps(config, sort_keys=True, default=str), str(time.time())))
            (run_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        elif row[0] != wanted:
            old = json.loads(conn.execute("SELECT value FROM run WHERE key='config'").fetchone()[0])
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config.get(k), default=str)))
            conn.close()
            raise StoreError(
                f"{run_dir} holds a run with a different configuration (changed: {', '.join(changed) or '?'}); "
                "use a new --output folder for a new run"
            )
        return cls(conn, run_dir)

    @classmethod
    def open_existing(cls, run_dir: Path) -> RunStore:
        path = Path(run_dir) / STORE_FILE
        if not path.is_file():
            raise StoreError(f"no run store at {path} (run `mera-eval run --output {run_dir}` first)")
        return cls(cls._connect(path), Path(run_dir))

    def close(self) -> None:
        self._conn.close()

    # --- writing --------------------------------------------------------------------------------
    def expect(self, samples: Iterable[ExpectedSample | tuple]) -> None:
        rows = [tuple(s) for s in samples]
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany("INSERT OR IGNORE INTO expected VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record(self, reply: Reply) -> None:
        """Upsert one reply and commit it (autocommit): it is on disk when this returns."""
        if reply.created_at is None:
            reply = reply.model_copy(update={"created_at": time.time()})
        with self._lock:
            self._record(reply)

    def _record(self, reply: Reply) -> None:
        self._conn.execute(
            "INSERT INTO replies VALUES (?, ?, ?, ?, ?) ON CONFLICT(sample_key) DO UPDATE SET "
            "status=excluded.status, body=excluded.body, updated_at=excluded.updated_at",
            (reply.sample_key, reply.task, reply.status, reply.model_dump_json(), time.time()),
        )
        self._conn.execute("INSERT OR IGNORE INTO expected VALUES (?, ?, ?, ?, ?)",
                           (reply.sample_key, reply.task, reply.domain, reply.split, reply.sample_id))

    # --- reading --------------------------------------------------------------------------------
    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def run_config(self) -> dict[str, Any]:
        rows = self._query("SELECT value FROM run WHERE key='config'")
        return json.loads(rows[0][0]) if rows else {}

    def done_keys(self, include_errors: bool = False) -> set[str]:
        """Keys that need no re-send: ok replies, plus recorded failures unless they are to be retried."""
        sql = "SELECT sample_key FROM replies" + ("" if include_errors else " WHERE status='ok'")
        return {r[0] for r in self._query(sql)}

    def get(self, sample_key: str) -> Reply | None:
        rows = self._query("SELECT body FROM replies WHERE sample_key=?", (sample_key,))
        return Reply.model_validate_json(rows[0][0]) if rows else None

    def replies(self, task: str | None = None, split: str | None = None, status: str | None = None) -> Iterator[Reply]:
        sql, args = "SELECT body FROM replies WHERE 1=1", []
        if task:
            sql, args = sql + " AND task=?", [*args, task]
        if status:
            sql, args = sql + " AND status=?", [*args, status]
        for (body,) in self._query(sql + " ORDER BY sample_key", args):
            reply = Reply.model_validate_json(body)
            if split is None or reply.split == split:
                yield reply

    def expected(self, task: str | None = None, split: str | None = None) -> Iterator[ExpectedSample]:
        sql, args = "SELECT * FROM expected WHERE 1=1", []
        if task:
            sql, args = sql + " AND task=?", [*args, task]
        if split:
            sql, args = sql + " AND split=?", [*args, split]
        for row in self._query(sql + " ORDER BY task, domain, sample_id", args):
            yield ExpectedSample(*row)

    def status_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for (task,) in self._query("SELECT DISTINCT task FROM expected"):
            counts.setdefault(task, {})
        for task, status, n in self._query("SELECT task, status, count(*) FROM replies GROUP BY task, status"):
            counts.setdefault(task, {})[status] = n
        for task, n in self._query(
            "SELECT e.task, count(*) FROM expected e LEFT JOIN replies r USING(sample_key) "
            "WHERE r.sample_key IS NULL GROUP BY e.task"
        ):
            counts.setdefault(task, {})["missing"] = n
        return counts

    # --- invocations (who ran this folder, when, against what) ---------------------------------------
    def record_invocation(self, info: dict[str, Any]) -> None:
        """Upsert one invocation of `mera-eval run` (keyed by its `started_at`): endpoints, times, counts.
        Kept in the `run` table, so the report can say when and against what the run was made."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO run VALUES (?, ?)",
                               (f"invocation:{info['started_at']:.6f}", json.dumps(info, default=str)))

    def invocations(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT value FROM run WHERE key LIKE 'invocation:%' ORDER BY key")
        return [json.loads(value) for (value,) in rows]
