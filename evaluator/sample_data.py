"""A synthetic MERA Multi snapshot for every registered task, in the hub's on-disk format.

Parquet files laid out as the hub stores them (`<root>/MERA-evaluation/<Name>/data/<split>-00000-of-00001.parquet`,
domain datasets under `<config>/`), rows shaped like the real ones: `instruction` drawn from the
real hub templates, `inputs` with the template's fields and media with the real datasets' properties
(`evaluator/synthetic_media.py`: 4000x3000 phone JPEGs with EXIF and ICC, RGBA PNGs, table screenshots;
WAV at 8-96 kHz, 16/24-bit and float, 1/2/6 channels, 11-25 s; 30-60 s H.264 MP4 and HEVC .mov at 720p
and 1080p) stored as `{"bytes", "path"}` structs as `datasets` does, `outputs` (empty in private test
splits, as on the hub), and `meta` with `id`. ruTiE gets two dialogues of consecutive turns, ids as the
official code expects. Deterministic for a given seed. The media are rendered once per machine into the
media cache; the snapshot itself is about 85 MB with the default 4 rows per split and domain.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from evaluator import synthetic_media as sm
from evaluator.registry import TASKS, TaskSpec, resolve_tasks

# The hub test split's real instruction templates (MERA_MULTIMODAL @0f32158 upload notebooks).
TEMPLATES_DIR = Path(__file__).resolve().parent / "assets" / "prompt_templates"
RUTIE_DIALOG_LEN = 500  # official: question_id = (id - min_id) % 500, dialog_id = (id - min_id) // 500
LETTERS = "ABCDEFGHIJ"


def _templates(spec: TaskSpec) -> list[str]:
    return json.loads((TEMPLATES_DIR / f"{spec.name}.json").read_text(encoding="utf-8"))["templates"]


# --- media ---------------------------------------------------------------------------------------
# Each task's rows cycle through media with its dataset's real properties (evaluator/synthetic_media.py);
# the image and video catalogues are shared, each task starting at another entry so that every entry
# appears in every split; the audio tasks get their own dataset's formats, ruSLUn the other rates/widths.
AUDIO_BY_TASK = {
    "AQUARIA": sm.AQUARIA_AUDIO,
    "ruEnvAQA": sm.ENVAQA_AUDIO,
    "ruTiE-Audio": sm.RUTIE_AUDIO,
    "ruSLUn": sm.OTHER_AUDIO,
}
VARIANTS = 2  # distinct contents per image/audio profile (each is rendered once per machine, cached)


class MediaPlan:
    """Which generated medium a row gets, and the cache it is read from."""

    def __init__(self, cache: sm.MediaCache, video_seconds: float | None) -> None:
        self.cache = cache
        self.video_seconds = video_seconds

    def spec(self, task: TaskSpec, position: int, rng: random.Random) -> sm.MediaSpec:
        offset = list(TASKS).index(task.name)
        if task.modality == "image":
            base = sm.IMAGES[(offset + position) % len(sm.IMAGES)]
            return base.model_copy(update={"variant": rng.randrange(VARIANTS)})
        if task.modality == "audio":
            profiles = AUDIO_BY_TASK.get(task.name, sm.OTHER_AUDIO)
            base = profiles[position % len(profiles)]
            return base.model_copy(update={"variant": rng.randrange(VARIANTS)})
        video = sm.VIDEOS[(offset + position) % len(sm.VIDEOS)]  # one content each: encoding is the slow part
        if self.video_seconds is not None and video.seconds > self.video_seconds:
            video = video.model_copy(update={"seconds": self.video_seconds})
        return video

    def item(self, task: TaskSpec, position: int, rng: random.Random, name: str) -> dict:
        spec = self.spec(task, position, rng)
        return {"bytes": self.cache.bytes(spec), "path": f"{name}.{spec.extension}"}


# --- rows ---------------------------------------------------------------------------------------
TEXT_VALUES = {
    "question": ["Что изображено на картинке?", "Сколько объектов на изображении?", "Какого цвета фигура?"],
    "context": ["", "Рассмотрите рисунок и прочитайте условие."],
    "annotation": ["В ответе напишите только число.", "Запишите ответ в формате “x:y”, x, y- целые числа."],
}
SLUN_ANNOTATION = ("Список доступных намерений с соответствующими слотами в формате намерение: [список слотов].\n"
                   "weather/find: [place_name, date]\nPlayMusic: [artist, genre]")


def _gold(spec: TaskSpec, rng: random.Random, n_options: int) -> str | list[str]:
    if spec.name == "ruCommonVQA":
        return [rng.choice(["Да", "Нет", "2"])]
    if spec.name == "ruSLUn":
        return rng.choice(["{'intent': 'weather/find', 'slots': [{'place_name': 'москве'}]}",
                           "{'intent': 'PlayMusic', 'slots': [{'artist': 'земфира'}, {'genre': 'рок'}]}"])
    if n_options:
        return LETTERS[rng.randrange(n_options)]
    return rng.choice(["2", "нет", "красный", "192"])


def _template_order(templates: list[str], rng: random.Random) -> list[str]:
    """One template of each prompt shape (its fields and media placeholders), rarest shape first, so even a few
    rows carry the odd ones: ruMathVQA's bare `Изображение: <image>`, AQUARIA's two clips, ruTiE's text-only turns."""
    shapes: dict[tuple, list[str]] = {}
    for t in templates:
        shape = (tuple(sorted(set(re.findall(r"\{(\w+)\}", t)))), tuple(re.findall(r"<\w+>", t)))
        shapes.setdefault(shape, []).append(t)
    return [rng.choice(group) for group in sorted(shapes.values(), key=len)]


