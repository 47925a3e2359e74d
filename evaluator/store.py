"""The run store: one SQLite file per run folder, every reply committed the moment it arrives (the
replies that arrive in the same event-loop turn in one transaction: `record_grouped`).

The folder belongs to one run configuration (model, generation settings, media options, data
source, split): opening it with a different configuration is refused, so old and new answers are
never mixed. Samples are keyed by `sample_key` (task/domain/split/id), so re-running the same
command sends only what is missing and never stores a sample twice. Media are never stored, only
the request digest (media as sha256).

Honest under faults:
* one writer: `open_for_run` takes an exclusive lock (fcntl) on the folder; a second evaluator is
  told which process holds it, at once;
* a reply that arrived is never lost to a failed write: it stays in memory until it is committed
  (every later write retries it first); `close` tries again and, if the disk still refuses, writes
  what is left to a rescue file that the next run imports;
* each dataset's revision (a hub commit, or a content hash of a local snapshot) is kept, so a resumed
  run can refuse data that changed under it;
* a folder written by an older mera-eval (store schema) is read by score/report/submit but not
  resumed, with a message saying so.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from evaluator.errors import UserError
from evaluator.schema import Reply

STORE_FILE = "store.sqlite"
CONFIG_FILE = "run.json"
LOCK_FILE = "mera-eval.lock"
RESCUE_FILE = "unsaved-replies.jsonl"
SCHEMA_VERSION = 2  # 1: no lock, path-based data identity, no dataset revisions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS expected (
    sample_key TEXT PRIMARY KEY, task TEXT NOT NULL, domain TEXT, split TEXT NOT NULL, sample_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (
    sample_key TEXT PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_task ON replies(task, status);
CREATE TABLE IF NOT EXISTS datasets (task TEXT PRIMARY KEY, revision TEXT NOT NULL);
"""


class StoreError(UserError):
    pass


class RunFolderBusy(StoreError):
    """Another evaluator holds the run folder's lock."""


class StoreSchemaError(StoreError):
    """The folder was written by another version of mera-eval's run store."""


class StoreWriteError(StoreError):
    """The store cannot be written (disk full, read-only folder); received replies are kept in memory."""

    exit_code = 1


class StoredDigests(NamedTuple):
    """What identifies the request a stored reply answered (schema.Reply's two digests)."""

    request: str | None  # the request as sent (media as sha256)
    source: str | None  # what it was built from (None in replies stored before it existed, and for not_sent)


