"""Side by side: `mera-eval run` against stock lm-eval and lmms-eval on one `mera-serve --dev`.

The same MERA-shaped prompts (ruCommonVQA's real hub templates: `--text` rows with the `<image>` placeholder
removed, `--images` rows with a PNG, one image row in five), greedy, `--max-tokens` tokens, no stop strings,
sent by
- `mera-eval run` (the one chosen with `--mera-eval`: a venv folder or a `mera-eval` binary, so the same
  benchmark measures main and a branch);
- lm-eval 0.4.13, model `local-chat-completions` (aiohttp; `tokenizer_backend=None`: no tokenizer download);
- lmms-eval 0.7.3, model `openai` (openai-python in threads; it never loads a tokenizer).
Both peers read a small custom task that this script writes into its work folder: lm-eval's task returns
the exact message list mera-eval built (its `fewshot_context` yields lm-eval's own `JsonChatStr`); lmms-eval's
`doc_to_messages` names the same PNG files, which lmms-eval re-encodes; the script checks that its re-encoding
gives back the same bytes, so every tool sends the same messages. The peers are installed with plain pip into
their own venvs under `.cache/peers/` (never into the project), HF_HUB_OFFLINE=1.

One server for everything, prefix caching and the multimodal processor cache off, so no pass is served from
an earlier pass's cache. A warm-up pass per tool, then `--rounds` rounds, the order of the passes rotated each
round. For every pass:
- send phase: from the first chat request's arrival to the last response, at the server: the guard's JSON
  access log gives each request's duration and ends its line as the response completes; this script reads
  the server's output through a pipe and timestamps each line as it arrives (a reader thread outside the
  request path, so it cannot slow a client down);
- wall time (launch to exit), start-up (launch to the first request's arrival), client CPU s (user+sys of the
  whole process tree), peak RSS of the process tree (sampled every 50 ms, at least the root's VmHWM);
- every answer, compared with the first pass's: greedy decoding should give the same text in every pass;
- at the server: the ramp (first arrival to the arrival that fills every slot) and the mean time a request
  spent there (the same prompts on the same engine: a higher mean is a client that keeps it busy less well).

    /work/tools/server-slot .venv/bin/python bench/peers.py [--mera-eval PATH] [--rounds 8]
        [--passes mera-eval@64,lm-eval@64,lmms-eval@64] [--text 200] [--images 50] [--max-tokens 16]

Prints one JSON object per pass and a markdown table (medians and ranges) at the end; everything is also
written to `<work>/results.jsonl`. Run by hand, not in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_process import child_env, free_port  # noqa: E402

PEERS_DIR = ROOT / ".cache" / "peers"
# lmms-eval 0.7.3 imports filelock._api, which filelock 4 (resolved by pip today) no longer has.
PEER_PACKAGES = {"lm-eval": ("lm-eval[api]==0.4.13",), "lmms-eval": ("lmms-eval==0.7.3", "filelock<4")}
TASK = "ruCommonVQA"  # a public image task; its templates carry one <image> placeholder
PEER_TASK = "mera_peer_bench"
SEED = 1234  # mera-eval's and lm-eval's default payload seed; irrelevant at temperature 0 but sent the same
# vLLM flags: no pass may be answered from an earlier pass's prefix or multimodal cache.
NO_CACHES = ["--no-enable-prefix-caching", "--mm-processor-cache-gb", "0"]


# --- pure parts (tests/test_bench_peers.py) ----------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    tool: str  # mera-eval | mera-eval:LABEL (another mera-eval, --also-mera-eval) | lm-eval | lmms-eval
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.tool}@{self.concurrency}"


TOOLS = ("mera-eval", "lm-eval", "lmms-eval")


def parse_passes(text: str) -> list[Pass]:
    """`mera-eval@64,lm-eval@64` -> passes; a tool without @N runs at 64."""
    passes = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        tool, _, conc = item.partition("@")
        if tool not in TOOLS and not (tool.startswith("mera-eval:") and len(tool) > len("mera-eval:")):
            raise argparse.ArgumentTypeError(f"unknown tool {tool!r} in --passes (choose from {', '.join(TOOLS)})")
        if conc and not (conc.isdigit() and int(conc) > 0):
            raise argparse.ArgumentTypeError(f"concurrency in {item!r} must be a positive integer")
        passes.append(Pass(tool, int(conc) if conc else 64))
    if not passes:
        raise argparse.ArgumentTypeError("--passes names no pass")
    if len(set(passes)) != len(passes):
        raise argparse.ArgumentTypeError("--passes names a pass twice")
    return passes


def round_order(passes: list[Pass], round_index: int) -> list[Pass]:
    """Round r starts with pass r mod n: over n rounds each pass runs once in each position."""
    k = round_index % len(passes)
    return passes[k:] + passes[:k]


def send_phase(events: list[dict], since: float, until: float) -> tuple[float, float, int] | None:
    """(first arrival, last response, count) of the chat requests whose response ended in [since, until];
    each event has `t` (when its access line arrived) and the guard's `duration_ms`."""
    chosen = [e for e in events if e["route"].endswith("/chat/completions") and since <= e["t"] <= until]
    if not chosen:
        return None
    first = min(e["t"] - e["duration_ms"] / 1000 for e in chosen)
    return first, max(e["t"] for e in chosen), len(chosen)


