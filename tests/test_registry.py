"""The registry against the official task definitions (MERA_MULTIMODAL @0f32158).

The expected values below are an independent transcription of `multimodal_tasks/*/*.yaml`
(`task`, `dataset_path`, `dataset_name`, exact_match `ignore_case`/`ignore_punctuation`),
`scripts/log_to_submission.py` (task classes = submission file names) and the README table.
"""

from __future__ import annotations

import pytest

from evaluator.cli import main as cli_main
from evaluator.registry import BOARD_LABELS, BOARDS, TASKS, UnknownTaskError, get_task, resolve_tasks

# name: (board, hub id, domains, lm-eval tasks, README public, EM ignore_case, EM ignore_punctuation, submission)
OFFICIAL = {
    "ruCommonVQA": ("image", "MERA-evaluation/ruCommonVQA", (), ("rucommonvqa",), True, True, True, "ruCommonVQA"),
    "ruCLEVR": ("image", "MERA-evaluation/ruCLEVR", (), ("ruclevr",), True, True, True, "ruCLEVR"),
    "WEIRD": ("image", "MERA-evaluation/WEIRD", (), ("weird",), True, True, True, "WEIRD"),
    "ruNaturalScienceVQA": (
        "image", "MERA-evaluation/ruNaturalScienceVQA", ("biology", "chemistry", "earth_science", "physics"),
        ("runaturalsciencevqa_biology", "runaturalsciencevqa_chemistry", "runaturalsciencevqa_earth_science",
         "runaturalsciencevqa_physics"), True, True, True, "ruNaturalScienceVQA"),
    "LabTabVQA": ("image", "MERA-evaluation/LabTabVQA", (), ("labtabvqa",), False, True, True, "LabTabVQA"),
    "RealVQA": ("image", "MERA-evaluation/RealVQA", (), ("realvqa",), False, True, True, "RealVQA"),
    "ruHHH-Image": ("image", "MERA-evaluation/ruHHH-Image", (), ("ruhhh_image",), False, True, True, "ruHHH_Image"),
    "ruMathVQA": ("image", "MERA-evaluation/ruMathVQA", (), ("rumathvqa",), False, True, True, "ruMathVQA"),
    # custom_generate_task.yaml: ignore_punctuation false, ignore_case unset (false)
    "ruTiE-Image": ("image", "MERA-evaluation/ruTiE-Image", (), ("rutie_vision_gen",), False, False, False, "ruTiE_Image"),
    "SchoolScienceVQA": (
        "image", "MERA-evaluation/SchoolScienceVQA",
        ("biology", "chemistry", "earth_science", "economics", "history_all", "history_ru", "physics"),
        tuple(f"schoolsciencevqa_{d}" for d in
              ("biology", "chemistry", "earth_science", "economics", "history_all", "history_ru", "physics")),
        False, True, True, "SchoolScienceVQA"),
    "UniScienceVQA": (
        "image", "MERA-evaluation/UniScienceVQA",
        ("Applied_Sciences", "Business", "Cultural_Studies", "Fundamental_Sciences", "Health_and_Medicine",
         "Social_Sciences"),
        ("unisciencevqa_applied_sciences", "unisciencevqa_business", "unisciencevqa_cultural_studies",
         "unisciencevqa_fundamental_sciences", "unisciencevqa_health_and_medicine", "unisciencevqa_social_sciences"),
        False, True, True, "UniScienceVQA"),
    "ruEnvAQA": ("audio", "MERA-evaluation/ruEnvAQA", (), ("ruenvaqa",), True, True, True, "ruEnvAQA"),
    "ruSLUn": ("audio", "MERA-evaluation/ruSLUn", (), ("ruslun",), True, True, True, "ruSLUn"),
    "AQUARIA": ("audio", "MERA-evaluation/AQUARIA", (), ("aquaria",), False, True, True, "AQUARIA"),
    "ruTiE-Audio": ("audio", "MERA-evaluation/ruTiE-Audio", (), ("rutie_audio_gen",), False, False, False, "ruTiE_Audio"),
    # video YAMLs: ignore_punctuation false, no ignore_case
    "CommonVideoQA": ("video", "MERA-evaluation/CommonVideoQA", (), ("commonvideoqa",), True, False, False,
                      "CommonVideoQA"),
    "RealVideoQA": ("video", "MERA-evaluation/RealVideoQA", (), ("realvideoqa",), False, False, False, "RealVideoQA"),
    "ruHHH-Video": ("video", "MERA-evaluation/ruHHH-Video", (), ("ruhhh_video",), False, False, False, "ruHHH_Video"),
}  # fmt: skip


def test_eighteen_datasets_in_board_order():
    assert list(TASKS) == list(OFFICIAL)
    assert [s.modality for s in TASKS.values()] == sorted(
        (s.modality for s in TASKS.values()), key=BOARDS.index
    )  # image board, then audio, then video


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_spec_matches_the_official_task_definition(name):
    board, hub_id, domains, lm_tasks, public, ignore_case, ignore_punct, submission = OFFICIAL[name]
    spec = TASKS[name]
    assert (spec.modality, spec.hub_id, spec.domains, spec.lm_eval_tasks) == (board, hub_id, domains, lm_tasks)
    assert spec.public is public
    assert (spec.em_ignore_case, spec.em_ignore_punctuation) == (ignore_case, ignore_punct)
    assert spec.submission_name == submission
    assert spec.media_fields and all(f.startswith(board) for f in spec.media_fields)


