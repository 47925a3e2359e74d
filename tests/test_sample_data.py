"""The synthetic snapshot: hub layout and feature types, real media, real templates, MERA-shaped rows."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from evaluator.cli import main as cli_main
from evaluator.data import DataSource, iter_samples
from evaluator.registry import TASKS
from evaluator.sample_data import TEMPLATES_DIR, write_sample_data

SPLITS = ("shots", "test")


def templates(name: str) -> list[str]:
    return json.loads((TEMPLATES_DIR / f"{name}.json").read_text(encoding="utf-8"))["templates"]


def raw_rows(root: Path, name: str, split: str) -> list[tuple[str | None, dict]]:
    spec = TASKS[name]
    out = []
    for domain in spec.domains or (None,):
        folder = root / spec.hub_id / (domain or "data")
        for row in pq.read_table(folder / f"{split}-00000-of-00001.parquet").to_pylist():
            out.append((domain, row))
    return out


def test_templates_are_the_reference_ones():
    reference = json.loads((Path(__file__).parent / "fixtures" / "mera_prompt_templates.sha256.json").read_text())
    assert sorted(reference) == sorted(TASKS)
    shipped = {name: hashlib.sha256((TEMPLATES_DIR / f"{name}.json").read_bytes()).hexdigest() for name in TASKS}
    assert shipped == reference


def test_hub_layout_feature_types_and_size(sample_data_dir):
    import datasets

    total = sum(p.stat().st_size for p in sample_data_dir.rglob("*") if p.is_file())
    assert total < 120_000_000, total  # 83 MB: real pixel counts and durations, simple content
    for spec in TASKS.values():
        root = sample_data_dir / spec.hub_id
        card = (root / "README.md").read_text(encoding="utf-8")
        for domain in spec.domains or ("default",):
            assert f"- config_name: {domain}\n" in card
        for split in SPLITS:
            for domain in spec.domains or (None,):
                path = root / (domain or "data") / f"{split}-00000-of-00001.parquet"
                features = datasets.Features.from_arrow_schema(pq.read_schema(path))
                assert set(features) == {"instruction", "inputs", "outputs", "meta"}
                expected = {"image": datasets.Image, "audio": datasets.Audio, "video": datasets.Video}[spec.modality]
                for field in spec.media_fields:
                    assert isinstance(features["inputs"][field], expected), (spec.name, field)


def test_rows_are_shaped_like_the_hub_ones(sample_data_dir):
    for spec in TASKS.values():
        allowed = templates(spec.name)
        for split in SPLITS:
            rows = raw_rows(sample_data_dir, spec.name, split)
            ids = [row["meta"]["id"] for _, row in rows]
            assert len(ids) == len(set(ids)) >= 4, spec.name  # unique across domains
            for _, row in rows:
                instruction, inputs = row["instruction"], row["inputs"]
                assert instruction in allowed
                text_inputs = {k: v for k, v in inputs.items() if k not in spec.media_fields}
                assert all(isinstance(v, str) for v in text_inputs.values())
                instruction.format(**inputs)  # every template field is there
                for field in spec.media_fields:
                    item = inputs[field]
                    assert (item is not None) == (f"<{field}>" in instruction), (spec.name, field)
                    if item is None:
                        continue
                    assert set(item) == {"bytes", "path"} and isinstance(item["bytes"], bytes)
                hidden = split == "test" and spec.test_gold_hidden
                assert (row["outputs"] in ("", [])) == hidden, (spec.name, split, row["outputs"])
                if spec.group_field:
                    assert isinstance(row["meta"][spec.group_field], int)


def media_items(root: Path, modality: str, split: str = "test"):
    """(task, media bytes) of every media item in the split: the test split is what `mera-eval run` sends."""
    for spec in TASKS.values():
        if spec.modality == modality:
            for _, row in raw_rows(root, spec.name, split):
                for field in spec.media_fields:
                    if row["inputs"][field] is not None:
                        yield spec.name, row["inputs"][field]["bytes"]


def test_images_have_the_real_ones_properties(sample_data_dir):
    seen = set()
    for _, data in media_items(sample_data_dir, "image"):
        image = Image.open(io.BytesIO(data))
        exif = image.getexif()
        seen.add((image.format, image.mode, image.size, exif.get(0x0112), "icc_profile" in image.info))
    assert ("JPEG", "RGB", (4032, 3024), 6, True) in seen  # a phone photo, rotated by EXIF
    assert ("JPEG", "RGB", (4000, 3000), 1, True) in seen
    assert {("PNG", "RGBA", (480, 320), None, False), ("PNG", "RGBA", (731, 482), None, False)} <= seen
    assert ("PNG", "RGB", (2560, 1600), None, False) in seen  # a large table screenshot
    assert ("PNG", "RGB", (1280, 960), None, False) in seen  # ruTiE-Image


def test_audio_has_the_real_ones_properties(sample_data_dir):
    seen: dict[str, set] = {}
    kinds = set()
    for task, data in media_items(sample_data_dir, "audio"):
        info = soundfile.info(io.BytesIO(data))
        seen.setdefault(task, set()).add((info.samplerate, info.subtype, info.channels))
        kinds.add((info.format, info.samplerate, info.subtype, info.channels, round(info.duration, 1)))
        if task == "ruTiE-Audio":
            assert data.index(b"LIST") < data.index(b"data")  # the extra RIFF chunk its WAVs carry
    assert seen["AQUARIA"] == {(48000, "PCM_24", 1)}
    assert seen["ruEnvAQA"] == seen["ruTiE-Audio"] == {(44100, "PCM_16", 1)}
    assert {rate for _, rate, _, _, _ in kinds} == {8000, 16000, 22050, 44100, 48000, 96000}
    assert {sub for _, _, sub, _, _ in kinds} == {"PCM_16", "PCM_24", "FLOAT"}
    assert {ch for _, _, _, ch, _ in kinds} == {1, 2, 6} and {f for f, *_ in kinds} == {"WAV", "FLAC"}
    assert any(20 <= seconds <= 30 for *_, seconds in kinds)
    two_clips = [row for _, row in raw_rows(sample_data_dir, "AQUARIA", "test") if row["inputs"]["audio_2"]]
    assert two_clips and all(r["inputs"]["audio_1"]["bytes"] != r["inputs"]["audio_2"]["bytes"] for r in two_clips)


def test_videos_have_the_real_ones_properties(sample_data_dir):
    seen = set()
    for _, data in media_items(sample_data_dir, "video"):
        with av.open(io.BytesIO(data)) as container:
            video = container.streams.video[0]
            seconds = round(float(video.duration * video.time_base))
            seen.add((video.codec_context.name, video.codec_tag, video.height, seconds, bool(container.streams.audio)))
    assert seen == {("h264", "avc1", 720, 30, True), ("hevc", "hvc1", 1080, 30, True),
                    ("h264", "avc1", 1080, 60, False), ("hevc", "hvc1", 720, 30, False)}


def test_short_video_snapshot_keeps_codecs_and_sizes(short_video_data_dir):
    seen = set()
    for _, data in media_items(short_video_data_dir, "video"):
        with av.open(io.BytesIO(data)) as container:
            video = container.streams.video[0]
            seen.add((video.codec_context.name, video.height, round(float(video.duration * video.time_base))))
    assert seen == {("h264", 720, 5), ("hevc", 1080, 5), ("h264", 1080, 5), ("hevc", 720, 5)}


def test_the_odd_real_templates_are_exercised(sample_data_dir):
    def instructions(name):
        return [row["instruction"] for split in SPLITS for _, row in raw_rows(sample_data_dir, name, split)]

    assert "Изображение: <image>" in instructions("ruMathVQA")  # no {annotation}: Known quirk 8
    assert any("<audio_2>" in t for t in instructions("AQUARIA"))  # two clips
    assert any("<audio_2>" not in t for t in instructions("AQUARIA"))  # one clip, audio_2 None
    assert any("<image>" not in t for t in instructions("ruTiE-Image"))  # text-only turn: Known quirk 5


@pytest.mark.parametrize("name", ["ruTiE-Image", "ruTiE-Audio"])
def test_rutie_dialogues_as_the_official_code_numbers_them(sample_data_dir, name):
    for split in SPLITS:
        ids = [row["meta"]["id"] for _, row in raw_rows(sample_data_dir, name, split)]
        # multimodal_tasks/rutie_*/utils.py process_docs
        min_id = min(ids)
        turns = sorted(((i - min_id) // 500, (i - min_id) % 500) for i in ids)
        dialogs = {d for d, _ in turns}
        assert dialogs == {0, 1}
        for d in dialogs:
            questions = [q for dd, q in turns if dd == d]
            assert questions == list(range(len(questions))) and len(questions) >= 3


def test_samples_load_for_every_task_and_split(sample_data_dir):
    source = DataSource(data_dir=sample_data_dir)
    for spec in TASKS.values():
        for split in SPLITS:
            samples = list(iter_samples(spec, split, source))
            assert samples and all(s.task == spec.name and s.split == split for s in samples)
            assert {s.domain for s in samples} == (set(spec.domains) or {None})


def test_deterministic_for_a_seed(tmp_path):
    tasks = ["ruCLEVR", "AQUARIA", "CommonVideoQA"]
    a = write_sample_data(tmp_path / "a", seed=3, tasks=tasks)
    b = write_sample_data(tmp_path / "b", seed=3, tasks=tasks)
    c = write_sample_data(tmp_path / "c", seed=4, tasks=tasks)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}

    assert files(a) == files(b)
    assert files(a).keys() == files(c).keys() and files(a) != files(c)


def test_sample_data_command(tmp_path, capsys):
    out = tmp_path / "snap"
    assert cli_main(["sample-data", str(out), "--tasks", "ruSLUn", "--per-split", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*.parquet"))] == [
        "MERA-evaluation/ruSLUn/data/shots-00000-of-00001.parquet",
        "MERA-evaluation/ruSLUn/data/test-00000-of-00001.parquet",
    ]
    rows = pq.read_table(out / "MERA-evaluation/ruSLUn/data/shots-00000-of-00001.parquet").to_pylist()
    assert len(rows) == 2 and all(re.match(r"\{'intent': ", r["outputs"]) for r in rows)


def test_sample_data_command_refuses_a_video_length_of_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["sample-data", str(tmp_path / "snap"), "--video-seconds", "0"])
    assert exit_.value.code == 2 and "--video-seconds: must be more than 0" in capsys.readouterr().err
    assert not (tmp_path / "snap").exists()


def test_row_groups_are_cut_by_size_as_datasets_writes_them(tmp_path, media_cache):
    """A reader holds about one row group at a time: groups are at most `row_group_mb` (the hub: 100 MB), so
    a larger split has more groups, not bigger ones."""
    out = write_sample_data(tmp_path / "d", per_split=6, tasks=["ruEnvAQA", "CommonVideoQA"], cache=media_cache,
                            row_group_mb=1)
    for name in ("ruEnvAQA", "CommonVideoQA"):
        meta = pq.ParquetFile(out / TASKS[name].hub_id / "data" / "test-00000-of-00001.parquet").metadata
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        assert meta.num_rows == 6 and len(groups) > 1
        assert all(g.total_byte_size <= 1.5e6 or g.num_rows == 1 for g in groups), name  # a big row: its own group
