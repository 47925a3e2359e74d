"""Dataset rows -> `Sample`s, streamed, from the Hugging Face Hub or a local hub snapshot.

A local snapshot is a folder holding the parquet files as the hub stores them:
`<root>/<hub_id or Name>/data/<split>-*.parquet` for single-config datasets and
`<root>/<hub_id or Name>/<config>/<split>-*.parquet` for datasets with domains. Both the local
and the hub path yield the same row dicts and go through `row_to_sample`.

Media are read without torchcodec: images keep their stored bytes, audio is decoded to float32
(channels, samples) at its stored rate by FFmpeg through PyAV, as `datasets.Audio()` does
(`evaluator/audio.py`), video keeps its container bytes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from evaluator import audio
from evaluator.errors import UserError
from evaluator.registry import TaskSpec
from evaluator.schema import AudioMedia, ImageMedia, Media, Sample, Split, VideoMedia, sample_key

BATCH_ROWS = 16  # rows per parquet read: media rows are large, keep memory flat
STREAM_BUFFER = 1 << 20  # read a column chunk's pages through a 1 MB buffer, not the whole chunk at once
# Dialogues read their turns side by side and cross row-group boundaries together: decoding one row group at a
# time keeps their transient peaks (twice a group) from adding up.
_ROW_GROUP_DECODE = threading.Lock()



class DataError(UserError):
    """The dataset cannot be read; the message says which file or row and why."""


class DataSource(BaseModel):
    data_dir: Path | None = None  # local hub snapshot root; None = the Hugging Face Hub
    token: str | None = None  # for gated datasets on the hub
    cache_dir: Path | None = None
    revision: str | None = None
    # hub id -> the commit a run is pinned to (evaluator.data_identity); streamed instead of `revision`
    commits: dict[str, str] = {}

    def describe(self) -> str:
        """Where the data comes from, as part of a run's identity; which data exactly is each dataset's
        revision (`evaluator.data_identity`), so `./data`, `data` and the absolute path are one source."""
        return "local snapshot" if self.data_dir else "hf-hub"

    def location(self) -> str:
        return str(self.data_dir.resolve()) if self.data_dir else "hf-hub" + (f"@{self.revision}" if self.revision else "")


# --- media ------------------------------------------------------------------------------------
def _media_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            data = Path(value["path"]).read_bytes()
        return data
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise TypeError(f"unsupported media value of type {type(value).__name__}")


def decode_audio(value: Any) -> AudioMedia | None:
    if value is None:
        return None
    if isinstance(value, dict) and value.get("array") is not None:  # datasets' decoded Audio()
        return AudioMedia(np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"]))
    data = _media_bytes(value)
    if data is None:
        return None
    return audio.decode(data)


def decode_media(kind: str, value: Any) -> Media | None:
    if kind == "audio":
        return decode_audio(value)
    data = _media_bytes(value)
    if data is None:
        return None
    return ImageMedia(data) if kind == "image" else VideoMedia(data)


def media_kind(spec: TaskSpec, field: str) -> str:
    return spec.modality if field in spec.media_fields else "text"


# --- rows -> samples --------------------------------------------------------------------------
def row_to_sample(spec: TaskSpec, row: dict[str, Any], *, split: Split, domain: str | None, index: int) -> Sample:
    key_hint = f"{spec.name}/{domain or '-'}/{split} row {index}"
    try:
        inputs = dict(row["inputs"])
        meta = dict(row.get("meta") or {})
        sample_id = int(meta["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{key_hint}: not in MERA's format (instruction/inputs/outputs/meta.id): {exc}") from None
    media: dict[str, Media] = {}
    problems = []
    for field in spec.media_fields:
        value = inputs.pop(field, None)
        try:
            item = decode_media(spec.modality, value)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this sample's, named, not the run's
            problems.append(f"{key_hint} (id {sample_id}): cannot decode {field} ({type(exc).__name__}: {exc})")
            continue
        if item is not None:
            media[field] = item
    outputs = row.get("outputs")
    if outputs is None:
        outputs = ""
    elif not isinstance(outputs, str):
        outputs = [str(o) for o in outputs]
    return Sample(
        task=spec.name, domain=domain, split=split, index=index, id=sample_id,
        instruction=row["instruction"], inputs=inputs, media=media, outputs=outputs, meta=meta,
        problem="; ".join(problems) or None,
    )  # fmt: skip


# --- local snapshots --------------------------------------------------------------------------
def dataset_root(spec: TaskSpec, data_dir: Path) -> Path:
    for candidate in (data_dir / spec.hub_id, data_dir / spec.name, data_dir / spec.submission_name):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{spec.name}: no folder {data_dir / spec.hub_id} (or {data_dir / spec.name}) in the local snapshot")


def parquet_files(spec: TaskSpec, split: Split, data_dir: Path, domain: str | None) -> list[Path]:
    root = dataset_root(spec, data_dir)
    folder = root / domain if domain else root / "data"
    if not folder.is_dir() and not domain:
        folder = root
    files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}.parquet"))
    if not files:
        raise DataError(f"{spec.name}: no {split} parquet files in {folder}")
    return files


def _iter_local_rows(files: list[Path]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in files:
        # pre_buffer (on by default) reads every row group of the file up front: memory would grow with
        # the file; off, memory stays around one row group (the hub writes 100-row groups for media sets).
        with pq.ParquetFile(path, pre_buffer=False) as pf:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()


def _hub_dataset(spec: TaskSpec, split: Split, source: DataSource, domain: str | None, **kwargs):
    import datasets

    ds = datasets.load_dataset(
        spec.hub_id, domain, split=split, streaming=True, token=source.token,
        cache_dir=str(source.cache_dir) if source.cache_dir else None,
        revision=source.commits.get(spec.hub_id, source.revision), **kwargs,
    )  # fmt: skip
    # Keep the stored bytes: no decoding through torchcodec or PIL. The media features are nested in
    # `inputs`, which `cast_column` cannot address, so switch decoding off for the whole dataset.
    return ds.decode(False)


def _iter_hub_rows(spec: TaskSpec, split: Split, source: DataSource, domain: str | None) -> Iterator[dict[str, Any]]:
    yield from _hub_dataset(spec, split, source, domain)


def iter_samples(
    spec: TaskSpec, split: Split, source: DataSource, *, domains: list[str] | None = None, limit: int | None = None
) -> Iterator[Sample]:
    """Samples of one task and split, domain by domain, streamed. `limit` applies per domain."""
    for domain in (domains or list(spec.domains)) or [None]:
        if source.data_dir is not None:
            rows = _iter_local_rows(parquet_files(spec, split, source.data_dir, domain))
        else:
            rows = _iter_hub_rows(spec, split, source, domain)
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                break
            yield row_to_sample(spec, row, split=split, domain=domain, index=index)


def count_samples(spec: TaskSpec, split: Split, source: DataSource, *, domains: list[str] | None = None,
                  limit: int | None = None) -> int | None:
    """Row count from parquet metadata (no data read); None when unknown (hub streaming)."""
    if source.data_dir is None:
        return None
    import pyarrow.parquet as pq

    total = 0
    for domain in (domains or list(spec.domains)) or [None]:
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet_files(spec, split, source.data_dir, domain))
        total += min(n, limit) if limit is not None else n
    return total


# --- random access by row position (ruTiE: an index pass, then turns in dialogue order) -------------
@dataclass(frozen=True)
class RowRef:
    """One row of a split without its media: where it is and which sample it is."""

    position: int  # row position within (task, domain, split): `Sample.index`
    task: str
    domain: str | None
    split: Split
    id: int  # meta.id

    @property
    def key(self) -> str:
        return sample_key(self.task, self.domain, self.split, self.id)


def index_rows(spec: TaskSpec, split: Split, source: DataSource, *, domain: str | None = None,
               limit: int | None = None) -> list[RowRef]:
    """Every row's position and id, reading only the `meta` column (parquet column projection: no media)."""
    if source.data_dir is not None:
        metas = _iter_local_column(parquet_files(spec, split, source.data_dir, domain), "meta")
    else:
        metas = (row["meta"] for row in _hub_dataset(spec, split, source, domain, columns=["meta"]))
    refs = []
    for position, meta in enumerate(metas):
        if limit is not None and position >= limit:
            break
        try:
            sample_id = int(meta["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{spec.name}/{domain or '-'}/{split} row {position}: no meta.id: {exc}") from None
        refs.append(RowRef(position, spec.name, domain, split, sample_id))
    return refs


def _iter_local_column(files: list[Path], column: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for path in files:
        with pq.ParquetFile(path, pre_buffer=False) as pf:
            for batch in pf.iter_batches(batch_size=1024, columns=[column]):
                yield from batch.column(0).to_pylist()


def _iter_local_rows_from(files: list[Path], start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, row) from row `start` on, one row at a time, skipping whole files and row groups before it
    unread. The parquet reader decodes a row group at a time: this holds about twice one row group (a 100-row
    group of 20 s clips is ~170 MB), never the file (`read_row_group` would peak at three times)."""
    import pyarrow.parquet as pq

    position = 0
    for path in files:
        with pq.ParquetFile(path, pre_buffer=False, buffer_size=STREAM_BUFFER) as pf:
            for group in range(pf.num_row_groups):
                rows = pf.metadata.row_group(group).num_rows
                if position + rows <= start:
                    position += rows
                    continue
                batches = pf.iter_batches(batch_size=1, row_groups=[group])
                with _ROW_GROUP_DECODE:  # the first batch decodes the whole group: one group at a time
                    first = next(batches, None)
                for batch in itertools.chain([first] if first is not None else [], batches):
                    if position >= start:
                        yield position, batch.to_pylist()[0]
                    position += 1


def _iter_hub_rows_from(spec: TaskSpec, split: Split, source: DataSource, domain: str | None,
                        start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    ds = _hub_dataset(spec, split, source, domain)
    yield from enumerate(ds.skip(start) if start else ds, start)


def iter_rows_at(spec: TaskSpec, split: Split, source: DataSource, positions: list[int], *,
                 domain: str | None = None) -> Iterator[Sample]:
    """The samples at `positions`, in that order, one row read and decoded at a time. Ascending runs of
    positions are one sequential scan; a step back starts a new scan at that row."""
    files = parquet_files(spec, split, source.data_dir, domain) if source.data_dir is not None else None
    scan: Iterator[tuple[int, dict[str, Any]]] | None = None
    at = -1  # position of the last row the scan yielded
    for wanted in positions:
        if scan is None or wanted <= at:
            scan = (_iter_local_rows_from(files, wanted) if files is not None
                    else _iter_hub_rows_from(spec, split, source, domain, wanted))
        for at, row in scan:
            if at == wanted:
                yield row_to_sample(spec, row, split=split, domain=domain, index=at)
                break
        else:
            raise DataError(f"{spec.name}/{domain or '-'}/{split}: row {wanted} is past the end of the split")


class SplitRows:
    """A task's split as a row source for `evaluator.dialogue`: ids first, then rows by position on demand."""

    def __init__(self, spec: TaskSpec, split: Split, source: DataSource, *, limit: int | None = None) -> None:
        self.spec, self.split, self.source, self.limit = spec, split, source, limit

    def index(self) -> list[RowRef]:
        return index_rows(self.spec, self.split, self.source, limit=self.limit)

    def rows(self, positions: list[int]) -> Iterator[Sample]:
        return iter_rows_at(self.spec, self.split, self.source, positions)


# --- checks before a run ------------------------------------------------------------------------
def check_local_snapshot(source: DataSource, specs: list[TaskSpec], split: Split) -> None:
    """Before anything is sent: the local snapshot exists and holds every chosen task's split.

    Reads only folder listings (no parquet). One `DataError` names every problem found; the hub
    (no `data_dir`) is not checked here.
    """
    root = source.data_dir
    if root is None:
        return
    make = f"`mera-eval sample-data {root}` writes a small one"
    if not root.exists():
        raise DataError(f"--data-dir {root}: no such folder",
                        fix=f"pass the folder that holds MERA-evaluation/<Dataset>/ (a hub snapshot), or {make}")
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is a file, not a folder",
                        fix="pass the folder that holds MERA-evaluation/<Dataset>/ (a hub snapshot)")
    absent, no_split = [], []
    for spec in specs:
        try:
            dataset_root(spec, root)
        except DataError:
            absent.append(spec.name)
            continue
        for domain in spec.domains or (None,):
            try:
                parquet_files(spec, split, root, domain)
            except DataError:
                no_split.append(f"{spec.name}/{domain}" if domain else spec.name)
    if absent and len(absent) == len(specs):
        example = root / specs[0].hub_id / (specs[0].domains[0] if specs[0].domains else "data") / f"{split}-*.parquet"
        raise DataError(f"--data-dir {root} holds none of the chosen datasets in the hub's layout "
                        f"(expected e.g. {example})",
                        fix=f"pass the folder above MERA-evaluation/ (`huggingface-cli download --local-dir` layout), "
                        f"or {make}")
    if absent:
        raise DataError(f"--data-dir {root} lacks {_some(absent)}",
                        fix="download them into the snapshot, or choose the datasets it has with --tasks")
    if no_split:
        other = "shots" if split == "test" else "test"
        raise DataError(f"--data-dir {root} has no {split} split ({split}-*.parquet) for {_some(no_split)}",
                        fix=f"download that split, or run another one (--split {other})")


def _some(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
