"""The guard's settings. Part of the server settings (`ServerSettings.guard`); handed to the
middleware, which vLLM imports by path in its own process, through one environment variable.

Every budget has a default that lets the largest MERA request through (a ruTiE turn replaying five
earlier turns with their media: 12 messages, 6 images or 6 audio clips; AQUARIA's two clips;
60 s 1080p videos) with room to spare, and stops the requests of issue 14.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GUARD_CONFIG_ENV = "MERA_GUARD_CONFIG"


class GuardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the request guard in vLLM's API server.")
    open_metrics: bool = Field(False, description="Serve /metrics without the API key.")
    # --- slow or large requests ---------------------------------------------------------------------------
    max_body_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Request body limit (413 above it).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="The request line and headers must arrive within this many seconds (then the "
        "connection is closed)."
    )
    body_timeout_s: float = Field(
        120.0, gt=0, description="The whole body must arrive within this many seconds of the headers (a total, "
        "not per chunk; 408 after it)."
    )
    max_json_depth: int = Field(64, gt=0, description="Deepest nesting of a JSON body (400 deeper).")
    # --- cost budgets of one request ------------------------------------------------------------------------
    max_messages: int = Field(
        64, gt=0, description="Most messages in one request (all conversations of a batch together); the chat "
        "template's cost grows with the square of the count."
    )
    max_content_parts: int = Field(256, gt=0, description="Most content parts in one request.")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=dict,
        description="Most media of each kind in one request, on every route (mera-serve fills it from "
        "--limit-mm-per-prompt; empty = unchecked).",
    )
    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Largest image (width x height) accepted, read from its header."
    )
    max_video_pixels: int = Field(
        100_000_000, gt=0, description="Largest video: frames the server will sample x frame width x height, read "
        "from the container header (1080p at 32 frames is 66 M)."
    )
    video_num_frames: int = Field(
        32, description="Frames vLLM samples from a video (its default 32; mera-serve reads --media-io-kwargs)."
    )
    video_fps: float = Field(-1, description="Frame rate vLLM samples a video at (-1: not limited by rate).")
    max_audio_seconds: float = Field(30.0, gt=0, description="Gemma-4's audio encoder sees at most 30 s of a clip.")
    long_audio: Literal["reject", "truncate"] = Field(
        "truncate",
        description="A clip over max_audio_seconds: 400, or accept (vLLM cuts it) and say so in a response header.",
    )
    max_total_audio_seconds: float = Field(
        300.0, gt=0, description="Most audio seconds in one request, all clips together (each decoded whole)."
    )
    max_n: int = Field(8, gt=0, description="Most completions per prompt (`n`).")
    context_tokens: int = Field(
        10000, gt=0, description="The server's context length (mera-serve fills it from --max-model-len): what a "
        "request without max_tokens may generate per sequence."
    )
    max_generated_tokens: int | None = Field(
        None, gt=0, description="Most tokens one request may ask for: sequences x n x max_tokens (default: twice "
        "context_tokens)."
    )
    # --- remote media --------------------------------------------------------------------------------------
    allowed_media_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose http(s) media URLs the guard fetches; empty = data URLs only.",
    )
    media_fetch_timeout_s: float = Field(10.0, gt=0, description="Bound on fetching one allowed remote media URL.")

    @property
    def generated_tokens_budget(self) -> int:
        return self.max_generated_tokens or 2 * self.context_tokens

    def to_env(self) -> dict[str, str]:
        return {GUARD_CONFIG_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> GuardSettings:
        raw = os.environ.get(GUARD_CONFIG_ENV)
        return cls.model_validate(json.loads(raw)) if raw else cls()
