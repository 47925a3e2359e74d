"""Each metric pinned on hand-made cases, official and corrected behaviour side by side."""

from __future__ import annotations

import pytest

from evaluator import metrics as M
from evaluator.filters import clean_json_text, remove_whitespace, ruslun_filter


# --- squad compute_exact -------------------------------------------------------------------------
@pytest.mark.parametrize(("gold", "pred", "expected"), [
    ("B", "B", 1), ("B", "b.", 1), ("B", " B\n", 1), ("B", "Ответ: B", 0), ("B", "ОТВЕТ B", 0),
    ("Да", "да", 1), ("Да", "Да.", 1), ("нет", "Нет!", 1), ("два", "2", 0),
    ("1,5", "1.5", 1),  # both lose the ASCII punctuation
    ("«да»", "да", 0),  # «» are not ASCII punctuation: they survive
    ("the cat", "cat", 1),  # English articles dropped
])  # fmt: skip
def test_squad_exact_official(gold, pred, expected):
    assert M.exact_match(gold, pred, kind="squad") == expected


def test_squad_gold_A_normalises_to_empty_officially_but_not_corrected():
    # Quirk 13: article removal turns gold "A" into "" so an empty reply, "The" or "a." counts.
    for pred in ("", "The", "a."):
        assert M.exact_match("A", pred, kind="squad") == 1
    for pred in ("", "The"):
        assert M.exact_match("A", pred, kind="squad", corrected=True) == 0
    assert M.exact_match("A", "a.", kind="squad", corrected=True) == 1
    assert M.exact_match("A", "B", kind="squad") == 0


# --- lm-eval exact_match -------------------------------------------------------------------------
@pytest.mark.parametrize(("gold", "pred", "case", "punct", "expected"), [
    ("B", "b.", True, True, 1),
    ("B", " B", True, True, 0),  # no whitespace strip
    ("B", "B\n", True, True, 0),
    ("Да", "да!", True, True, 1),
    ("A", "a", False, False, 0),  # video YAMLs: case- and punctuation-sensitive
    ("A", "A.", False, False, 0),
    ("A", "A", False, False, 1),
    ("A", "a.", True, False, 0),
])  # fmt: skip
def test_lm_eval_exact_official(gold, pred, case, punct, expected):
    assert M.exact_match(gold, pred, kind="lm-eval", ignore_case=case, ignore_punctuation=punct) == expected


def test_lm_eval_corrected_strips_whitespace():
    assert M.exact_match("B", " B\n", kind="lm-eval", corrected=True) == 1


def test_answer_marker_credited_only_when_corrected():
    reply = "РАССУЖДЕНИЕ: на картинке два кота.\nОТВЕТ: Да"
    for kind in M.EM_KINDS:
        assert M.exact_match("Да", reply, kind=kind) == 0
        assert M.exact_match("Да", reply, kind=kind, corrected=True) == 1
    assert M.after_answer_marker("ОТВЕТ A ... ОТВЕТ B") == "B"
    assert M.after_answer_marker("Ответ: B") == "Ответ: B"  # only the prompts' uppercase marker


def test_list_gold_any_match():
    # ruCommonVQA's gold is a list of acceptable answers.
    assert M.exact_match(["Да", "да, конечно"], "да", kind="squad") == 1
    assert M.exact_match(["два", "2"], "2", kind="lm-eval") == 1
    assert M.exact_match(["два", "2"], "три", kind="squad") == 0


def test_has_gold():
    assert not M.has_gold("")
    assert not M.has_gold([])
    assert M.has_gold("B") and M.has_gold(["x"])


def test_unknown_kind_raises():
    with pytest.raises(ValueError):
        M.exact_match("a", "a", kind="bleu")


