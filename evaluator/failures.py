"""Failed replies grouped by reason: the stored status, the HTTP status and the server's message.

Grouping is generic (any stored status, any message), so a new failure status shows up in reports
without a change here. Numbers and ids inside a message are masked for grouping ("... has 12345
tokens" and "... has 12001 tokens" are one reason); the first full message is kept as the example.
Each group says whether re-sending the same request can help: a transient failure can, a server's
deterministic refusal (context length, body too large) cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from evaluator.schema import Reply

Retry = Literal["yes", "no", "after a fix", "maybe"]
EXAMPLE_CHARS = 400
SAMPLES_KEPT = 5

_MASK = re.compile(r"0x[0-9a-f]+|(?=[0-9a-f-]*\d)[0-9a-f]{8,}(?:-[0-9a-f]{4,})*|\d+(?:\.\d+)?", re.IGNORECASE)
_CONTEXT = re.compile(r"context length|context window|max_model_len|maximum model length|too many tokens|"
                      r"prompt is too long|exceeds the model", re.IGNORECASE)
_TRANSIENT_HTTP = {408, 409, 425, 429}


class FailureGroup(BaseModel):
    status: str  # the stored reply status (invalid_request, failed, or any newer one)
    http_status: int | None = None
    reason: str  # the message with numbers masked: the grouping key
    example: str  # one full message, as the server sent it (cut to EXAMPLE_CHARS)
    count: int = 0
    tasks: dict[str, int] = Field(default_factory=dict)
    samples: list[str] = Field(default_factory=list)  # the first few sample keys
    retry: Retry
    advice: str

    @property
    def label(self) -> str:
        code = f" {self.http_status}" if self.http_status else ""
        return {"invalid_request": f"rejected{code}", "failed": f"failed{code}", "not_sent": "not sent"}.get(
            self.status, f"{self.status}{code}")


def verdict(status: str, http_status: int | None, message: str) -> tuple[Retry, str]:
    """Can re-sending the same request fix this, and what to do."""
    if status == "failed":
        return "yes", "transient (connection, timeout or server error after every retry): re-send with --retry-errors"
    if status == "not_sent":
        return "no", ("not sent: the dataset row or the media options cannot make a request the server accepts; "
                      "the message names what to change")
    if http_status in (401, 403):
        return "after a fix", "the endpoint refused the key: fix --api-key / MERA_API_KEY, then --retry-errors"
    if http_status == 404:
        return "after a fix", "wrong model name or URL path: check --model and --endpoint, then --retry-errors"
    if http_status in _TRANSIENT_HTTP or (http_status or 0) >= 500:
        return "yes", "the server was busy or failing: re-send with --retry-errors"
    if http_status == 413:
        return "no", ("the request body is over the server's limit: lower --image-max-side / --video-frames or "
                      "raise the server's limit, then --retry-errors")
    if _CONTEXT.search(message):
        return "no", ("prompt plus --max-tokens exceed the model's context; the same request fails again: lower "
                      "--max-tokens or the media size, or serve a longer context")
    if status == "invalid_request":
        return "no", "the server rejects this request as it is; re-sending it gives the same answer"
    return "maybe", "--retry-errors re-sends it"


def _reason(message: str) -> str:
    return " ".join(_MASK.sub("N", message).split())[:EXAMPLE_CHARS]


def group_failures(replies: Iterable[Reply]) -> list[FailureGroup]:
    """Every non-ok reply, grouped; the largest group first."""
    groups: dict[tuple, FailureGroup] = {}
    for reply in replies:
        if reply.status == "ok":
            continue
        message = (reply.error or "").strip() or "(no message)"
        key = (reply.status, reply.http_status, _reason(message))
        group = groups.get(key)
        if group is None:
            retry, advice = verdict(reply.status, reply.http_status, message)
            group = groups[key] = FailureGroup(status=reply.status, http_status=reply.http_status, reason=key[2],
                                               example=message[:EXAMPLE_CHARS], retry=retry, advice=advice)
        group.count += 1
        group.tasks[reply.task] = group.tasks.get(reply.task, 0) + 1
        if len(group.samples) < SAMPLES_KEPT:
            group.samples.append(reply.sample_key)
    return sorted(groups.values(), key=lambda g: (-g.count, g.status, g.reason))
