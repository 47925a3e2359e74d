"""Per-sample metrics as MERA computes them: pure functions, no I/O.

Two exact-match definitions exist in MERA's code and they disagree (see `mera-multi.md`, "Local EM
definitions" and "Known quirks" 13-14):

* ``lm-eval`` — the @0f32158 YAMLs: lm-eval's ``exact_match`` (HF ``evaluate`` semantics): optional
  lower-casing and ASCII-punctuation removal per task, *no* whitespace stripping, then ``==``.
* ``squad`` — the @3380006 ``custom_metrics.py``: transformers' ``squad_metrics.compute_exact``:
  lower, drop ASCII punctuation, drop English articles a/an/the, collapse whitespace, ``==``.

Default: ``squad``. The leaderboard reports "EM" next to "JudgeScore", and the only MERA code that
computes JudgeScore (@3380006) pairs it with ``compute_exact``; so that is our best reading of the
site's scorer. The choice is per run and recorded in results.json.

``corrected=False`` (default) reproduces the official behaviour, quirks included. ``corrected=True``
fixes the quirks we know of, each documented where it is applied:

* squad: English articles are not removed (gold ``A`` no longer normalises to ``""``).
* lm-eval: surrounding whitespace is stripped (``" B"`` and ``"B\\n"`` match ``B``).
* both: a prediction containing ``ОТВЕТ`` is scored on the text after its last occurrence (the
  hub prompts ask for ``ОТВЕТ <answer>``; only the judge credited that officially).
* ruSLUn: gold is lower-cased like the prediction, and gold that the official scorer cannot parse
  (an apostrophe inside a value) is parsed leniently.

In both modes a list-valued gold (ruCommonVQA) counts as matched if any element matches (lm-eval's
multiple-target rule; the @3380006 call would raise on a list, which cannot be "reproduced").
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

EmKind = Literal["squad", "lm-eval"]
EM_KINDS: tuple[EmKind, ...] = ("squad", "lm-eval")
DEFAULT_EM: EmKind = "squad"
ANSWER_MARKER = "ОТВЕТ"  # the hub prompts' answer marker; MERA's judge splits on it

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_SQUAD_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# --- exact match ---------------------------------------------------------------------------------
def squad_normalize(text: str, *, remove_articles: bool = True) -> str:
    """transformers' `squad_metrics.normalize_answer` (articles optional for the corrected mode)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
    if remove_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(gold: str, pred: str, *, corrected: bool = False) -> int:
    """`compute_exact(gold, pred)`; corrected keeps English articles (gold `A` stays `a`)."""
    keep = not corrected
    return int(squad_normalize(gold, remove_articles=keep) == squad_normalize(pred, remove_articles=keep))


def lm_eval_exact(gold: str, pred: str, *, ignore_case: bool, ignore_punctuation: bool,
                  corrected: bool = False) -> int:
    """lm-eval `exact_match` (HF evaluate): lower, then drop ASCII punctuation; no strip."""
    if corrected:
        gold, pred = gold.strip(), pred.strip()
    if ignore_case:
        gold, pred = gold.lower(), pred.lower()
    if ignore_punctuation:
        gold, pred = gold.translate(_PUNCT_TABLE), pred.translate(_PUNCT_TABLE)
    return int(gold == pred)


def after_answer_marker(pred: str) -> str:
    """The text after the last `ОТВЕТ`, without a leading colon or whitespace; `pred` if absent."""
    if ANSWER_MARKER not in pred:
        return pred
    return pred.rsplit(ANSWER_MARKER, 1)[1].strip().lstrip(":").strip()


def exact_match(gold: str | Sequence[str], pred: str, *, kind: EmKind = DEFAULT_EM, ignore_case: bool = True,
                ignore_punctuation: bool = True, corrected: bool = False) -> int:
    """EM of one sample; a list gold matches if any element does."""
    if corrected:
        pred = after_answer_marker(pred)
    golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
    for g in golds:
        if kind == "squad":
            hit = squad_exact(g, pred, corrected=corrected)
        elif kind == "lm-eval":
            hit = lm_eval_exact(g, pred, ignore_case=ignore_case, ignore_punctuation=ignore_punctuation,
                                corrected=corrected)
        else:
            raise ValueError(f"unknown EM kind {kind!r}; choose one of {', '.join(EM_KINDS)}")
        if hit:
            return 1
    return 0


def has_gold(gold: str | Sequence[str]) -> bool:
    """Private test splits ship `outputs = ""`: no local score exists for them."""
    if isinstance(gold, str):
        return gold != ""
    return any(str(g) != "" for g in gold)


# --- ruSLUn --------------------------------------------------------------------------------------
class SlunScore(dict):
    """{"intent_em": 0|1, "slot_f1": float}, plus why it is 0 when the input was unusable."""

    @property
    def problem(self) -> str | None:
        return self.get("problem")


def _slot_pairs(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """The official slot_kv_list: every (key, value) of every slot dict, stringified."""
    pairs: list[tuple[str, str]] = []
    for slot in obj.get("slots", []) or []:
        for key, value in slot.items():
            pairs.append((str(key), str(value)))
    return pairs


def _parse_gold(gold: str, corrected: bool) -> Any:
    if not corrected:
        return json.loads(gold.replace("'", '"'))  # the official parse; raises on apostrophes in values
    text = gold.lower()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)  # gold is a Python repr: single quotes, maybe an apostrophe inside
    except (ValueError, SyntaxError):
        return json.loads(text.replace("'", '"'))


def slun_scores(gold: str, filtered_pred: str, *, corrected: bool = False) -> SlunScore:
    """ruSLUn `process_results` on the already filtered prediction (see filters.ruslun_filter).

    Where the official code raises (invalid gold, a prediction that is JSON but not an object, slots
    that are not dicts), the sample scores 0 and `problem` says why; the run goes on.
    """
    try:
        pred = json.loads(filtered_pred)
    except (json.JSONDecodeError, TypeError):
        return SlunScore(intent_em=0, slot_f1=0.0)
    if pred is None:
        return SlunScore(intent_em=0, slot_f1=0.0)
    try:
        ref = _parse_gold(gold, corrected)
    except (json.JSONDecodeError, ValueError, SyntaxError) as exc:
        return SlunScore(intent_em=0, slot_f1=0.0, problem=f"gold is not parseable JSON ({exc})")
    try:
        intent = int(pred.get("intent") == ref.get("intent"))
        pred_kv, ref_kv = _slot_pairs(pred), _slot_pairs(ref)
    except (AttributeError, TypeError) as exc:
        return SlunScore(intent_em=0, slot_f1=0.0, problem=f"prediction is not a JSON object with slot dicts ({exc})")
    matched = sum((Counter(pred_kv) & Counter(ref_kv)).values())
    if not pred_kv and not ref_kv:
        f1 = 1.0
    else:
        precision = matched / len(pred_kv) if pred_kv else 0.0
        recall = matched / len(ref_kv) if ref_kv else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SlunScore(intent_em=intent, slot_f1=f1)


# --- groups (ruHHH) ------------------------------------------------------------------------------
def group_score(items: Iterable[tuple[float, Any]]) -> float | None:
    """`aggregate_group_score`: a group scores 1 only if every member scored 1; mean over groups."""
    groups: dict[Any, list[float]] = {}
    for score, group in items:
        groups.setdefault(group, []).append(score)
    if not groups:
        return None
    return sum(1 for scores in groups.values() if sum(scores) == len(scores)) / len(groups)


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
