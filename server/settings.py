"""Every server option in one typed place, with the leaderboard run's values as defaults.

Sources, highest first: CLI flags (`mera-serve --max-model-len 8192`, generated from this model
by server/cli.py), environment variables (`MERA_SERVE_MAX_MODEL_LEN=8192`, nested guard fields as
`MERA_SERVE_GUARD__MAX_BODY_BYTES`), then the defaults below. A `MERA_SERVE_*` variable that names
no setting is an error naming the closest one. The API key comes only from the environment
(`MERA_SERVE_API_KEY` or `VLLM_API_KEY`) or a file (`MERA_SERVE_API_KEY_FILE`), never from argv.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chat_templates import template_path
from server.cache_dir import default_cache_dir
from server.errors import SettingsProblem
from server.guard.config import GuardSettings

LEADERBOARD_TEMPLATE = template_path()  # package data: found in a checkout and in any install
LEADERBOARD_MODEL = "google/gemma-4-E4B-it"
JUDGE_MODEL = "MERA-evaluation/MERA_Answer_judge"
DEV_MODEL_NAME = "mera-dev/tiny-gemma-4"
DEV_JUDGE_NAME = "mera-dev/tiny-judge"

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MERA_SERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True,
        populate_by_name=True
    )

    model: str = Field(LEADERBOARD_MODEL, description="Hugging Face model id or local checkpoint folder.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) to pin.")
    served_model_name: str | None = Field(
        None, description="Name clients send as `model` (default: the model id, or the dev name in --dev)."
    )
    dtype: Dtype = Field("bfloat16", description="Weight dtype (the leaderboard ran bfloat16).")
    chat_template: Path | None = Field(
        LEADERBOARD_TEMPLATE, description="Chat template file (the leaderboard's Gemma-4 template)."
    )
    max_model_len: int = Field(10000, gt=0, description="Context length (the leaderboard's 10000).")
    seed: int = Field(1234, description="Engine seed (the leaderboard's 1234).")
    host: str = Field(
        "127.0.0.1", description="Address to listen on (loopback by default; any other address needs an API key or "
        "allow_unauthenticated)."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MERA_SERVE_API_KEY", "VLLM_API_KEY"),
        description="Bearer key required on every route but /health (env MERA_SERVE_API_KEY or VLLM_API_KEY).",
    )
    api_key_file: Path | None = Field(
        None, description="File whose first line is the API key (instead of MERA_SERVE_API_KEY)."
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve on a non-loopback address without an API key (refused otherwise)."
    )
    # ruTiE replays up to 5 earlier turns with their media (history 5 -> 6 items); AQUARIA sends 2 audios.
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=lambda: {"image": 6, "audio": 6, "video": 1},
        description="Most media items of each kind in one request (JSON).",
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    max_num_seqs: int | None = Field(None, gt=0, description="Most sequences in a batch (vLLM's default if unset).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica (vLLM tensor parallelism).")
    data_parallel_size: int = Field(1, ge=1, description="Model replicas on this host (vLLM data parallelism).")
    enforce_eager: bool = Field(False, description="Skip CUDA graphs / torch.compile (faster start, slower run).")
    download_dir: Path | None = Field(None, description="Where weights are downloaded (default: the HF cache).")
    dev: bool = Field(False, description="Serve the tiny random Gemma-4 built offline (CPU development).")
    judge: bool = Field(False, description="Serve the JudgeScore classifier instead of the chat model.")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where dev checkpoints are built (default: $XDG_CACHE_HOME/mera-multi or ~/.cache/mera-multi).",
    )
    extra_args: list[str] = Field(default_factory=list, description="More vLLM arguments, passed through as is.")
    guard: GuardSettings = Field(default_factory=GuardSettings, description="Request guard (server/guard).")

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"chat template file not found: {path} (set --chat-template or MERA_SERVE_CHAT_TEMPLATE)")
        return path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _KnownEnvironmentOnly(settings_cls), env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _read_key_file(self) -> ServerSettings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None and self.api_key.get_secret_value():
            raise ValueError("the API key is set twice: use MERA_SERVE_API_KEY (or VLLM_API_KEY) or "
                             "MERA_SERVE_API_KEY_FILE, not both")  # fmt: skip
        try:
            lines = Path(self.api_key_file).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {self.api_key_file} ({exc.strerror})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"the API key file {self.api_key_file} is empty (its first line is the key)")
        self.api_key = SecretStr(key)
        return self

    @model_validator(mode="after")
    def _apply_modes(self) -> ServerSettings:
        explicit = self.model_fields_set
        if self.judge:
            # The judge is a sequence classifier: no chat template, no media.
            if "model" not in explicit:
                self.model = JUDGE_MODEL
            if "chat_template" not in explicit:
                self.chat_template = None
            if "port" not in explicit:
                self.port = 8001
            if "max_model_len" not in explicit:
                self.max_model_len = 8192  # the judge truncates inputs at 8192 tokens
        if self.dev:
            if "served_model_name" not in explicit:
                self.served_model_name = DEV_JUDGE_NAME if self.judge else DEV_MODEL_NAME
            if "dtype" not in explicit:
                self.dtype = "float32"  # exact on every CPU; bf16 also works but is emulated without AMX
            if "enforce_eager" not in explicit:
                self.enforce_eager = True
        return self

    @property
    def effective_served_name(self) -> str:
        return self.served_model_name or self.model

    def dev_checkpoint_dir(self) -> Path:
        return self.cache_dir / ("tiny-judge" if self.judge else "tiny-gemma4")


# --- every MERA_SERVE_* variable must name a setting ------------------------------------------------
def _env_names(name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"MERA_SERVE_{name.upper()}"]


def known_env_names() -> set[str]:
    names = {env for name, field in ServerSettings.model_fields.items() for env in _env_names(name, field)}
    return names | {f"MERA_SERVE_GUARD__{name.upper()}" for name in GuardSettings.model_fields}


def check_environment(environ: Mapping[str, str]) -> None:
    """A MERA_SERVE_* variable that names no setting (a typo would otherwise be ignored) is an error."""
    known = known_env_names()
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith("MERA_SERVE_") and upper not in known:
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            raise SettingsProblem(
                f"unknown setting {name} in the environment",
                fix=f"did you mean {close[0]}?" if close else "mera-serve --help lists every setting",
            )


class _KnownEnvironmentOnly(PydanticBaseSettingsSource):
    """Checks the environment before the environment source reads it; contributes no values."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        check_environment(os.environ)
        return {}
