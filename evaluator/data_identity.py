"""Which data a run read: a dataset's revision, so a resumed run can pin it or refuse a change.

* On the hub: the commit the revision resolves to (`HfApi.dataset_info(...).sha`), resolved once when
  the dataset first enters a run and then pinned: a resumed run streams that commit, not whatever
  `main` has become. A full 40-hex `--revision` is used as is, without asking the hub.
* A local snapshot: a content hash of its parquet files — relative path, size and the parquet footer
  (row groups, offsets, row counts, column statistics) of each — cheap (two small reads a file), and
  independent of where the folder lives or of mtimes, so `./data`, `data` and the absolute path, or a
  copy, are the same data. A byte edit that keeps the size and the footer is not seen here; the
  request digest check on resume (which hashes every media item) catches it for stored samples.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from evaluator.data import DataError, DataSource, parquet_files
from evaluator.registry import TaskSpec
from evaluator.schema import Split

FULL_SHA = re.compile(r"[0-9a-f]{40}")
FOOTER_MAX = 64 * 1024 * 1024  # a footer bigger than this is not a parquet footer


def _footer(path: Path) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 12:
            raise DataError(f"{path}: not a parquet file ({size} bytes)")
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > min(size - 8, FOOTER_MAX):
            raise DataError(f"{path}: not a parquet file (no footer)")
        f.seek(size - 8 - length)
        return f.read(length)


def local_revision(spec: TaskSpec, split: Split, data_dir: Path) -> str:
    """`local:<sha256>` over (path relative to the snapshot, size, footer) of the task's files for `split`."""
    root = Path(data_dir).resolve()
    digest = hashlib.sha256()
    for domain in list(spec.domains) or [None]:
        for path in parquet_files(spec, split, root, domain):
            digest.update(str(path.resolve().relative_to(root)).encode() + b"\0")
            digest.update(str(path.stat().st_size).encode() + b"\0")
            digest.update(hashlib.sha256(_footer(path)).digest())
    return "local:" + digest.hexdigest()[:32]


def hub_revision(spec: TaskSpec, source: DataSource) -> str:
    """`hf:<commit>` of the dataset at the requested revision (default `main`), asked of the hub."""
    wanted = source.revision
    if wanted and FULL_SHA.fullmatch(wanted):
        return f"hf:{wanted}"
    from huggingface_hub import HfApi, errors

    try:
        info = HfApi().dataset_info(spec.hub_id, revision=wanted, token=source.token or None, timeout=30)
    except errors.OfflineModeIsEnabled:
        raise DataError(f"{spec.name}: HF_HUB_OFFLINE is set, so the revision of {spec.hub_id} cannot be resolved",
                        fix="pass --revision <full commit sha>, or --data-dir with a local snapshot") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as exc:
        raise DataError(f"{spec.name}: {spec.hub_id} is not readable on the hub ({type(exc).__name__})",
                        fix="set HF_TOKEN (or --hf-token) to a token with access to it") from None
    except errors.RevisionNotFoundError:
        raise DataError(f"{spec.name}: {spec.hub_id} has no revision {wanted!r}", fix="check --revision") from None
    except Exception as exc:  # noqa: BLE001 - network and hub errors all end the same way
        raise DataError(f"{spec.name}: cannot ask the hub for {spec.hub_id} ({type(exc).__name__}: {exc})",
                        fix="check the network and HF_TOKEN, or pass --data-dir with a local snapshot") from None
    return f"hf:{info.sha}"


def resolve_revisions(specs: list[TaskSpec], split: Split, source: DataSource, stored: dict[str, str], *,
                      accept_changes: bool = False) -> dict[str, str]:
    """{task: revision} for `specs`: local snapshots hashed now; hub datasets pinned to the stored commit
    (resolved when new). A revision that differs from the stored one is refused with the task named,
    unless `accept_changes` (then the new one is taken and changed samples are re-sent)."""
    revisions: dict[str, str] = {}
    for spec in specs:
        old = stored.get(spec.name)
        if source.data_dir is not None:
            now = local_revision(spec, split, source.data_dir)
        elif old and old.startswith("hf:") and not source.revision:
            now = old  # pinned: the run goes on reading the commit it started with
        else:
            now = hub_revision(spec, source)
        if old is not None and old != now and not accept_changes:
            raise DataError(
                f"{spec.name}: the data changed since this run stored replies for it (was {old}, now {now})",
                fix="use a new --output folder, or pass --rebuild-changed to re-send the samples whose request changed")
        revisions[spec.name] = now
    return revisions
