"""The main job on the embedded default, no GPU: `make demo`.

Writes the synthetic MERA Multi sample data, starts `mera-serve --dev` (tiny random Gemma-4 on
vLLM CPU) on a free loopback port, runs `mera-eval run` over all 18 datasets, scores and reports
the run, and stops the server. The tiny model's answers are random bytes, so the scores are ~0:
the point is the whole path, for real.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = ROOT / ".cache" / "mera-multi" / "sample-data"
RUN = ROOT / "runs" / "demo"
KEY = "demo-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    env = dict(os.environ, HF_HOME=str(ROOT / ".cache" / "hf"), VLLM_CACHE_ROOT=str(ROOT / ".cache" / "vllm"),
               HF_HUB_OFFLINE="1", VLLM_HOST_IP="127.0.0.1", MERA_SERVE_API_KEY=KEY, MERA_API_KEY=KEY)
    step(f"sample data -> {DATA}")
    subprocess.run([BIN / "mera-eval", "sample-data", DATA], check=True, env=env)

    port = free_port()
    step(f"mera-serve --dev on 127.0.0.1:{port} (tiny Gemma-4 on vLLM CPU; about a minute to start)")
    log = open(ROOT / ".cache" / "mera-multi" / "demo-server.log", "w")
    server = subprocess.Popen([BIN / "mera-serve", "--dev", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                print(f"server exited with {server.returncode}; see {log.name}")
                return 1
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"server not healthy after 600 s; see {log.name}")
                return 1
            time.sleep(1)

        step(f"mera-eval run -> {RUN}")
        run = subprocess.run([BIN / "mera-eval", "run", "--endpoint", f"http://127.0.0.1:{port}", "--data-dir", DATA,
                              "--output", RUN, "--max-tokens", "32", "--concurrency", "8", "--rutie-history", "2"],
                             env=env)
        if run.returncode != 0:
            return run.returncode
        for command in (["score", RUN], ["report", RUN]):
            step("mera-eval " + command[0])
            done = subprocess.run([BIN / "mera-eval", *command], env=env)
            if done.returncode != 0:
                return done.returncode
        print(f"\nreports: {RUN}/report.md, {RUN}/report.html, {RUN}/results.json")
        return 0
    finally:
        step("stopping the server")
        os.killpg(os.getpgid(server.pid), signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(server.pid), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
