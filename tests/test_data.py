"""Loading: hub rows -> Samples, local snapshots in both hub layouts, streaming memory, the `datasets` path."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluator.data import DataError, DataSource, count_samples, iter_samples, parquet_files, row_to_sample
from evaluator.registry import TASKS
from evaluator.schema import AudioMedia, ImageMedia, VideoMedia
from tests.media_factory import audio_bytes, image_bytes, video_bytes


def write(path: Path, rows: list[dict], **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)
    return path


def clevr_row(i: int, image: bytes | None = None) -> dict:
    return {"instruction": "<image>{question}", "inputs": {"question": f"q{i}", "image": {"bytes": image or
            image_bytes(), "path": f"{i}.png"}}, "outputs": str(i), "meta": {"id": i, "categories": {"a": "b"}}}  # fmt: skip


# --- rows -> samples ------------------------------------------------------------------------------
def test_image_row_keeps_stored_bytes_and_text_inputs_as_they_are():
    jpeg = image_bytes("JPEG")
    row = {"instruction": "{question}<image>{n}", "inputs": {"question": "Сколько?", "n": 3, "image":
           {"bytes": jpeg, "path": "x.jpg"}}, "outputs": "2", "meta": {"id": 5, "categories": {"k": "v"}}}  # fmt: skip
    sample = row_to_sample(TASKS["ruCLEVR"], row, split="test", domain=None, index=7)
    assert sample.media == {"image": ImageMedia(jpeg)}
    assert sample.inputs == {"question": "Сколько?", "n": 3}  # not stringified: `.format` sees what MERA sees
    assert (sample.id, sample.index, sample.outputs, sample.meta) == (5, 7, "2", {"id": 5, "categories": {"k": "v"}})
    assert sample.key == "ruCLEVR/-/test/5"


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_audio_row_decoded_to_array_and_rate(fmt):
    data = audio_bytes(seconds=1.5, rate=22050, fmt=fmt)
    row = {"instruction": "<audio>", "inputs": {"audio": {"bytes": data, "path": None}}, "outputs": "",
           "meta": {"id": 1}}
    sample = row_to_sample(TASKS["ruEnvAQA"], row, split="test", domain=None, index=0)
    audio = sample.media["audio"]
    assert isinstance(audio, AudioMedia) and audio.rate == 22050 and audio.array.shape == (1, 33075)  # (channels, samples)
    assert audio.array.dtype == np.float32 and 0.25 < np.abs(audio.array).max() < 0.35


def test_audio_from_path_and_datasets_decoded_dict(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(audio_bytes(seconds=0.5))
    spec = TASKS["ruEnvAQA"]
    from_path = row_to_sample(spec, {"instruction": "<audio>", "inputs": {"audio": {"bytes": None, "path": str(wav)}},
                                     "meta": {"id": 1}}, split="test", domain=None, index=0)  # fmt: skip
    assert from_path.media["audio"].rate == 16000 and from_path.media["audio"].array.shape == (1, 8000)
    decoded = {"array": [0.0, 0.5], "sampling_rate": 8000, "path": None}
    s = row_to_sample(spec, {"instruction": "<audio>", "inputs": {"audio": decoded}, "meta": {"id": 2}},
                      split="test", domain=None, index=0)  # fmt: skip
    assert s.media["audio"].rate == 8000 and s.media["audio"].array.tolist() == [0.0, 0.5]
    assert from_path.outputs == ""  # missing outputs -> ""


def test_aquaria_missing_second_clip_is_dropped():
    row = {"instruction": "<audio_1>{question}", "inputs": {"question": "?", "audio_1": {"bytes": audio_bytes(),
           "path": "a"}, "audio_2": None}, "outputs": "A", "meta": {"id": 3}}  # fmt: skip
    sample = row_to_sample(TASKS["AQUARIA"], row, split="test", domain=None, index=0)
    assert list(sample.media) == ["audio_1"] and sample.inputs == {"question": "?"}


def test_video_row_keeps_container_bytes_and_list_gold():
    mp4 = video_bytes()
    row = {"instruction": "<video>", "inputs": {"video": {"bytes": mp4, "path": "v.mp4"}}, "outputs": ["A", "B"],
           "meta": {"id": 9}}
    sample = row_to_sample(TASKS["CommonVideoQA"], row, split="shots", domain=None, index=0)
    assert sample.media == {"video": VideoMedia(mp4)} and sample.outputs == ["A", "B"]


def test_bad_rows_name_the_row():
    spec = TASKS["ruCLEVR"]
    with pytest.raises(DataError, match=r"ruCLEVR/-/test row 4: not in MERA's format"):
        row_to_sample(spec, {"instruction": "x", "inputs": {}, "meta": {}}, split="test", domain=None, index=4)
    # media that do not decode are the sample's problem (recorded for it, never sent), not the run's
    bad_audio = {"instruction": "<audio>", "inputs": {"audio": {"bytes": b"garbage", "path": None}}, "meta": {"id": 8}}
    sample = row_to_sample(TASKS["ruEnvAQA"], bad_audio, split="test", domain=None, index=0)
    assert sample.problem.startswith("ruEnvAQA/-/test row 0 (id 8): cannot decode audio")


# --- local snapshots ------------------------------------------------------------------------------
def test_default_and_config_layouts_and_limits(tmp_path):
    write(tmp_path / "MERA-evaluation/ruCLEVR/data/test-00000-of-00002.parquet", [clevr_row(i) for i in range(3)])
    write(tmp_path / "MERA-evaluation/ruCLEVR/data/test-00001-of-00002.parquet", [clevr_row(i) for i in range(3, 5)])
    write(tmp_path / "MERA-evaluation/ruCLEVR/data/shots-00000-of-00001.parquet", [clevr_row(9)])
    for k, domain in enumerate(TASKS["ruNaturalScienceVQA"].domains):
        write(tmp_path / f"MERA-evaluation/ruNaturalScienceVQA/{domain}/test-00000-of-00001.parquet",
              [clevr_row(10 * k + i) for i in range(k + 1)])  # fmt: skip
    source = DataSource(data_dir=tmp_path)

    clevr = TASKS["ruCLEVR"]
    assert [s.id for s in iter_samples(clevr, "test", source)] == [0, 1, 2, 3, 4]  # shards in order
    assert [s.id for s in iter_samples(clevr, "shots", source)] == [9]
    assert count_samples(clevr, "test", source) == 5 and count_samples(clevr, "test", source, limit=2) == 2
    assert [s.index for s in iter_samples(clevr, "test", source, limit=2)] == [0, 1]

    nsqa = TASKS["ruNaturalScienceVQA"]
    samples = list(iter_samples(nsqa, "test", source))
    assert [(s.domain, s.id) for s in samples] == [("biology", 0), ("chemistry", 10), ("chemistry", 11),
        ("earth_science", 20), ("earth_science", 21), ("earth_science", 22), ("physics", 30), ("physics", 31),
        ("physics", 32), ("physics", 33)]  # fmt: skip
    assert count_samples(nsqa, "test", source) == 10
    assert count_samples(nsqa, "test", source, domains=["physics"], limit=3) == 3  # limit is per domain
    assert [s.domain for s in iter_samples(nsqa, "test", source, domains=["chemistry"], limit=1)] == ["chemistry"]
    assert count_samples(nsqa, "test", DataSource()) is None  # hub streaming: unknown without a download


def test_snapshot_folder_may_be_named_by_the_dataset(tmp_path):
    write(tmp_path / "ruCLEVR/data/test-00000-of-00001.parquet", [clevr_row(1)])
    assert [s.id for s in iter_samples(TASKS["ruCLEVR"], "test", DataSource(data_dir=tmp_path))] == [1]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="ruCLEVR: no folder"):
        list(iter_samples(TASKS["ruCLEVR"], "test", DataSource(data_dir=tmp_path)))
    write(tmp_path / "MERA-evaluation/ruCLEVR/data/shots-00000-of-00001.parquet", [clevr_row(1)])
    with pytest.raises(DataError, match="ruCLEVR: no test parquet files"):
        parquet_files(TASKS["ruCLEVR"], "test", tmp_path, None)


def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path):
    # 2000 rows of 16 kB incompressible "images" (32 MB) in 100-row groups, as the hub writes media sets.
    rows = [clevr_row(i, image=os.urandom(16_000)) for i in range(2000)]
    write(tmp_path / "MERA-evaluation/ruCLEVR/data/test-00000-of-00001.parquet", rows, row_group_size=100)
    del rows
    source = DataSource(data_dir=tmp_path)
    base_arrow = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        arrow_peak, n, last = 0, 0, None
        for item in iter_samples(TASKS["ruCLEVR"], "test", source):
            n, last = n + 1, item
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - base_arrow)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 2000 and len(last.media["image"].data) == 16_000
    assert python_peak < 4_000_000, python_peak  # a batch of rows, not the dataset
    assert arrow_peak < 10_000_000, arrow_peak  # a few row groups (1.6 MB each), not the 32 MB file


def test_hub_path_through_datasets_yields_the_same_samples(sample_data_dir, monkeypatch):
    """`datasets.load_dataset(..., streaming=True)` on the hub-format snapshot (a local folder in place of the
    hub id, nothing downloaded) gives the same samples as the local parquet reader."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name in ("ruCLEVR", "UniScienceVQA", "AQUARIA", "CommonVideoQA"):
        spec = TASKS[name]
        local = list(iter_samples(spec, "test", DataSource(data_dir=sample_data_dir)))
        hub_spec = spec.model_copy(update={"hub_id": str(sample_data_dir / spec.hub_id)})
        hub = list(iter_samples(hub_spec, "test", DataSource(cache_dir=sample_data_dir.parent / "hf-cache")))
        assert len(hub) == len(local) > 0
        for a, b in zip(local, hub, strict=True):
            assert (a.domain, a.id, a.instruction, a.inputs, a.outputs) == (b.domain, b.id, b.instruction, b.inputs,
                                                                           b.outputs)  # fmt: skip
            assert a.media.keys() == b.media.keys()
            for key, item in a.media.items():
                if isinstance(item, AudioMedia):
                    assert item.rate == b.media[key].rate and np.array_equal(item.array, b.media[key].array)
                else:
                    assert item == b.media[key]  # stored bytes, not decoded by datasets
