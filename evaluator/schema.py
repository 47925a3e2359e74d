"""The typed values that flow between the evaluator's stages.

registry -> data (Sample) -> requests (ChatRequest) -> client (Reply) -> store -> scoring.
Each stage takes and returns these; none reaches back into an earlier one. In particular a
Reply carries everything scoring needs (question text, gold, meta), so scoring never reloads data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Modality = Literal["image", "audio", "video"]
Split = Literal["test", "shots"]
# ok: an answer. invalid_request: the server refused the request (4xx, its message kept). not_sent: the
# evaluator did not send it (the row could not be made a request, e.g. media that do not decode, or it is
# over the server's media limits; the message says why). failed: transient errors until the retries ran
# out. The rest are 200s that are not answers: no_content (message.content null), no_choices, not_json,
# truncated (cut off), oversized (over the cap).
# Only "ok" is ever scored; every other status is re-sent by --retry-errors.
ReplyStatus = Literal["ok", "invalid_request", "not_sent", "failed", "no_content", "no_choices", "not_json",
                      "truncated", "oversized"]
FAILURE_STATUSES: tuple[str, ...] = ("invalid_request", "not_sent", "failed", "no_content", "no_choices",
                                     "not_json", "truncated", "oversized")


# --- media, as read from the dataset (decoded once, never twice) -------------------------------
@dataclass(frozen=True)
class ImageMedia:
    """An image exactly as stored on the hub (JPEG or PNG bytes, not re-encoded)."""

    data: bytes
    kind: Modality = field(default="image", init=False)


@dataclass(frozen=True)
class AudioMedia:
    """Decoded audio: float32 samples, (channels, samples) as FFmpeg/torchcodec decode them (or 1-D when already
    mixed to mono, e.g. a `datasets`-decoded array), at their stored rate."""

    array: np.ndarray
    rate: int
    kind: Modality = field(default="audio", init=False)


@dataclass(frozen=True)
class VideoMedia:
    """A video's stored container bytes (usually MP4)."""

    data: bytes
    kind: Modality = field(default="video", init=False)


Media = ImageMedia | AudioMedia | VideoMedia


class Sample(BaseModel):
    """One dataset row in MERA's format, media decoded."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    task: str  # registry name, e.g. "ruCLEVR"
    domain: str | None = None  # hub config for datasets with domains, e.g. "biology"
    split: Split
    index: int  # row position within (task, domain, split)
    id: int  # meta.id
    instruction: str
    inputs: dict[str, Any]  # text inputs only (str values); media are in `media`
    media: dict[str, Media] = Field(default_factory=dict)  # input key -> media, absent if None
    outputs: str | list[str] = ""  # gold; "" for private test splits
    meta: dict[str, Any] = Field(default_factory=dict)
    # Why this row cannot become a request (e.g. a media file that does not decode): recorded for the
    # sample, never sent, and the run goes on with the others.
    problem: str | None = None

    @property
    def key(self) -> str:
        """Stable identity of the sample across runs (the store's resume key)."""
        return sample_key(self.task, self.domain, self.split, self.id)


def sample_key(task: str, domain: str | None, split: str, sample_id: int) -> str:
    return f"{task}/{domain or '-'}/{split}/{sample_id}"


class GenerationParams(BaseModel):
    """Sampling settings. Given as options, only the fields set explicitly count: the others come from each
    task's registry entry (`requests.generation_for`); on a ChatRequest, what was sent."""

    model: str = "google/gemma-4-E4B-it"
    temperature: float = 0.0
    max_tokens: int = 10000
    seed: int | None = 1234
    stop: list[str] = Field(default_factory=lambda: ["<eos>"])
    extra_body: dict[str, Any] = Field(default_factory=dict)


class ChatRequest(BaseModel):
    """A chat completion request for one sample (or one ruTiE turn)."""

    sample_key: str
    modality: Modality
    messages: list[dict[str, Any]]  # OpenAI messages with content parts and data URLs
    params: GenerationParams
    digest: str  # sha256 of messages (media as their own sha256) + params: what was sent
    source_digest: str | None = None  # sha256 of what it was built from (requests.source_digest)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.params.model,
            "messages": self.messages,
            "temperature": self.params.temperature,
            "max_tokens": self.params.max_tokens,
        }
        if self.params.seed is not None:
            body["seed"] = self.params.seed
        if self.params.stop:
            body["stop"] = self.params.stop[:4]  # OpenAI's limit; lm-eval sends stop[:4] too
        body.update(self.params.extra_body)
        return body


class Reply(BaseModel):
    """What came back for one sample, persisted the moment it arrives."""

    sample_key: str
    task: str
    domain: str | None
    split: Split
    sample_id: int
    status: ReplyStatus
    content: str | None = None  # the model's text; None unless status == "ok"
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None  # server's message for invalid_request / last error for failed
    attempts: int = 1
    latency_s: float | None = None  # the answering attempt, from sending the request to the last byte
    queue_s: float | None = None  # waiting for a concurrency slot before the first send
    wait_s: float | None = None  # backoff sleeps and endpoint downtime between attempts
    evidence: dict[str, Any] = Field(default_factory=dict)  # for failures: sizes, content type, a short excerpt
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    endpoint: str | None = None
    request_digest: str | None = None
    source_digest: str | None = None  # lets a resumed run skip the sample without rebuilding its request
    # What scoring needs, copied from the sample so scoring never reloads the dataset:
    question: str = ""  # instruction.format(**inputs) as MERA's judge sees it
    gold: str | list[str] = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None
