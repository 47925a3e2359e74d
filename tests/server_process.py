"""Start a real `mera-serve` (vLLM) on a free loopback port and stop it by PID.

Modelled on vLLM's tests/utils.py RemoteOpenAIServer: wait for /health, fail fast with the
log tail if the process dies, always stop what we started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Test servers build their dev checkpoints here, inside the work tree (not the user's cache).
DEV_CACHE = PROJECT_ROOT / ".cache" / "mera-multi"
START_TIMEOUT_S = float(os.environ.get("MERA_TEST_SERVER_TIMEOUT", "420"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def like_a_terminal_job() -> None:
    """A `preexec_fn`: SIGINT as a terminal's foreground job has it. A suite started in the background of a
    non-interactive shell (`make test &`, some CI runners) hands its children SIGINT ignored, and a Ctrl-C
    test would then watch the run finish instead of interrupting it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    cache = PROJECT_ROOT / ".cache"
    # The developer's own server settings must not leak into test servers.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERA_SERVE_", "MERA_GUARD_", "VLLM_API_KEY"))}
    env.update(
        HF_HOME=str(cache / "hf"),
        VLLM_CACHE_ROOT=str(cache / "vllm"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_HOST_IP="127.0.0.1",
        VLLM_NO_USAGE_STATS="1",
        MERA_SERVE_CACHE_DIR=str(DEV_CACHE),
    )
    env.update(extra or {})
    return env


class ServerProcess:
    def __init__(self, args: list[str], *, api_key: str | None = "test-key", env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.api_key = api_key
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.log_path = Path(tempfile.mkdtemp(prefix="mera-serve-")) / "server.log"
        self.proc: subprocess.Popen | None = None
        self.model = ""

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        extra = dict(self.extra_env)
        if self.api_key:
            extra["MERA_SERVE_API_KEY"] = self.api_key
        cmd = [sys.executable, "-m", "server.cli", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=child_env(extra), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url("/health"), timeout=2).status_code == 200:
                    self.model = self._served_model()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM the process group we started, then SIGKILL what is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # engine/worker children that outlived the API server
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def kill(self) -> None:
        """Crash it: SIGKILL the whole group, as a machine failure would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    # --- access ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url("/v1"), api_key=self.api_key or "none", max_retries=0, timeout=300)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url("/v1"), api_key=self.api_key or "none", max_retries=0, timeout=300)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _served_model(self) -> str:
        reply = httpx.get(self.url("/v1/models"), headers=self.headers, timeout=10)
        reply.raise_for_status()
        return reply.json()["data"][0]["id"]


def start_server(args: list[str], **kwargs) -> ServerProcess:
    return ServerProcess(args, **kwargs).start()
