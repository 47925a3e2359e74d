"""Output filters MERA applies to a reply before scoring and before submission.

Most tasks have no filter (lm-eval's `take_first`: the raw text). Two have one:
* ruSLUn (`output_filter="ruslun"`): lm-eval's `lowercase`, then `ruslunscoring`, whose body is
  `clean_json_text` in `multimodal_tasks/ruslun/utils.py` (@0f32158), reproduced step by step.
* ruTiE gen (`custom_generate_task.yaml`): lm-eval's `remove_whitespace` (drops leading whitespace).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from evaluator.registry import TaskSpec

_FENCED = re.compile(r"^```(?:\w+)?\s*(.*)\s*```$", flags=re.DOTALL)
_JSON_PREFIX = re.compile(r"(?i)^\s*json\s*[:\n\r]\s*")


def clean_json_text(text: str | None) -> str:
    """Strip code fences, single backticks, a leading `json:`/`json\\n`, and outer quotes."""
    if text is None:
        return ""
    s = text.strip()
    fenced = _FENCED.match(s)
    if fenced:
        s = fenced.group(1).strip()
    if s.startswith("`") and s.endswith("`"):
        s = s[1:-1].strip()
    s = _JSON_PREFIX.sub("", s, count=1)
    if len(s) >= 2 and s[0] == s[-1] and s[0] in ("'", '"'):
        try:
            value = ast.literal_eval(s)  # unescape a quoted literal: "\\n" becomes a real newline
            s = value if isinstance(value, str) else str(value)
        except Exception:  # noqa: BLE001 — the official code falls back on any failure
            s = s[1:-1]
    return s.strip()


def ruslun_filter(text: str) -> str:
    return clean_json_text(text.lower())


def remove_whitespace(text: str) -> str:
    return text.lstrip()


def take_first(text: str) -> str:
    return text


_FILTERS: dict[str, Callable[[str], str]] = {"ruslun": ruslun_filter}


def output_filter(spec: TaskSpec) -> Callable[[str], str]:
    """The filter whose output MERA scores and submits for this task."""
    if spec.output_filter:
        return _FILTERS[spec.output_filter]
    if spec.dialogue:  # ruTiE gen tasks
        return remove_whitespace
    return take_first


def filtered_output(spec: TaskSpec, content: str | None) -> str:
    return output_filter(spec)(content or "")
