"""The default reference entry: Gemma-4-E4B-it on the MERA Multi leaderboard, as data.

Source: the entry's page on the MERA Multi leaderboard (mera.a-ai.ru/en/multi; a copy taken for this
project, entry created 2026-04-20, codebase 0f32158). Board figures are as printed. The per-task rows
lost their names in the copy; how we put the names back:

1. Certain: the row with metrics "EM F1" is ruSLUn; the three rows with domain breakdowns are, by
   their domain names, UniScienceVQA (culture, business, medicine, ...), SchoolScienceVQA (biology,
   chemistry, physics, economics, ru, all) and ruNaturalScienceVQA (biology, chemistry, physics,
   science).
2. Certain up to two equal values: board membership. Of all ways to split the 15 other rows into
   4 audio (ruSLUn among them), 3 video and 11 image datasets, exactly two reproduce the printed
   boards (Audio 0.377, Video 0.559, Images 0.474), and they differ only by swapping the two rows
   that both read 0.361 — so every board's set of values is determined.
3. Inferred (not certain): which dataset within a board a value belongs to. We assume the page lists
   a board's datasets in the order of the MERA_MULTIMODAL README tables (@0f32158). Per-task
   comparisons in reports mark these names as inferred; board and Multi comparisons do not depend
   on this step.
"""

from __future__ import annotations

from pydantic import BaseModel

from evaluator.aggregate import aggregate
from evaluator.errors import UserError


class UnknownReferenceError(UserError, ValueError):
    pass


class ReferenceEntry(BaseModel):
    name: str
    source: str
    boards: dict[str, float]  # image/audio/video as printed
    multi: float
    tasks: dict[str, float]  # registry name -> task score as printed
    task_names_inferred: frozenset[str]  # names placed by step 3 above
    domains: dict[str, dict[str, tuple[float, float]]]  # task -> leaderboard domain label -> (EM, JudgeScore)


# Rows in page order: (value, board from the arithmetic, name).
PAGE_ROWS: list[tuple[float, str, str]] = [
    (0.662, "image", "ruCommonVQA"),
    (0.304, "audio", "ruSLUn"),
    (0.425, "audio", "ruEnvAQA"),
    (0.347, "image", "ruCLEVR"),
    (0.361, "audio", "AQUARIA"),  # this row or the later 0.361 image row: same value either way
    (0.419, "audio", "ruTiE-Audio"),
    (0.67, "image", "WEIRD"),
    (0.098, "image", "LabTabVQA"),
    (0.597, "image", "RealVQA"),
    (0.596, "video", "CommonVideoQA"),
    (0.486, "image", "ruHHH-Image"),
    (0.525, "video", "RealVideoQA"),
    (0.361, "image", "ruMathVQA"),
    (0.546, "image", "ruTiE-Image"),
    (0.557, "video", "ruHHH-Video"),
    (0.126, "image", "UniScienceVQA"),
    (0.59, "image", "SchoolScienceVQA"),
    (0.736, "image", "ruNaturalScienceVQA"),
]

_CERTAIN = {"ruSLUn", "UniScienceVQA", "SchoolScienceVQA", "ruNaturalScienceVQA"}

GEMMA_4_E4B_IT = ReferenceEntry(
    name="Gemma-4-E4B-it (MERA leaderboard, 2026-04-20)",
    source="mera_leaderboard_gemma-4-E4B-it.txt",
    boards={"image": 0.474, "audio": 0.377, "video": 0.559},
    multi=0.467,
    tasks={name: value for value, _, name in PAGE_ROWS},
    task_names_inferred=frozenset(name for _, _, name in PAGE_ROWS if name not in _CERTAIN),
    domains={
        "UniScienceVQA": {
            "culture": (0.036, 0.157), "business": (0.048, 0.294), "medicine": (0.033, 0.224),
            "social_sciences": (0.061, 0.3), "fundamental_sciences": (0.027, 0.171),
            "applied_sciences": (0.06, 0.231),
        },
        "SchoolScienceVQA": {
            "biology": (0.616, 0.666), "chemistry": (0.658, 0.686), "physics": (0.681, 0.744),
            "economics": (0.564, 0.605), "ru": (0.402, 0.422), "all": (0.449, 0.479),
        },
        "ruNaturalScienceVQA": {
            "biology": (0.439, 0.456), "chemistry": (0.627, 0.642), "physics": (0.798, 0.879),
            "science": (0.805, 0.805),
        },
    },
)  # fmt: skip

REFERENCES: dict[str, ReferenceEntry] = {"gemma-4-e4b-it": GEMMA_4_E4B_IT}


def get_reference(name: str | None) -> ReferenceEntry | None:
    """By key ("gemma-4-e4b-it", the default), or None for "none"."""
    if name is None:
        return GEMMA_4_E4B_IT
    if name.lower() in ("none", ""):
        return None
    try:
        return REFERENCES[name.lower()]
    except KeyError:
        raise UnknownReferenceError(f"unknown reference {name!r}",
                                    fix=f"use {', '.join(REFERENCES)} or none") from None


def recomputed(entry: ReferenceEntry):
    """The entry's boards and Multi recomputed from its task scores (our aggregation rule)."""
    return aggregate(entry.tasks)


# Hub config -> the label the leaderboard page prints for that domain (the entry's `domains` keys).
# Matched by name; the page shows 6 of SchoolScienceVQA's 7 configs (earth_science has no row), and
# "ru" / "all" / "science" are read as history_ru / history_all / earth_science.
DOMAIN_LABELS: dict[str, dict[str, str]] = {
    "ruNaturalScienceVQA": {"biology": "biology", "chemistry": "chemistry", "earth_science": "science",
                            "physics": "physics"},
    "SchoolScienceVQA": {"biology": "biology", "chemistry": "chemistry", "economics": "economics",
                         "history_all": "all", "history_ru": "ru", "physics": "physics"},
    "UniScienceVQA": {"Applied_Sciences": "applied_sciences", "Business": "business", "Cultural_Studies": "culture",
                      "Fundamental_Sciences": "fundamental_sciences", "Health_and_Medicine": "medicine",
                      "Social_Sciences": "social_sciences"},
}  # fmt: skip


def reference_domain(entry: ReferenceEntry | None, task: str, domain: str) -> tuple[str | None, tuple[float, float] | None]:
    """(leaderboard label, (EM, JudgeScore) on the entry) for a hub domain; (None, None) where the page has none."""
    label = DOMAIN_LABELS.get(task, {}).get(domain)
    if label is None:
        return None, None
    return label, (entry.domains.get(task, {}).get(label) if entry else None)