# --- ruSLUn filter -------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "cleaned"), [
    ('```json\n{"intent": "RateBook"}\n```', '{"intent": "ratebook"}'),
    ('`{"a": 1}`', '{"a": 1}'),
    ('JSON: {"a": 1}', '{"a": 1}'),
    ('json\n{"a": 1}', '{"a": 1}'),
    ('"{\\"a\\": \\"x\\\\ny\\"}"', '{"a": "x\\ny"}'),  # quoted literal unescaped once
    ("'{broken'", "{broken"),  # literal_eval fails: outer quotes dropped
    ("  plain  ", "plain"),
])  # fmt: skip
def test_ruslun_filter(raw, cleaned):
    assert ruslun_filter(raw) == cleaned


def test_clean_json_text_none_and_ruTiE_whitespace():
    assert clean_json_text(None) == ""
    assert remove_whitespace("  \n B ") == "B "


# --- ruSLUn process_results ----------------------------------------------------------------------
GOLD = "{'intent': 'weather/find', 'slots': [{'place_name': 'москва'}, {'date': 'завтра'}]}"


def test_slun_exact():
    pred = ruslun_filter('```json\n{"intent": "weather/find", "slots": [{"date": "завтра"}, {"place_name": "москва"}]}\n```')
    assert M.slun_scores(GOLD, pred) == {"intent_em": 1, "slot_f1": 1.0}


def test_slun_partial_and_duplicate_slots():
    # Multiset: the duplicated slot matches once; precision 1/3, recall 1/2 -> F1 0.4.
    pred = '{"intent": "weather/query", "slots": [{"date": "завтра"}, {"date": "завтра"}, {"place_name": "питер"}]}'
    s = M.slun_scores(GOLD, pred)
    assert s["intent_em"] == 0 and s["slot_f1"] == pytest.approx(0.4)


def test_slun_empty_slots_both_is_one():
    assert M.slun_scores("{'intent': 'alarm/set', 'slots': []}", '{"intent": "alarm/set", "slots": []}')["slot_f1"] == 1.0
    assert M.slun_scores("{'intent': 'alarm/set', 'slots': []}", '{"intent": "alarm/set"}')["slot_f1"] == 1.0


def test_slun_invalid_json_scores_zero_without_problem():
    assert M.slun_scores(GOLD, "не json") == {"intent_em": 0, "slot_f1": 0.0}
    assert M.slun_scores(GOLD, "null") == {"intent_em": 0, "slot_f1": 0.0}


def test_slun_camelcase_intent_official_vs_corrected():
    gold = "{'intent': 'RateBook', 'slots': [{'object_name': 'война и мир'}]}"
    pred = ruslun_filter('{"intent": "RateBook", "slots": [{"object_name": "Война и мир"}]}')
    assert M.slun_scores(gold, pred) == {"intent_em": 0, "slot_f1": 1.0}  # quirk 11: never matches
    assert M.slun_scores(gold, pred, corrected=True) == {"intent_em": 1, "slot_f1": 1.0}


def test_slun_inputs_that_crash_official_score_zero_with_reason():
    apostrophe_gold = "{'intent': 'play/music', 'slots': [{'artist': \"guns n' roses\"}]}"
    pred = '{"intent": "play/music", "slots": [{"artist": "guns n\' roses"}]}'
    s = M.slun_scores(apostrophe_gold, pred)
    assert s["intent_em"] == 0 and "gold" in s.problem
    assert M.slun_scores(apostrophe_gold, pred, corrected=True) == {"intent_em": 1, "slot_f1": 1.0}
    s = M.slun_scores(GOLD, '[{"intent": "weather/find"}]')  # a JSON array: AttributeError officially
    assert s["intent_em"] == 0 and "not a JSON object" in s.problem
    s = M.slun_scores(GOLD, '{"intent": "weather/find", "slots": ["date"]}')
    assert s["intent_em"] == 0 and s.problem


# --- groups --------------------------------------------------------------------------------------
def test_group_score_all_members_must_be_correct():
    items = [(1, 0), (1, 0), (1, 1), (0, 1), (1, 2)]
    assert M.group_score(items) == pytest.approx(2 / 3)
    assert M.group_score([]) is None