def _row(spec: TaskSpec, rng: random.Random, plan: MediaPlan, *, split: str, sample_id: int, position: int,
         templates: list[str], meta_extra: dict, template: str | None = None) -> dict:
    template = template or rng.choice(templates)
    fields = sorted({f for t in templates for f in re.findall(r"\{(\w+)\}", t)})
    inputs: dict = {}
    n_options = 0
    for field in fields:
        if field.startswith("option_"):
            inputs[field] = f"вариант {field[-1].upper()}"
            n_options += 1
        elif spec.name == "ruSLUn" and field == "annotation":
            inputs[field] = SLUN_ANNOTATION
        elif spec.name == "ruSLUn" and field == "question":
            inputs[field] = "Внимательно послушай аудио с запросом"
        else:
            inputs[field] = rng.choice(TEXT_VALUES.get(field, ["текст"]))
    for k, field in enumerate(spec.media_fields):
        # A media item is present only where the template has its placeholder (ruTiE text-only turns,
        # AQUARIA's optional second clip), as in the hub data.
        present = f"<{field}>" in template
        name = f"{spec.name}-{sample_id}-{field}"
        inputs[field] = plan.item(spec, position + k, rng, name) if present else None
    hidden = split == "test" and spec.test_gold_hidden
    outputs = _gold(spec, rng, n_options)
    if hidden:
        outputs = [] if isinstance(outputs, list) else ""
    meta = {"id": sample_id, "categories": {"synthetic": "mera-multi sample data"}, **meta_extra}
    return {"instruction": template, "inputs": inputs, "outputs": outputs, "meta": meta}