class ExpectedSample(NamedTuple):
    sample_key: str
    task: str
    domain: str | None
    split: str
    sample_id: int


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _without_model(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out.pop("model", None)
    if isinstance(out.get("params"), dict):
        out["params"] = {k: v for k, v in out["params"].items() if k != "model"}
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    new = _plain(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def rescue_paths(run_dir: Path) -> list[Path]:
    """Where `close` puts replies it could not commit: the run folder, else the temp dir (named after it)."""
    tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return [Path(run_dir) / RESCUE_FILE, Path(tempfile.gettempdir()) / "mera-eval-unsaved" / f"{tag}.jsonl"]


# --- the folder lock ---------------------------------------------------------------------------------
class RunLock:
    """An exclusive fcntl lock on `<run_dir>/mera-eval.lock`, released when the process ends in any way."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write to {run_dir} ({exc.strerror})",
                             fix="choose a writable --output folder") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            raise RunFolderBusy(f"{run_dir} is in use by another mera-eval run ({holder})",
                                fix="wait for it to finish, or use another --output folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # the lock is what matters; who holds it is a courtesy

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "a process that has not said which"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


# --- the store -----------------------------------------------------------------------------------------
class RunStore:
    # Fault injection for tests: called with the operation ("record", "expect", "run") before each write;
    # it may raise sqlite3.OperationalError as a full disk or a read-only file would.
    fault_hook: ClassVar[Callable[[str], None] | None] = None

    def __init__(self, conn: sqlite3.Connection, run_dir: Path, lock: RunLock | None = None) -> None:
        self._conn = conn
        self.run_dir = run_dir
        self._run_lock = lock
        # One connection, used from the event loop and from the threads that stream datasets.
        self._lock = threading.RLock()
        self._unsaved: dict[str, Reply] = {}  # arrived, not yet committed
        self.rescued_to: Path | None = None
        self._closed = False
        self._group: asyncio.Future[None] | None = None  # the commit the replies of this loop turn wait for

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def _connect(cls, path: Path, *, reading: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed reply survives a process kill
            conn.executescript(_SCHEMA)
        except sqlite3.OperationalError:
            if not reading:  # a reader of a folder it cannot write (a finished run on read-only media) goes on
                conn.close()
                raise
        return conn

    @classmethod
    def open_for_run(cls, run_dir: Path) -> RunStore:
        """The folder for writing: created if needed, locked, schema checked, rescued replies imported.
        Bind it to a configuration with `bind` (or check one first with `check_config`)."""
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise StoreError(f"--output {run_dir} is a file, not a folder", fix="give a folder for the run")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the run folder {run_dir} ({exc.strerror})",
                             fix="choose a writable --output folder") from None
        lock = RunLock(run_dir)
        try:
            conn = cls._connect(run_dir / STORE_FILE)
        except sqlite3.Error as exc:
            lock.release()
            raise StoreError(f"cannot open {run_dir / STORE_FILE} ({exc})",
                             fix="choose a writable --output folder with free space") from None
        store = cls(conn, run_dir, lock)
        try:
            store._check_schema()
            store.import_rescued()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, run_dir: Path, config: dict[str, Any]) -> RunStore:
        """Open (or create) the run folder for `config`, locked; refuse a folder made for another config."""
        store = cls.open_for_run(run_dir)
        try:
            store.bind(config)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_existing(cls, run_dir: Path) -> RunStore:
        """Read a run (no lock: WAL lets score/report read a run that is still being written)."""
        path = Path(run_dir) / STORE_FILE
        if not path.is_file():
            raise StoreError(f"no run store at {path}", fix=f"run `mera-eval run --output {run_dir}` first")
        return cls(cls._connect(path, reading=True), Path(run_dir))

    def _value(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM run WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def _check_schema(self) -> None:
        schema, has_config = self._value("schema"), self._value("config_hash") is not None
        version = int(schema) if schema else (1 if has_config else None)
        if version is None:  # a new store
            self._write("run", lambda c: c.execute("INSERT OR REPLACE INTO run VALUES ('schema', ?)",
                                                   (str(SCHEMA_VERSION),)))
        elif version != SCHEMA_VERSION:
            which = "an older" if version < SCHEMA_VERSION else "a newer"
            raise StoreSchemaError(
                f"{self.run_dir} was written by {which} mera-eval (run store schema {version}, this one uses "
                f"{SCHEMA_VERSION}); `score`, `report` and `submit` still read it, but it cannot be resumed",
                fix="start the run again in a new --output folder" if version < SCHEMA_VERSION
                else "use the mera-eval version that wrote it")

    # --- configuration --------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any] | None:
        value = self._value("config")
        return json.loads(value) if value else None

    def check_config(self, config: dict[str, Any], *, model_known: bool = True) -> None:
        """Refuse a configuration other than the stored one; without the model name (read from the endpoint
        later) everything but the model is compared."""
        old = self.stored_config()
        if old is None:
            return
        new = config if model_known else _without_model(config)
        old = old if model_known else _without_model(old)
        if config_hash(_plain(old)) != config_hash(_plain(new)):
            raise StoreError(f"{self.run_dir} holds a run with a different configuration "
                             f"(changed: {', '.join(changed_keys(old, new)) or '?'})",
                             fix="use a new --output folder for a new run")

    def bind(self, config: dict[str, Any]) -> None:
        """The folder's configuration: stored if it has none, else it must be the stored one."""
        if self.stored_config() is not None:
            self.check_config(config)
            return
        text = json.dumps(config, sort_keys=True, default=str)
        self._write("run", lambda c: c.execute(
            "INSERT OR REPLACE INTO run VALUES ('config_hash', ?), ('config', ?), ('created_at', ?)",
            (config_hash(config), text, str(time.time()))))
        self._write_run_json()

    def dataset_revisions(self) -> dict[str, str]:
        try:
            return dict(self._query("SELECT task, revision FROM datasets"))
        except sqlite3.OperationalError:  # a schema-1 store opened read-only has no such table
            return {}

    def set_dataset_revisions(self, revisions: dict[str, str]) -> None:
        if revisions and revisions != {k: v for k, v in self.dataset_revisions().items() if k in revisions}:
            self._write("run", lambda c: c.executemany("INSERT OR REPLACE INTO datasets VALUES (?, ?)",
                                                       sorted(revisions.items())))
            self._write_run_json()

    def _write_run_json(self) -> None:
        try:
            text = json.dumps(self.run_config(), indent=2, sort_keys=True, default=str) + "\n"
            tmp = self.run_dir / (CONFIG_FILE + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.run_dir / CONFIG_FILE)
        except OSError as exc:
            raise StoreWriteError(f"cannot write {self.run_dir / CONFIG_FILE} ({exc.strerror})",
                                  fix="free some space or choose a writable --output folder") from None

    def close(self) -> None:
        """Commit what is still in memory (retrying a little), rescue what cannot be, release the lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for pause in (0.0, 0.5, 1.0, 2.0):
                if not self._unsaved:
                    break
                time.sleep(pause)
                try:
                    self._flush()
                except StoreWriteError:
                    continue
            if self._unsaved:
                self._rescue()
            self._conn.close()
            if self._run_lock is not None:
                self._run_lock.release()

    # --- writing --------------------------------------------------------------------------------
    def _write(self, op: str, work: Callable[[sqlite3.Connection], object]) -> None:
        """One transaction; a failed write raises StoreWriteError naming the file and the cause."""
        with self._lock:
            try:
                if RunStore.fault_hook is not None:
                    RunStore.fault_hook(op)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    work(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreWriteError(
                    f"cannot write to {self.run_dir / STORE_FILE} ({exc})",
                    fix="free some space or make the folder writable; the same command resumes") from exc

    def expect(self, samples: Iterable[ExpectedSample | tuple]) -> None:
        rows = [tuple(s) for s in samples]
        self._write("expect", lambda c: c.executemany("INSERT OR IGNORE INTO expected VALUES (?, ?, ?, ?, ?)", rows))

    def record(self, reply: Reply) -> None:
        """Upsert one reply and commit it: it is on disk when this returns. If the write fails the reply
        stays in memory (retried first by every later write and at `close`) and StoreWriteError is raised."""
        if reply.created_at is None:
            reply = reply.model_copy(update={"created_at": time.time()})
        with self._lock:
            self._unsaved[reply.sample_key] = reply
            self._flush()

    async def record_grouped(self, reply: Reply) -> None:
        """As `record`, for the event loop: the replies that arrive in the same loop turn share one commit
        (at 64+ in flight answers come back in bursts). Returns once the reply is committed; a failed write
        raises StoreWriteError in every caller of that group."""
        if reply.created_at is None:
            reply = reply.model_copy(update={"created_at": time.time()})
        with self._lock:
            self._unsaved[reply.sample_key] = reply
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit_group)
        await asyncio.shield(self._group)  # a cancelled caller leaves the group's commit to the others

    def _commit_group(self) -> None:
        group, self._group = self._group, None
        try:
            with self._lock:
                self._flush()
        except Exception as exc:  # a failed write (StoreWriteError) or a bug: every caller gets it, none hangs
            group.set_exception(exc)
            group.exception()  # retrieved here too: a group whose callers were all cancelled logs nothing
        else:
            group.set_result(None)

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    def _flush(self) -> None:
        if not self._unsaved:
            return
        pending = list(self._unsaved.values())

        def work(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(
                "INSERT INTO replies VALUES (?, ?, ?, ?, ?) ON CONFLICT(sample_key) DO UPDATE SET "
                "status=excluded.status, body=excluded.body, updated_at=excluded.updated_at",
                [(r.sample_key, r.task, r.status, r.model_dump_json(), now) for r in pending])
            conn.executemany("INSERT OR IGNORE INTO expected VALUES (?, ?, ?, ?, ?)",
                             [(r.sample_key, r.task, r.domain, r.split, r.sample_id) for r in pending])

        self._write("record", work)
        for reply in pending:
            if self._unsaved.get(reply.sample_key) is reply:
                del self._unsaved[reply.sample_key]

    def _rescue(self) -> None:
        lines = "".join(r.model_dump_json() + "\n" for r in self._unsaved.values())
        for path in rescue_paths(self.run_dir):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as out:
                    out.write(lines)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError:
                continue
            self.rescued_to = path
            self._unsaved.clear()
            return

    def import_rescued(self) -> int:
        """Store the replies an earlier run could not commit (its rescue files), then delete the files."""
        imported = 0
        for path in rescue_paths(self.run_dir):
            if not path.is_file():
                continue
            replies = [Reply.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()
                       if line.strip()]
            for reply in replies:
                self._unsaved[reply.sample_key] = reply
            with self._lock:
                self._flush()
            path.unlink()
            imported += len(replies)
        return imported

    # --- reading --------------------------------------------------------------------------------
    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def run_config(self) -> dict[str, Any]:
        """The stored configuration, plus the datasets' revisions (for reports and run.json)."""
        config = self.stored_config() or {}
        revisions = self.dataset_revisions()
        return {**config, "datasets": revisions} if revisions else config

    def done_keys(self, include_errors: bool = False) -> set[str]:
        """Keys that need no re-send: ok replies, plus recorded failures unless they are to be retried."""
        sql = "SELECT sample_key FROM replies" + ("" if include_errors else " WHERE status='ok'")
        return {r[0] for r in self._query(sql)}

    def stored_digests(self, include_errors: bool = False) -> dict[str, StoredDigests]:
        """{sample_key: the digests of the request its stored reply answered} for the keys `done_keys` gives."""
        sql = ("SELECT sample_key, json_extract(body, '$.request_digest'), json_extract(body, '$.source_digest') "
               "FROM replies")
        rows = self._query(sql + ("" if include_errors else " WHERE status='ok'"))
        return {key: StoredDigests(request, source) for key, request, source in rows}

    def count(self) -> int:
        return self._query("SELECT count(*) FROM replies")[0][0]

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
        row = (f"invocation:{info['started_at']:.6f}", json.dumps(info, default=str))
        self._write("invocation", lambda c: c.execute("INSERT OR REPLACE INTO run VALUES (?, ?)", row))

    def invocations(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT value FROM run WHERE key LIKE 'invocation:%' ORDER BY key")
        return [json.loads(value) for (value,) in rows]
