"""The 18 MERA Multi datasets, declared as data.

Sources (MERA-Evaluation/MERA_MULTIMODAL @0f32158): `multimodal_tasks/<task>/*.yaml` for hub ids,
domains (`dataset_name`), EM options and lm-eval task names; `scripts/log_to_submission.py` for
submission file names; the README table for public/private and metrics. Nothing else in the
evaluator knows a dataset by name, except the small hooks a spec points to (`prompt_hook`,
`output_filter`, `dialogue`).
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from evaluator.errors import UserError
from evaluator.schema import Modality

BOARDS: tuple[Modality, ...] = ("image", "audio", "video")
# How a board is shown everywhere a person reads it (the leaderboard's English labels). On the command
# line the label and the modality both work, in any case, singular or plural (image, Images, videos).
BOARD_LABELS: dict[str, str] = {"image": "Images", "audio": "Audio", "video": "Video"}
_BOARD_NAMES = {name: board for board, label in BOARD_LABELS.items()
                for name in (board, board + "s", label.lower())}


def board_of(name: str) -> Modality | None:
    """The board a command-line word names (image, Images, video, videos ...), or None."""
    return _BOARD_NAMES.get(name.strip().lower())


# --- generation settings, per task, each value with its source (docs/fidelity.md) ---------------------------
GENERATION_SOURCES = {
    "entry": "the leaderboard entry's settings for this task (until, do_sample=false, temperature, max_gen_toks)",
    "entry-seed": "the leaderboard entry's seed (1234): lm-eval --seed, sent as the payload's seed",
    "assumed": "not listed in the leaderboard entry: taken equal to the 13 listed tasks' (one --gen_kwargs)",
}
# What the fork would send for a task with no generation_kwargs and no --gen_kwargs (TaskConfig's default
# until=[fewshot_delimiter "\n\n"], temperature 0; TemplateAPI max_gen_toks=256; _create_payload seed=1234).
FORK_DEFAULTS = {"temperature": 0.0, "max_tokens": 256, "stop": ("\n\n",), "seed": 1234}


class GenerationSettings(BaseModel):
    """How a task's requests are generated, as the leaderboard run did it; `sources` names where each value
    comes from (a key of GENERATION_SOURCES). Command-line flags override values explicitly."""

    model_config = ConfigDict(frozen=True)

    temperature: float = 0.0
    max_tokens: int = 10000
    stop: tuple[str, ...] = ("<eos>",)
    seed: int | None = 1234
    sources: dict[str, str]

    FIELDS: ClassVar[tuple[str, ...]] = ("temperature", "max_tokens", "stop", "seed")

    def values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


def _generation(listed: bool) -> GenerationSettings:
    src = "entry" if listed else "assumed"
    return GenerationSettings(sources={"temperature": src, "max_tokens": src, "stop": src,
                                       "seed": "entry-seed"})  # fmt: skip


# The leaderboard entry (Gemma-4-E4B-it, 2026-04-20) lists until=["<eos>"];do_sample=false;temperature=0;
# max_gen_toks=10000 for every image and video task except ruTiE-Image, and for no audio task.
_NOT_LISTED = {"ruTiE-Image", "ruEnvAQA", "ruSLUn", "AQUARIA", "ruTiE-Audio"}


class TaskSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # the dataset's name on the hub and the leaderboard, e.g. "ruCLEVR"
    hub_id: str
    modality: Modality  # also the leaderboard board it counts towards
    domains: tuple[str, ...] = ()  # hub configs (lm-eval `dataset_name`), exactly as cased on the hub
    lm_eval_tasks: tuple[str, ...]  # one per domain, or one
    public: bool  # the README's public/private column
    test_gold_hidden: bool  # the hub's test split ships outputs = "" (private sets, and ruSLUn)
    metrics: tuple[str, ...]
    media_fields: tuple[str, ...]
    submission_name: str  # <submission_name>.json in the leaderboard zip
    em_ignore_case: bool = True
    em_ignore_punctuation: bool = True
    group_field: str | None = None  # meta key whose groups score together (ruHHH)
    dialogue: bool = False  # ruTiE: sequential dialogues with the model's own earlier answers
    output_filter: str | None = None  # named output filter applied before scoring and submission
    prompt_hook: str | None = None  # named prompt rewrite applied after instruction.format
    generation: GenerationSettings = Field(default_factory=lambda: _generation(True))

    def lm_eval_task(self, domain: str | None) -> str:
        if not self.domains:
            return self.lm_eval_tasks[0]
        return self.lm_eval_tasks[self.domains.index(domain)]


def _image(name: str, lm: str, *, private: bool, fields=("image",), domains=(), **kw) -> TaskSpec:
    lm_tasks = tuple(f"{lm}_{d.lower()}" for d in domains) if domains else (lm,)
    return TaskSpec(
        name=name, hub_id=f"MERA-evaluation/{name}", modality="image", domains=tuple(domains),
        lm_eval_tasks=lm_tasks, public=not private, test_gold_hidden=private,
        metrics=kw.pop("metrics", ("exact_match", "judge_score")), media_fields=tuple(fields),
        submission_name=kw.pop("submission_name", name), **kw,
    )  # fmt: skip


def _av(name: str, lm: str, modality: Modality, *, private: bool, fields: tuple[str, ...], **kw) -> TaskSpec:
    return TaskSpec(
        name=name, hub_id=f"MERA-evaluation/{name}", modality=modality, lm_eval_tasks=(lm,),
        public=not private, test_gold_hidden=kw.pop("test_gold_hidden", private),
        metrics=kw.pop("metrics", ("exact_match", "judge_score")), media_fields=fields,
        submission_name=kw.pop("submission_name", name), **kw,
    )  # fmt: skip


# Video tasks' YAMLs set ignore_punctuation: false and no ignore_case (case-sensitive EM);
# ruTiE's generative YAML (custom_generate_task.yaml) likewise.
_VIDEO_EM = {"em_ignore_case": False, "em_ignore_punctuation": False}

_SPECS = [
    _image("ruCommonVQA", "rucommonvqa", private=False),
    _image("ruCLEVR", "ruclevr", private=False),
    _image("WEIRD", "weird", private=False),
    _image("ruNaturalScienceVQA", "runaturalsciencevqa", private=False,
           domains=("biology", "chemistry", "earth_science", "physics")),
    _image("LabTabVQA", "labtabvqa", private=True),
    _image("RealVQA", "realvqa", private=True),
    _image("ruHHH-Image", "ruhhh_image", private=True, submission_name="ruHHH_Image", group_field="group_id",
           metrics=("group_exact_match", "group_judge_score")),
    _image("ruMathVQA", "rumathvqa", private=True),
    _image("ruTiE-Image", "rutie_vision_gen", private=True, submission_name="ruTiE_Image", dialogue=True,
           **_VIDEO_EM),
    _image("SchoolScienceVQA", "schoolsciencevqa", private=True,
           domains=("biology", "chemistry", "earth_science", "economics", "history_all", "history_ru", "physics")),
    _image("UniScienceVQA", "unisciencevqa", private=True,
           domains=("Applied_Sciences", "Business", "Cultural_Studies", "Fundamental_Sciences",
                    "Health_and_Medicine", "Social_Sciences")),
    _av("ruEnvAQA", "ruenvaqa", "audio", private=False, fields=("audio",)),
    # README: public; its upload notebook hides the test answers all the same.
    _av("ruSLUn", "ruslun", "audio", private=False, test_gold_hidden=True, fields=("audio",),
        metrics=("intent_em", "slot_f1"), output_filter="ruslun"),
    _av("AQUARIA", "aquaria", "audio", private=True, fields=("audio_1", "audio_2"), prompt_hook="aquaria"),
    _av("ruTiE-Audio", "rutie_audio_gen", "audio", private=True, fields=("audio",), submission_name="ruTiE_Audio",
        dialogue=True, **_VIDEO_EM),
    _av("CommonVideoQA", "commonvideoqa", "video", private=False, fields=("video",), **_VIDEO_EM),
    _av("RealVideoQA", "realvideoqa", "video", private=True, fields=("video",), **_VIDEO_EM),
    _av("ruHHH-Video", "ruhhh_video", "video", private=True, fields=("video",), submission_name="ruHHH_Video",
        group_field="group_id", metrics=("group_exact_match", "group_judge_score"), **_VIDEO_EM),
]  # fmt: skip

_SPECS = [s.model_copy(update={"generation": _generation(s.name not in _NOT_LISTED)}) for s in _SPECS]
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}


def _aliases() -> dict[str, TaskSpec]:
    table: dict[str, TaskSpec] = {}
    for spec in _SPECS:
        names = {spec.name, spec.submission_name, spec.hub_id, *spec.lm_eval_tasks}
        if spec.domains:
            names.add(spec.lm_eval_tasks[0].rsplit("_", 1)[0])  # e.g. "unisciencevqa"
        if spec.dialogue:
            names.add(spec.lm_eval_tasks[0].removesuffix("_gen"))  # rutie_vision / rutie_audio
        for alias in names:
            table[alias.lower()] = spec
    return table


_ALIASES = _aliases()


class UnknownTaskError(UserError, ValueError):
    pass


def suggest(name: str) -> list[str]:
    """Registry names (or board / all) close to a mistyped selector, best first."""
    words = {**{alias: spec.name for alias, spec in _ALIASES.items()}, **{w: w for w in (*BOARDS, "all")}}
    close = difflib.get_close_matches(name.strip().lower(), list(words), n=6, cutoff=0.6)
    return list(dict.fromkeys(words[w] for w in close))[:3]


def get_task(name: str) -> TaskSpec:
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        close = suggest(name)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UnknownTaskError(f"unknown task {name!r}",
                               fix=f"{hint}`mera-eval tasks` lists the 18 names; a board (image, audio, video) "
                               "or all also works") from None


def resolve_tasks(selectors: list[str] | None) -> list[TaskSpec]:
    """Task selectors -> specs in board order: names, lm-eval names, a board, or all."""
    if not selectors:
        return list(_SPECS)
    chosen: set[str] = set()
    for raw in selectors:
        for sel in raw.split(","):
            sel = sel.strip()
            if not sel:
                continue
            if sel.lower() == "all":
                chosen.update(TASKS)
            elif (board := board_of(sel)) is not None:
                chosen.update(s.name for s in _SPECS if s.modality == board)
            else:
                chosen.add(get_task(sel).name)
    return [s for s in _SPECS if s.name in chosen]
