"""How fast `mera-eval run` gets answers back, and what the evaluator itself costs.

a) `server`: the same real `mera-serve --dev` (tiny Gemma-4 on vLLM CPU) and the same mixed samples
   (every task, synthetic sample data) run twice with `mera-eval run`: at the default concurrency and
   one request at a time (the reference run's protocol: lm-eval `local-chat-completions`, batch 1).
   A discarded warm-up pass first, so both measured passes see the same warm server (prefix and
   multimodal caches). Reports wall time, samples/s and the ratio, from one run.
b) `client`: the evaluator alone against an endpoint that answers instantly (tests/faults.py in its
   own process, so its CPU is not counted):
   - `ChatClient.send` alone, MERA-shaped requests pre-built, in this process;
   - the whole `mera-eval run` pipeline (parquet streaming, media encoding in worker threads,
     client, each reply committed as it arrives) as a child process.
   Reports samples/s, CPU ms per sample (user+sys) and peak RSS.

    .venv/bin/python bench/evaluator_throughput.py [server|client|all] [--per-split 8] [--max-tokens 16]
        [--endpoint URL --api-key KEY]   # part a against a running server instead of starting one

Prints one JSON object per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.store import RunStore  # noqa: E402
from tests.server_process import child_env, free_port, start_server  # noqa: E402

DEFAULT_CONCURRENCY = 64  # mera-eval run's default


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, load avg {load:.1f} at start, Python {platform.python_version()}"


def eval_run(out: Path, endpoint: str, data_dir: Path, *extra: str, api_key: str | None = None) -> dict:
    """One `mera-eval run` as a child process; wall time and that child's own CPU and peak RSS."""
    cmd = [sys.executable, "-m", "evaluator.cli", "run", "--endpoint", endpoint, "--data-dir", str(data_dir),
           "--output", str(out), *extra]
    if api_key:
        cmd += ["--api-key", api_key]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Peak RSS from the child's own VmHWM (ru_maxrss of a forked child starts at the parent's RSS).
    peak_kb = [0]
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()  # drain stderr: the progress display writes a lot
    while proc.poll() is None:
        peak_kb[0] = max(peak_kb[0], vm_kb(proc.pid))
        time.sleep(0.05)
    wall = time.monotonic() - started
    reader.join()
    stderr = b"".join(stderr_chunks)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # only this child was reaped in between
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    code = proc.returncode
    if code != 0:
        raise RuntimeError(f"mera-eval run exited {code}: {stderr.decode(errors='replace')[-3000:]}")
    store = RunStore.open_existing(out)
    counts = store.status_counts()
    store.close()
    n = sum(c.get("ok", 0) for c in counts.values())
    errors = sum(v for c in counts.values() for k, v in c.items() if k != "ok")
    return {"samples": n, "errors": errors, "wall_s": round(wall, 2), "samples_per_s": round(n / wall, 2),
            "cpu_s": round(cpu_s, 2), "cpu_ms_per_sample": round(cpu_s * 1000 / max(n, 1), 2),
            "peak_rss_mb": round(peak_kb[0] / 1024, 1)}


def vm_kb(pid: int, field: str = "VmHWM:") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def sample_data(tmp: Path, per_split: int) -> Path:
    from evaluator.sample_data import write_sample_data

    return write_sample_data(tmp / "data", per_split=per_split)


# --- a) default concurrency vs one at a time, real dev server -------------------------------------------
def bench_server(args, tmp: Path) -> list[dict]:
    data = sample_data(tmp, args.per_split)
    server = None
    endpoint, api_key = args.endpoint, args.api_key
    if not endpoint:
        server = start_server(["--dev"])
        endpoint, api_key = server.base_url, server.api_key
    common = ("--max-tokens", str(args.max_tokens), "--rutie-history", "2")
    try:
        eval_run(tmp / "warmup", endpoint, data, *common, "--concurrency", str(DEFAULT_CONCURRENCY), api_key=api_key)
        serial = eval_run(tmp / "c1", endpoint, data, *common, "--concurrency", "1", api_key=api_key)
        parallel = eval_run(tmp / "cdefault", endpoint, data, *common, "--concurrency", str(DEFAULT_CONCURRENCY),
                            api_key=api_key)
    finally:
        if server:
            server.stop()
    results = [{"bench": "dev server, concurrency 1 (reference protocol)", **serial},
               {"bench": f"dev server, concurrency {DEFAULT_CONCURRENCY} (default)", **parallel}]
    results.append({"bench": "speed-up (default / one at a time)",
                    "ratio": round(serial["wall_s"] / parallel["wall_s"], 2)})
    return results