def test_gold_hidden_in_private_sets_and_in_ruslun():
    for spec in TASKS.values():
        if not spec.public:
            assert spec.test_gold_hidden, spec.name
    # ruSLUn: "Public" in the README table, but the hub's test outputs are "" (Known quirk 11)
    slun = TASKS["ruSLUn"]
    assert slun.public and slun.test_gold_hidden
    assert [s.name for s in TASKS.values() if s.public and not s.test_gold_hidden] == [
        "ruCommonVQA", "ruCLEVR", "WEIRD", "ruNaturalScienceVQA", "ruEnvAQA", "CommonVideoQA"
    ]  # fmt: skip


def test_task_hooks_are_named_in_the_registry():
    assert {s.name for s in TASKS.values() if s.dialogue} == {"ruTiE-Image", "ruTiE-Audio"}
    assert {s.name: s.group_field for s in TASKS.values() if s.group_field} == {
        "ruHHH-Image": "group_id", "ruHHH-Video": "group_id"
    }  # fmt: skip
    assert {s.name: s.output_filter for s in TASKS.values() if s.output_filter} == {"ruSLUn": "ruslun"}
    assert {s.name: s.prompt_hook for s in TASKS.values() if s.prompt_hook} == {"AQUARIA": "aquaria"}
    assert TASKS["AQUARIA"].media_fields == ("audio_1", "audio_2")  # placeholder order
    assert TASKS["ruSLUn"].metrics == ("intent_em", "slot_f1")


def test_lm_eval_task_per_domain():
    uni = TASKS["UniScienceVQA"]
    assert uni.lm_eval_task("Health_and_Medicine") == "unisciencevqa_health_and_medicine"
    assert TASKS["ruCLEVR"].lm_eval_task(None) == "ruclevr"
    with pytest.raises(ValueError):
        uni.lm_eval_task("health_and_medicine")  # domains are the hub configs, case kept


@pytest.mark.parametrize(
    "alias, name",
    [("ruclevr", "ruCLEVR"), ("RUCLEVR", "ruCLEVR"), (" ruCLEVR ", "ruCLEVR"), ("ruhhh_image", "ruHHH-Image"),
     ("ruHHH_Image", "ruHHH-Image"), ("MERA-evaluation/ruHHH-Video", "ruHHH-Video"),
     ("rutie_vision_gen", "ruTiE-Image"), ("rutie_vision", "ruTiE-Image"), ("rutie_audio", "ruTiE-Audio"),
     ("schoolsciencevqa_history_ru", "SchoolScienceVQA"), ("runaturalsciencevqa", "ruNaturalScienceVQA"),
     ("unisciencevqa_applied_sciences", "UniScienceVQA"), ("aquaria", "AQUARIA")],
)  # fmt: skip
def test_get_task_accepts_every_name_a_user_knows(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_suggests_close_names_and_where_the_list_is():
    with pytest.raises(UnknownTaskError) as exc:
        get_task("ruVQA")  # in the repo, not in MERA Multi
    assert exc.value.one_line().startswith("unknown task 'ruVQA'; did you mean ")
    assert "`mera-eval tasks` lists the 18 names" in exc.value.one_line()
    with pytest.raises(UnknownTaskError) as exc:
        get_task("ruNaturalScience")
    assert "did you mean ruNaturalScienceVQA?" in exc.value.one_line()
    with pytest.raises(UnknownTaskError) as exc:
        get_task("zzz")
    assert "did you mean" not in exc.value.one_line()


def test_resolve_tasks_selectors():
    assert [s.name for s in resolve_tasks(None)] == list(TASKS)
    assert [s.name for s in resolve_tasks(["all"])] == list(TASKS)
    assert [s.name for s in resolve_tasks(["audio"])] == ["ruEnvAQA", "ruSLUn", "AQUARIA", "ruTiE-Audio"]
    assert len(resolve_tasks(["image"])) == 11
    # comma lists, duplicates and mixed forms; always board order, each once
    assert [s.name for s in resolve_tasks(["ruhhh_video,ruclevr", "ruCLEVR", "aquaria"])] == [
        "ruCLEVR", "AQUARIA", "ruHHH-Video"
    ]  # fmt: skip
    with pytest.raises(UnknownTaskError):
        resolve_tasks(["video", "nope"])


def test_tasks_command_lists_every_dataset(capsys):
    assert cli_main(["tasks"]) == 0  # captured: not a terminal, so every column in full
    lines = capsys.readouterr().out.splitlines()
    for spec in TASKS.values():
        row = next(line for line in lines if f" {spec.hub_id} " in line)
        assert f" {BOARD_LABELS[spec.modality]} " in row and f"{spec.submission_name}.json" in row
        assert ("hidden" if spec.test_gold_hidden else "public") in row
        assert row.startswith(spec.name + " ")
