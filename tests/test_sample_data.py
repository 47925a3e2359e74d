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
    assert total < 2_000_000, total
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
    seen_formats = {"image": set(), "audio": set()}
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
                    assert set(item) == {"bytes", "path"}
                    data = item["bytes"]
                    if spec.modality == "image":
                        image = Image.open(io.BytesIO(data))
                        seen_formats["image"].add(image.format)
                    elif spec.modality == "audio":
                        info = soundfile.info(io.BytesIO(data))
                        assert info.samplerate == 16000 and 1.0 <= info.duration <= 3.0
                        seen_formats["audio"].add(info.format)
                    else:
                        with av.open(io.BytesIO(data)) as container:
                            frames = list(container.decode(video=0))
                        assert len(frames) == 8 and (frames[0].width, frames[0].height) == (64, 64)
                hidden = split == "test" and spec.test_gold_hidden
                assert (row["outputs"] in ("", [])) == hidden, (spec.name, split, row["outputs"])
                if spec.group_field:
                    assert isinstance(row["meta"][spec.group_field], int)
    assert seen_formats == {"image": {"PNG", "JPEG"}, "audio": {"WAV", "FLAC"}}


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