# --- b) the evaluator alone against an instant endpoint -----------------------------------------------
def echo_server() -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults", "--port", str(port)], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise TimeoutError("echo server did not start")


async def client_alone(url: str, data: Path, n: int, concurrency: int) -> dict:
    """ChatClient.send only: one pre-built MERA request per task/domain, cycled n times."""
    from evaluator.client import ChatClient
    from evaluator.data import DataSource, iter_samples
    from evaluator.registry import TASKS
    from evaluator.requests import RequestOptions, build_request

    options = RequestOptions()
    source = DataSource(data_dir=data)
    requests = [build_request(s, options) for spec in TASKS.values() if not spec.dialogue
                for s in iter_samples(spec, "test", source, limit=1)]
    payload_kb = sum(len(json.dumps(r.payload())) for r in requests) / len(requests) / 1024
    async with ChatClient([url], concurrency=concurrency) as client:
        await client.send(requests[0])  # connection set up
        rss0 = vm_kb(os.getpid(), "VmRSS:")
        cpu0, wall0 = time.process_time(), time.monotonic()
        outcomes: list = []

        async def worker(start: int) -> None:  # as the runner does: one sender per slot
            for i in range(start, n, concurrency):
                outcomes.append(await client.send(requests[i % len(requests)]))

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    ok = sum(o.status == "ok" for o in outcomes)
    return {"bench": f"ChatClient.send alone, concurrency {concurrency}", "samples": ok, "errors": n - ok,
            "mean_request_kb": round(payload_kb, 1), "wall_s": round(wall, 2), "samples_per_s": round(ok / wall, 1),
            "cpu_ms_per_sample": round(cpu * 1000 / n, 3),
            "rss_mb_before_after": f"{rss0 / 1024:.0f} -> {vm_kb(os.getpid(), 'VmRSS:') / 1024:.0f}",
            "peak_rss_mb": round(vm_kb(os.getpid(), "VmHWM:") / 1024, 1)}


def bench_client(args, tmp: Path) -> list[dict]:
    data = sample_data(tmp, args.per_split)
    proc, url = echo_server()
    try:
        alone = asyncio.run(client_alone(url, data, args.requests, DEFAULT_CONCURRENCY))
        run_args = (tmp / "echo", url, data, "--concurrency", str(DEFAULT_CONCURRENCY), "--rutie-history", "2")
        pipeline = eval_run(*run_args)
        # The same command again sends nothing: its CPU is the fixed cost (start-up, imports, data scan).
        fixed = eval_run(*run_args)
    finally:
        proc.terminate()
        proc.wait(30)
    marginal = (pipeline["cpu_s"] - fixed["cpu_s"]) * 1000 / pipeline["samples"]
    return [alone,
            {"bench": f"mera-eval run pipeline vs instant endpoint, concurrency {DEFAULT_CONCURRENCY}", **pipeline,
             "marginal_cpu_ms_per_sample": round(marginal, 2)},
            {"bench": "same command re-run (all stored, 0 sent): fixed cost", **fixed, "samples": 0,
             "samples_per_s": "", "cpu_ms_per_sample": ""}]


def markdown(results: list[dict]) -> str:
    cols = ["bench", "samples", "errors", "wall_s", "samples_per_s", "cpu_s", "cpu_ms_per_sample",
            "marginal_cpu_ms_per_sample", "rss_mb_before_after", "peak_rss_mb", "ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=["server", "client", "all"], default="all")
    parser.add_argument("--per-split", type=int, default=8, help="Sample-data rows per task/domain/split "
                        "(8 -> 256 test samples over all 18 tasks).")
    parser.add_argument("--max-tokens", type=int, default=16, help="Same for both passes (the tiny model rambles).")
    parser.add_argument("--requests", type=int, default=3000, help="Requests for the client-alone measurement.")
    parser.add_argument("--endpoint", help="Use this running server for part a instead of starting mera-serve --dev.")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="minutes")}),
          flush=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mera-bench-") as tmp:
        for part, fn in (("client", bench_client), ("server", bench_server)):
            if args.part in (part, "all"):
                for r in fn(args, Path(tmp) / part):
                    print(json.dumps(r), flush=True)
                    results.append(r)
    print(markdown(results))


if __name__ == "__main__":
    main()