def at_the_server(events: list[dict], since: float, until: float, concurrency: int) -> dict[str, float] | None:
    """How the server saw one pass: `ramp_s`, from the first chat request's arrival to the arrival that
    fills `concurrency` slots (how long the client took to load the server), and `latency_ms`, the mean
    time a request spent at the server (same prompts and engine: a higher mean means the requests kept
    the engine busy less well, e.g. arriving staggered after each burst of answers)."""
    chosen = [e for e in events if e["route"].endswith("/chat/completions") and since <= e["t"] <= until]
    if not chosen:
        return None
    arrivals = sorted(e["t"] - e["duration_ms"] / 1000 for e in chosen)
    return {"ramp_s": round(arrivals[min(concurrency, len(arrivals)) - 1] - arrivals[0], 3),
            "latency_ms": round(statistics.mean(e["duration_ms"] for e in chosen), 1)}


def compare_answers(reference: dict[str, str | None], answers: dict[str, str | None]) -> dict:
    """How one pass's answers differ from the reference pass's, by sample key. lmms-eval hands a task each reply
    `.strip()`ped (lmms_eval/api/task.py), so differences that vanish under str.strip() are counted apart."""
    missing = sorted(k for k in reference if k not in answers)
    extra = sorted(k for k in answers if k not in reference)
    raw = [k for k in sorted(reference) if k in answers and answers[k] != reference[k]]
    differ = [k for k in raw if (answers[k] or "").strip() != (reference[k] or "").strip()]
    same = not (missing or extra)
    return {"identical": same and not raw, "same_after_strip": same and not differ, "missing": len(missing),
            "extra": len(extra), "different": len(differ), "whitespace_only": len(raw) - len(differ),
            "examples": [{"key": k, "reference": reference[k], "this": answers[k]} for k in differ[:3]]}


def summarize(values: list[float]) -> str:
    """`median (min-max)`, the table's cell."""
    if not values:
        return ""
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


# --- peers' venvs -------------------------------------------------------------------------------------------
def peer_python(tool: str) -> Path:
    return PEERS_DIR / tool / "bin" / "python"


def install_peers(tools: set[str]) -> dict[str, str]:
    """Each peer in its own venv under .cache/peers/ (created once, pip from the package registry)."""
    versions = {}
    for tool in sorted(tools - {"mera-eval"}):
        venv = PEERS_DIR / tool
        specs = PEER_PACKAGES[tool]
        marker = venv / "bench-installed.txt"
        if not (marker.exists() and marker.read_text() == "\n".join(specs)):
            print(f"installing {' '.join(specs)} into {venv} (minutes, once)", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(peer_python(tool)), "-m", "pip", "install", "-q", *specs], check=True)
            marker.write_text("\n".join(specs))
        probe = [str(peer_python(tool)), "-c",
                 f"import {tool.replace('-', '_')}, importlib.metadata as m; print(m.version({tool!r}))"]
        versions[tool] = subprocess.run(probe, capture_output=True, text=True, check=True,
                                        env=peer_env(Path("/tmp"))).stdout.strip()
    return versions