def _rows(spec: TaskSpec, rng: random.Random, plan: MediaPlan, split: str, per_split: int, id_base: int,
          position_base: int = 0) -> list[dict]:
    templates = _templates(spec)
    first = _template_order(templates, rng)
    rows = []
    if spec.dialogue:
        turns = max(3, per_split)
        for dialog in range(2):
            for q in range(turns):
                pick = first.pop(0) if first else None
                rows.append(_row(spec, rng, plan, split=split, sample_id=id_base + dialog * RUTIE_DIALOG_LEN + q,
                                 position=position_base + dialog * turns + q, templates=templates, meta_extra={}, template=pick))
        return rows
    for i in range(per_split):
        extra = {"group_id": i // 2} if spec.group_field else {}
        pick = first.pop(0) if first else None
        rows.append(_row(spec, rng, plan, split=split, sample_id=id_base + i, position=position_base + i, templates=templates,
                         meta_extra=extra, template=pick))
    return rows


def _features_schema(spec: TaskSpec, table):
    """The table's schema with `datasets`' feature metadata, media fields typed Image/Audio/Video as on the hub
    (so `datasets.load_dataset` on the snapshot sees what it sees on the hub)."""
    import datasets

    features = datasets.Features.from_arrow_schema(table.schema)
    media_feature = {"image": datasets.Image, "audio": datasets.Audio, "video": datasets.Video}[spec.modality]
    inputs = dict(features["inputs"])
    for field in spec.media_fields:
        inputs[field] = media_feature()
    features["inputs"] = inputs
    return features.arrow_schema


# `datasets` (3.x and later) cuts a parquet file into row groups of at most 100 MB uncompressed
# (config.MAX_ROW_GROUP_SIZE); a reader holds about one group at a time, so memory depends on this,
# not on the number of rows.
ROW_GROUP_MB = 100.0


def _write_parquet(spec: TaskSpec, rows: list[dict], path: Path, row_group_mb: float = ROW_GROUP_MB) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    table = table.cast(_features_schema(spec, table))
    per_row = table.nbytes / max(1, table.num_rows)
    pq.write_table(table, path, row_group_size=max(1, int(row_group_mb * 1e6 // max(per_row, 1))))


def _dataset_card(spec: TaskSpec) -> str:
    """README front matter declaring the configs and splits, as the hub's dataset cards do."""
    lines = ["---", "configs:"]
    for domain in spec.domains or ("default",):
        folder = domain if spec.domains else "data"
        lines += [f"- config_name: {domain}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {folder}/{split}-*" for split in ("shots", "test")]
    return "\n".join([*lines, "---", f"Synthetic sample data for {spec.name} (mera-eval sample-data).", ""])


def write_sample_data(out_dir: Path, *, per_split: int = 4, seed: int = 0, tasks: list[str] | None = None,
                      cache: sm.MediaCache | None = None, video_seconds: float | None = None,
                      row_group_mb: float = ROW_GROUP_MB) -> Path:
    """Write the snapshot under `out_dir` (usable as `mera-eval run --data-dir out_dir`).

    Media come from `cache` (default: the per-user media cache), rendered on first use; `video_seconds`
    shortens every longer video to that length (same codecs and sizes); parquet row groups hold at most
    `row_group_mb` as `datasets` writes them (smaller, to see many groups in a small snapshot)."""
    out_dir = Path(out_dir)
    plan = MediaPlan(cache or sm.MediaCache(), video_seconds)
    for spec in resolve_tasks(tasks):
        rng = random.Random(f"{seed}/{spec.name}")
        root = out_dir / spec.hub_id
        for split, id_base in (("shots", 0), ("test", 11)):
            for k, domain in enumerate(spec.domains or (None,)):
                # meta.id is unique across a dataset's domains on the hub (their files merge into one submission)
                rows = _rows(spec, rng, plan, split, per_split, id_base + 1000 * k, position_base=k * per_split)
                folder = root / domain if domain else root / "data"
                _write_parquet(spec, rows, folder / f"{split}-00000-of-00001.parquet", row_group_mb)
        (root / "README.md").write_text(_dataset_card(spec), encoding="utf-8")
    (out_dir / "README.md").write_text(
        "Synthetic MERA Multi sample data written by `mera-eval sample-data` (hub parquet layout).\n", encoding="utf-8"
    )
    return out_dir

