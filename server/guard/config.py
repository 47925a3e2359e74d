"""The guard's settings. Part of the server settings (`ServerSettings.guard`); handed to the
middleware, which vLLM imports by path in its own process, through one environment variable."""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, Field

GUARD_CONFIG_ENV = "MERA_GUARD_CONFIG"


class GuardSettings(BaseModel):
    enabled: bool = True
    open_metrics: bool = Field(False, description="Serve /metrics without the API key.")
    max_body_bytes: int = Field(256 * 1024 * 1024, description="Request body limit (413 above it).")
    body_read_timeout_s: float = Field(60.0, description="Give up on a client that stops sending its body.")
    max_image_pixels: int = Field(
        50_000_000, description="Largest image (width*height) accepted, checked before decoding."
    )
    max_audio_seconds: float = Field(30.0, description="Gemma-4's audio encoder sees at most 30 s.")
    long_audio: Literal["reject", "truncate"] = Field(
        "truncate",
        description="Audio over max_audio_seconds: 400, or accept and say so in a response header.",
    )
    allowed_media_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose http(s) media URLs may be fetched; empty = data URLs only.",
    )
    media_fetch_timeout_s: float = Field(10.0, description="Bound on fetching one allowed remote media URL.")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=dict,
        description="Most media of each kind per request (filled from the server settings).",
    )

    def to_env(self) -> dict[str, str]:
        return {GUARD_CONFIG_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> GuardSettings:
        raw = os.environ.get(GUARD_CONFIG_ENV)
        return cls.model_validate(json.loads(raw)) if raw else cls()
