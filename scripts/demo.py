"""The main job on the embedded default, no GPU: `make demo`.

1. writes the synthetic MERA Multi sample data (all 18 datasets, real-sized media);
2. starts `mera-serve --dev` (tiny random Gemma-4 on vLLM CPU) on a free loopback port and runs
   `mera-eval run` over all 18 datasets on the shots split, which carries answers for every dataset,
   so each one gets a local score; then stops the server;
3. starts the dev judge (`mera-serve --judge --dev`, a tiny classifier) and runs `mera-eval score`
   with it: JudgeScore for every dataset that has it, the one table, and report.md / report.html /
   results.json in runs/demo; then stops the judge.

One server at a time, so the demo needs the memory of one. A second `make demo` resumes the earlier
demo run (only missing samples are sent) and says so; `DEMO_FRESH=1 make demo` starts over. The
tiny model answers random tokens, so the scores are near zero: the point is the whole path, for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CACHE = ROOT / ".cache" / "mera-multi"
DATA = CACHE / "sample-data"
RUN = ROOT / "runs" / "demo"
KEY = "demo-key"
RUN_FLAGS = ["--split", "shots", "--max-tokens", "32", "--concurrency", "8", "--rutie-history", "2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def same_settings(run: Path) -> bool:
    """Was the demo run in `run` made with this demo's settings (an older demo ran the test split)?"""
    try:
        config = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return True  # nothing to compare: `mera-eval run` itself refuses a folder it cannot read
    return config.get("split") == "shots" and config.get("params", {}).get("max_tokens") == 32


def stored_replies(run: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run / 'store.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM replies").fetchone()[0]
    except sqlite3.Error:
        return 0


class Server:
    """A `mera-serve` child on a free port, stopped with its whole process group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = CACHE / f"demo-{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([BIN / "mera-serve", *args, "--host", "127.0.0.1", "--port", str(self.port)],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 600) -> str | None:
        """The served model name once /health answers; None (and why, printed) if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                print(f"server exited with {self.proc.returncode}; see {self.log_path}")
                return None
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    models = httpx.get(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
                    return models.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(1)
        print(f"server not healthy after {timeout:.0f} s; see {self.log_path}")
        return None

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(os.getpgid(self.proc.pid), signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            self.proc.wait(10)


def mera_eval(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "mera-eval", *map(str, args)], env=env)


def main() -> int:
    env = dict(os.environ, HF_HOME=str(ROOT / ".cache" / "hf"), VLLM_CACHE_ROOT=str(ROOT / ".cache" / "vllm"),
               HF_HUB_OFFLINE="1", VLLM_HOST_IP="127.0.0.1", MERA_SERVE_API_KEY=KEY, MERA_API_KEY=KEY)
    if RUN.exists() and not same_settings(RUN):
        print(f"{RUN} holds a demo run made with other settings (an older demo); starting fresh", flush=True)
        shutil.rmtree(RUN)
    if os.environ.get("DEMO_FRESH") and RUN.exists():
        shutil.rmtree(RUN)
    earlier = stored_replies(RUN)
    if earlier:
        print(f"resuming the earlier demo run in {RUN} ({earlier} replies stored; only missing samples are sent). "
              "Start over with: DEMO_FRESH=1 make demo", flush=True)
    else:
        print(f"a fresh demo run in {RUN}", flush=True)

    step(f"sample data -> {DATA}")
    if mera_eval("sample-data", DATA, env=env).returncode != 0:
        return 1

    step("mera-serve --dev: tiny Gemma-4 on vLLM CPU (about a minute to start)")
    server = Server("server", ["--dev"], env)
    try:
        if server.wait() is None:
            return 1
        step(f"mera-eval run: all 18 datasets, shots split (answers for every dataset) -> {RUN}")
        run = mera_eval("run", "--endpoint", server.url, "--data-dir", DATA, "--output", RUN, *RUN_FLAGS, env=env)
        if run.returncode != 0:
            return run.returncode
    finally:
        server.stop()

    step("mera-serve --judge --dev: the JudgeScore classifier, tiny, on vLLM CPU")
    judge = Server("judge", ["--judge", "--dev"], env)
    try:
        model = judge.wait()
        if model is None:
            return 1
        step("mera-eval score, with the judge")
        score = mera_eval("score", RUN, "--judge-url", judge.url, "--judge-model", model, "--judge-api-key", KEY,
                          env=env)
        if score.returncode != 0:
            return score.returncode
    finally:
        judge.stop()
    print(f"\nreports: {RUN}/report.md, {RUN}/report.html, {RUN}/results.json "
          f"(again any time: .venv/bin/mera-eval report {RUN.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