def peer_env(work: Path) -> dict[str, str]:
    env = child_env()
    env.update(HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf-datasets"), OPENAI_API_KEY="EMPTY",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


# --- the prompts ----------------------------------------------------------------------------------------------
def bench_image(i: int) -> bytes:
    """Even i: a 1280x960 photo with sensor noise (about 2.5 MB of PNG, as ruTiE-Image's and the table
    screenshots' PNGs are); odd i: a 480x320 CLEVR-like scene. Written as PIL writes a PNG, so lmms-eval's
    PNG re-encoding gives back the same bytes."""
    import io

    import numpy as np
    from PIL import Image

    from evaluator import synthetic_media as sm

    photo = i % 2 == 0
    spec = (sm.ImageSpec(content="photo", width=1280, height=960, format="PNG", variant=i) if photo
            else sm.ImageSpec(content="shapes", width=480, height=320, format="PNG", variant=i))
    with Image.open(io.BytesIO(sm.render(spec))) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    if photo:
        noise = np.random.default_rng(i).normal(0, 6, pixels.shape)
        pixels = np.clip(pixels + noise, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def prepare(work: Path, n_text: int, n_images: int) -> Path:
    """Hub-format snapshot for mera-eval, mera-eval's own requests for it, and both peers' task folders."""
    from evaluator import sample_data
    from evaluator.data import DataSource, iter_samples
    from evaluator.registry import get_task
    from evaluator.requests import RequestOptions, build_request

    spec = get_task(TASK)
    templates = json.loads((sample_data.TEMPLATES_DIR / f"{TASK}.json").read_text(encoding="utf-8"))["templates"]
    rng = random.Random(0)
    images_dir = work / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows, image_paths = [], {}
    total = n_text + n_images
    image_every = max(1, total // max(n_images, 1))
    n_img = 0
    for i in range(total):
        with_image = n_img < n_images and (i % image_every == image_every - 1 or total - i <= n_images - n_img)
        template = rng.choice(templates)
        question = f"{rng.choice(sample_data.TEXT_VALUES['question'])} (вопрос {i + 1})"
        image = None
        if with_image:
            data = bench_image(n_img)
            path = images_dir / f"{i:04d}.png"
            path.write_bytes(data)
            image = {"bytes": data, "path": path.name}
            image_paths[11 + i] = str(path)
            n_img += 1
        else:
            template = re.sub(r"[ \t]*<image>", "", template)
        rows.append({"instruction": template, "inputs": {"image": image, "question": question},
                     "outputs": [], "meta": {"id": 11 + i, "categories": {"synthetic": "bench/peers.py"}}})
    snapshot = work / "data"
    sample_data._write_parquet(spec, rows, snapshot / spec.hub_id / "data" / "test-00000-of-00001.parquet")

    prompts, docs = [], []
    for sample in iter_samples(spec, "test", DataSource(data_dir=snapshot)):
        request = build_request(sample, RequestOptions())
        lmms = []
        for message in request.messages:
            parts = []
            for part in message["content"]:
                if part["type"] == "text":
                    parts.append(part)
                else:  # the same bytes, as a file lmms-eval opens and re-encodes
                    parts.append({"type": "image", "url": image_paths[sample.id]})
            lmms.append({"role": message["role"], "content": parts})
        prompts.append({"key": sample.key, "messages": request.messages, "lmms_messages": lmms})
        docs.append({"key": sample.key})
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(work / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    write_peer_tasks(work)
    return snapshot


PEER_TASK_COMMON = '''\
import json
import os

_MESSAGES = None


def _messages(field):
    global _MESSAGES
    if _MESSAGES is None:
        _MESSAGES = {}
        with open(os.environ["MERA_PEERS_PROMPTS"], encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                _MESSAGES[row["key"]] = row[field]
    return _MESSAGES


def process_results(doc, results):
    answer = results[0]
    answer = getattr(answer, "text", answer)  # lmms-eval 0.7 hands GenerationResult objects
    with open(os.environ["MERA_PEERS_ANSWERS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": doc["key"], "answer": answer}, ensure_ascii=False) + "\\n")
    return {"answered": 1.0}
'''

LM_EVAL_TASK = PEER_TASK_COMMON + '''

from lm_eval.api.task import ConfigurableTask
from lm_eval.models.api_models import JsonChatStr


class MeraPeerTask(ConfigurableTask):
    """The exact messages mera-eval built, as lm-eval's own chat-request string."""

    def __init__(self, config=None, **kwargs):
        # lm-eval hands a `class:` task its whole YAML, the `class` key included, which TaskConfig refuses.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def fewshot_context(self, doc, *args, **kwargs):
        return JsonChatStr(json.dumps(_messages("messages")[doc["key"]], ensure_ascii=False))
'''

LMMS_EVAL_TASK = PEER_TASK_COMMON + '''

def doc_to_messages(doc, *args, **kwargs):
    return _messages("lmms_messages")[doc["key"]]


def doc_to_visual(doc):
    return []


def doc_to_text(doc, *args, **kwargs):
    return ""
'''


def _write_task(folder: Path, code: str, yaml: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "peer_task.py").write_text(code, encoding="utf-8")
    (folder / f"{PEER_TASK}.yaml").write_text(yaml, encoding="utf-8")


def write_peer_tasks(work: Path) -> None:
    docs = str(work / "docs.jsonl")
    metric = "metric_list:\n  - metric: answered\n    aggregation: mean\n    higher_is_better: true\n"
    _write_task(work / "lm-eval-task", LM_EVAL_TASK,
        f"task: {PEER_TASK}\nclass: !function peer_task.MeraPeerTask\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\noutput_type: generate_until\n"
        f"doc_to_text: key\ndoc_to_target: key\n"
        f"generation_kwargs:\n  until: []\n  max_gen_toks: {{max_tokens}}\n  do_sample: false\n  temperature: 0\n"
        f"process_results: !function peer_task.process_results\n{metric}")
    _write_task(work / "lmms-eval-task", LMMS_EVAL_TASK,
        f"task: {PEER_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\n"
        f"test_split: test\noutput_type: generate_until\n"
        f"doc_to_visual: !function peer_task.doc_to_visual\ndoc_to_text: !function peer_task.doc_to_text\n"
        f"doc_to_messages: !function peer_task.doc_to_messages\ndoc_to_target: key\n"
        f"generation_kwargs:\n  max_new_tokens: {{max_tokens}}\n  temperature: 0\n  do_sample: false\n"
        f"  seed: {SEED}\nprocess_results: !function peer_task.process_results\n{metric}")


def set_max_tokens(work: Path, max_tokens: int) -> None:
    for folder in ("lm-eval-task", "lmms-eval-task"):
        path = work / folder / f"{PEER_TASK}.yaml"
        path.write_text(path.read_text(encoding="utf-8").replace("{max_tokens}", str(max_tokens)), encoding="utf-8")


LMMS_CHECK = '''\
import base64, json, sys
from lmms_eval.protocol import ChatMessages
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    row = json.loads(line)
    sent = ChatMessages(messages=row["lmms_messages"]).to_openai_messages()
    if sent != row["messages"]:
        print("lmms-eval would send other messages for", row["key"]); sys.exit(1)
    n += 1
print(n)
'''


def check_lmms_messages(work: Path) -> None:
    """lmms-eval's own message builder, run on every prompt, must give mera-eval's messages exactly."""
    out = subprocess.run([str(peer_python("lmms-eval")), "-c", LMMS_CHECK, str(work / "prompts.jsonl")],
                         capture_output=True, text=True, env=peer_env(work))
    if out.returncode != 0:
        raise SystemExit(f"lmms-eval message check failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")


# --- the server -------------------------------------------------------------------------------------------
class Server:
    """`mera-serve --dev` with its output read through a pipe; each access-log line timestamped on arrival."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "server.log"
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.model = ""

    def start(self, timeout: float = 900) -> None:
        import httpx

        cmd = [sys.executable, "-m", "server.cli", "--dev", "--host", "127.0.0.1", "--port", str(self.port),
               "--extra-args", json.dumps(NO_CACHES)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, bufsize=0)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"mera-serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.model = httpx.get(self.url + "/v1/models", timeout=10).json()["data"][0]["id"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise SystemExit(f"mera-serve not healthy after {timeout:.0f} s; see {self.log_path}")

    def _read(self) -> None:
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                t = time.time()
                log.write(line)
                if line.startswith(b'{"event":"access"'):
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    event["t"] = t
                    with self.lock:
                        self.events.append(event)

    def chat_events(self) -> list[dict]:
        with self.lock:
            return list(self.events)

    def config_line(self) -> str:
        """vLLM's resolved engine config, to show the caches are off."""
        text = self.log_path.read_text(errors="replace")
        hits = re.findall(r"'?(enable_prefix_caching|mm_processor_cache_gb)'?(?:=|: )([\w.]+)", text)
        return ", ".join(sorted({f"{k}={v}" for k, v in hits}))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)


# --- one pass -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeraEval:
    """How to start one mera-eval: its argv prefix, and the checkout to put on PYTHONPATH (a checkout folder)."""

    argv: tuple[str, ...]
    checkout: Path | None = None

    @property
    def where(self) -> Path:
        return self.checkout or Path(self.argv[0]).parent


def resolve_mera_eval(value: str) -> MeraEval:
    """A venv folder, a `mera-eval` binary, or a checkout with its .venv (run as `python -m evaluator.cli` with
    the checkout on PYTHONPATH: works even where the venv's editable install is stale)."""
    path = Path(value).expanduser().resolve()
    if (path / "evaluator" / "cli").is_dir() and (path / ".venv" / "bin" / "python").is_file():
        return MeraEval((str(path / ".venv" / "bin" / "python"), "-m", "evaluator.cli"), path)
    if path.is_dir():
        path = path / "bin" / "mera-eval"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"--mera-eval {value}: no mera-eval there "
                                         "(give a venv folder, the mera-eval binary or a checkout with .venv)")
    return MeraEval((str(path),))


def mera_eval_env(mera: MeraEval, env: dict[str, str]) -> dict[str, str]:
    if mera.checkout:
        env = {**env, "PYTHONPATH": str(mera.checkout)}
    return env


def command(p: Pass, args, server: Server, out: Path, answers: Path) -> list[str]:
    if p.tool.startswith("mera-eval"):
        return [*args.mera_evals[p.tool].argv, "run", "--endpoint", server.url, "--data-dir", str(args.work / "data"),
                "--output", str(out), "--tasks", TASK, "--concurrency", str(p.concurrency),
                "--max-tokens", str(args.max_tokens), "--temperature", "0", "--seed", str(SEED), "--stop"]
    if p.tool == "lm-eval":
        model_args = (f"model={server.model},base_url={server.url}/v1/chat/completions,"
                      f"num_concurrent={p.concurrency},max_retries=1,timeout=600,tokenizer_backend=None")
        return [str(PEERS_DIR / "lm-eval" / "bin" / "lm_eval"), "--model", "local-chat-completions",
                "--model_args", model_args, "--tasks", PEER_TASK, "--include_path", str(args.work / "lm-eval-task"),
                "--apply_chat_template", "--batch_size", "1"]
    model_args = (f"model_version={server.model},base_url={server.url}/v1,api_key=EMPTY,"
                  f"num_concurrent={p.concurrency},max_retries=1,timeout=600")
    return [str(peer_python("lmms-eval")), "-m", "lmms_eval", "--model", "openai", "--model_args", model_args,
            "--tasks", PEER_TASK, "--include_path", str(args.work / "lmms-eval-task"), "--batch_size", "1"]


def tree_rss_kb(root: int) -> int:
    import psutil

    try:
        proc = psutil.Process(root)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total // 1024


def vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def read_answers(p: Pass, out: Path, answers: Path) -> dict[str, str | None]:
    if p.tool.startswith("mera-eval"):
        if not (out / "store.sqlite").is_file():
            return {}
        con = sqlite3.connect(out / "store.sqlite")
        try:
            rows = con.execute("SELECT sample_key, status, body FROM replies").fetchall()
        finally:
            con.close()
        return {key: (json.loads(body).get("content") if status == "ok" else f"[{status}]")
                for key, status, body in rows}
    result = {}
    if answers.exists():
        for line in answers.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            result[row["key"]] = row["answer"]
    return result


def run_pass(p: Pass, args, server: Server, label: str, expected: int) -> tuple[dict, dict[str, str | None]]:
    out = args.work / "runs" / f"{label}-{p.tool}-{p.concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    answers = out / "answers.jsonl"
    env = peer_env(args.work)
    env.update(MERA_PEERS_PROMPTS=str(args.work / "prompts.jsonl"), MERA_PEERS_ANSWERS=str(answers))
    cmd = command(p, args, server, out, answers)
    if p.tool.startswith("mera-eval"):
        env = mera_eval_env(args.mera_evals[p.tool], env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    with open(out / "client.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, tree_rss_kb(proc.pid), vm_hwm_kb(proc.pid))
            time.sleep(0.05)
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    deadline = time.monotonic() + 5  # the last access lines may still be in the pipe
    phase = send_phase(server.chat_events(), launched, ended + 5)
    while (phase is None or phase[2] < expected) and time.monotonic() < deadline:
        time.sleep(0.1)
        phase = send_phase(server.chat_events(), launched, ended + 5)
    got = read_answers(p, out, answers)
    result = {"pass": p.name, "round": label, "exit": proc.returncode, "wall_s": round(ended - launched, 2),
              "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "answers": len(got),
              "requests_at_server": phase[2] if phase else 0}
    if phase:
        result.update(startup_s=round(phase[0] - launched, 2), send_s=round(phase[1] - phase[0], 2),
                      **(at_the_server(server.chat_events(), launched, ended + 5, p.concurrency) or {}))
    if proc.returncode != 0 or len(got) != expected:
        tail = (out / "client.log").read_text(errors="replace")[-3000:]
        result["error"] = f"exit {proc.returncode}, {len(got)}/{expected} answers; client log tail:\n{tail}"
    return result, got


# --- report -------------------------------------------------------------------------------------------------
def table(results: list[dict], passes: list[Pass]) -> str:
    cols = ["pass", "rounds", "wall s", "start-up s", "send phase s", "ramp s", "server latency ms", "client CPU s",
            "peak RSS MB", "answers identical to the first pass"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for p in passes:
        rs = [r for r in results if r["pass"] == p.name and r["round"] != "warmup" and "error" not in r]
        compared = [r["compare"] for r in results if r["pass"] == p.name and "compare" in r]
        identical = f"{sum(c['identical'] for c in compared)}/{len(compared)} passes"
        if any(c["same_after_strip"] and not c["identical"] for c in compared):
            identical += (f" exact, {sum(c['same_after_strip'] for c in compared)}/{len(compared)} after str.strip() "
                          f"(up to {max(c['whitespace_only'] for c in compared)} replies differ only in whitespace)")
        lines.append("| " + " | ".join([
            p.name, str(len(rs)), summarize([r["wall_s"] for r in rs]), summarize([r["startup_s"] for r in rs]),
            summarize([r["send_s"] for r in rs]), summarize([r.get("ramp_s", 0.0) for r in rs]),
            summarize([r.get("latency_ms", 0.0) for r in rs]), summarize([r["cpu_s"] for r in rs]),
            summarize([r["peak_rss_mb"] for r in rs]), identical]) + " |")
    return "\n".join(lines)


def git_commit(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return out.stdout.strip()[:80] or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mera-eval", type=resolve_mera_eval, default=str(ROOT / ".venv"),
                        help="The mera-eval under test: a venv folder or a mera-eval binary (default: this checkout's "
                        ".venv).")
    parser.add_argument("--also-mera-eval", action="append", default=[], metavar="LABEL=PATH",
                        help="Another mera-eval (venv or binary) to run in the same rounds as pass mera-eval:LABEL, "
                        "e.g. a branch: --also-mera-eval transport=../wt-runtime/.venv --passes "
                        "mera-eval@64,mera-eval:transport@64,lm-eval@64,lmms-eval@64.")
    parser.add_argument("--passes", type=parse_passes, default=parse_passes("mera-eval@64,lm-eval@64,lmms-eval@64"),
                        help="Comma-separated tool@concurrency (tools: mera-eval, lm-eval, lmms-eval).")
    parser.add_argument("--rounds", type=int, default=8, help="Measured rounds after the warm-up pass of each tool.")
    parser.add_argument("--text", type=int, default=200, help="Text-only prompts.")
    parser.add_argument("--images", type=int, default=50, help="Prompts with one PNG each.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "peers" / "work",
                        help="Work folder (snapshot, prompts, peer tasks, run folders, server log, results).")
    args = parser.parse_args()
    args.work = args.work.resolve()  # the clients run in their own folders

    load_start = os.getloadavg()
    marker = args.work / ".mera-peers-bench"
    if args.work.exists() and any(args.work.iterdir()) and not marker.exists():
        raise SystemExit(f"--work {args.work} is not empty and is not this benchmark's work folder; name another")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    marker.touch()
    args.mera_evals = {"mera-eval": args.mera_eval}
    for item in args.also_mera_eval:
        label, sep, path = item.partition("=")
        if not (sep and label):
            parser.error(f"--also-mera-eval {item!r}: give LABEL=PATH")
        try:
            args.mera_evals[f"mera-eval:{label}"] = resolve_mera_eval(path)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    unknown = sorted({p.tool for p in args.passes if p.tool.startswith("mera-eval") and p.tool not in args.mera_evals})
    if unknown:
        parser.error(f"--passes names {', '.join(unknown)} but no --also-mera-eval gives its path")
    versions = install_peers({p.tool for p in args.passes if not p.tool.startswith("mera-eval")})
    prepare(args.work, args.text, args.images)
    set_max_tokens(args.work, args.max_tokens)
    if any(p.tool == "lmms-eval" for p in args.passes):
        check_lmms_messages(args.work)
    expected = args.text + args.images
    header = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "machine": platform.processor() or
              platform.machine(), "cores": os.cpu_count(), "load_avg_at_start": [round(x, 1) for x in load_start],
              "bench_commit": git_commit(ROOT), "peers": versions,
              "mera_evals": {tool: {"run": " ".join(m.argv), "commit": git_commit(m.where),
                                    "version": subprocess.run([*m.argv, "--version"], capture_output=True, text=True, cwd=m.where,
                                                              env=mera_eval_env(m, dict(os.environ))).stdout.strip()}
                             for tool, m in args.mera_evals.items()},
              "prompts": {"text": args.text, "image": args.images}, "max_tokens": args.max_tokens}
    print(json.dumps(header), flush=True)
    results_file = open(args.work / "results.jsonl", "w", encoding="utf-8")
    results_file.write(json.dumps(header) + "\n")

    server = Server(args.work)
    results: list[dict] = []
    reference: dict[str, str | None] | None = None
    try:
        server.start()
        header["server"] = server.config_line()
        print(json.dumps({"server": server.url, "model": server.model, "vllm": header["server"]}), flush=True)
        schedule = [("warmup", args.passes)] + [(f"r{r + 1}", round_order(args.passes, r)) for r in range(args.rounds)]
        for label, order in schedule:
            for p in order:
                result, got = run_pass(p, args, server, label, expected)
                if reference is None and "error" not in result:
                    reference, result["reference"] = got, True
                if reference is not None:
                    result["compare"] = compare_answers(reference, got)
                print(json.dumps(result, ensure_ascii=False), flush=True)
                results_file.write(json.dumps(result, ensure_ascii=False) + "\n")
                results_file.flush()
                results.append(result)
    finally:
        server.stop()
    footer = {"load_avg_at_end": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps(footer))
    results_file.write(json.dumps(footer) + "\n")
    results_file.close()
    print(table(results, args.passes))


if __name__ == "__main__":
    main()
