"""argparse value types: a bad value is refused while parsing, with what was expected and an example."""

from __future__ import annotations

import argparse
import json
from typing import Any

from evaluator.registry import BOARDS


def _number(text: str, kind: type, what: str, *, minimum: float | None = None, strict: bool = False,
            maximum: float | None = None):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} expected, got {text!r}") from None
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '≥'} {minimum:g}, got {text}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be ≤ {maximum:g}, got {text}")
    return value


def duration_arg(text: str) -> float:
    """Seconds from `90s`, `10m`, `1.5h` or a bare number of minutes."""
    value = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 60)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 10m, 1h)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return seconds


def positive_int(text: str) -> int:
    return _number(text, int, "a whole number", minimum=1)


def concurrency_arg(text: str) -> int | None:
    """`auto` (None: chosen from what the server says) or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return None
    try:
        return _number(text, int, "a whole number or auto", minimum=1)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("a whole number or auto expected", "auto or a whole number expected")) from None


def non_negative_int(text: str) -> int:
    return _number(text, int, "a whole number", minimum=0)


def positive_float(text: str) -> float:
    return _number(text, float, "a number", minimum=0, strict=True)


def non_negative_float(text: str) -> float:
    return _number(text, float, "a number", minimum=0)


def share(text: str) -> float:
    return _number(text, float, "a number from 0 to 1", minimum=0, maximum=1)


def _json(text: str, example: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos + 1}); "
                                         f"quote it for the shell, e.g. '{example}'") from None


def json_object(example: str):
    """A JSON object argument (`--extra-body '{"top_p": 0.9}'`)."""

    def parse(text: str) -> dict[str, Any]:
        value = _json(text, example)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"must be a JSON object like '{example}', got {text!r}")
        return value

    return parse


def _per_modality(text: str, example: str, kind: type, what: str, minimum: float, strict: bool) -> dict[str, Any]:
    value = json_object(example)(text)
    out = {}
    for key, item in value.items():
        if key not in BOARDS:
            raise argparse.ArgumentTypeError(f"unknown modality {key!r} (use {', '.join(BOARDS)}), e.g. '{example}'")
        if isinstance(item, bool) or not isinstance(item, int | float) or (kind is int and not isinstance(item, int)):
            raise argparse.ArgumentTypeError(f"{key}: {what} expected, got {json.dumps(item)}")
        if item < minimum or (strict and item == minimum):
            raise argparse.ArgumentTypeError(f"{key}: must be {'>' if strict else '≥'} {minimum:g}, got {item}")
        out[key] = kind(item)
    return out


def timeouts(text: str) -> dict[str, float]:
    """`--timeout '{"video": 1800}'`: seconds per modality."""
    return _per_modality(text, '{"video": 1800}', float, "seconds", 0, strict=True)


def mm_limits(text: str) -> dict[str, int]:
    """`--mm-limits '{"image": 6, "audio": 6, "video": 1}'`: the server's media items per prompt."""
    return _per_modality(text, '{"image": 6, "audio": 6, "video": 1}', int, "a whole number", 0, strict=False)
