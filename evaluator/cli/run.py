"""`mera-eval run`: send every sample to the endpoint(s) and store the replies (resumable)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.client import RetryPolicy
from evaluator.data import DataSource
from evaluator.errors import UserError
from evaluator.http_policy import DEFAULT_MAX_REPLY_BYTES, MiB
from evaluator.requests import RequestOptions
from evaluator.runner import RunConfig, RunSummary, TaskProgress, run
from evaluator.schema import GenerationParams


def duration(text: str) -> float:
    """Seconds from `90s`, `10m`, `1.5h` or a bare number of minutes."""
    value = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 60)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 10m, 1h)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return seconds


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="Run tasks against OpenAI-compatible endpoints; resumable, every reply stored.",
                       description="Send every sample as MERA's harness would and store each reply in OUTPUT. "
                       "Re-running the same command resumes: finished samples are never sent twice.")
    p.add_argument("--endpoint", action="append", required=True, metavar="URL",
                   help="Server base URL, e.g. http://localhost:8000 (repeat for several servers).")
    p.add_argument("--output", "-o", type=Path, required=True, help="Run folder (store, exports, reports).")
    p.add_argument("--tasks", nargs="*", help="Tasks, lm-eval names, a board (image/audio/video) or all (default).")
    p.add_argument("--split", choices=["test", "shots"], default="test")
    p.add_argument("--data-dir", type=Path, help="Local hub snapshot (parquet); default: the Hugging Face Hub.")
    p.add_argument("--hf-token", default=os.environ.get("HF_TOKEN"), help="Token for gated datasets (env HF_TOKEN).")
    p.add_argument("--revision", help="Dataset revision on the hub.")
    p.add_argument("--limit", type=int, help="At most N samples per task (and domain).")
    p.add_argument("--concurrency", type=int, default=64, help="Requests in flight (default 64, for a GPU vLLM).")
    p.add_argument("--api-key", default=os.environ.get("MERA_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                   help="Bearer key (env MERA_API_KEY or OPENAI_API_KEY).")
    g = p.add_argument_group("generation (defaults: the leaderboard's)")
    g.add_argument("--model", default="", help="Model name to send (default: the endpoint's /v1/models).")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--max-tokens", type=int, default=10000)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--stop", nargs="*", default=["<eos>"])
    g.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON", help="More request fields.")
    m = p.add_argument_group("media options (off by default = as the leaderboard run)")
    m.add_argument("--audio-part", choices=["audio_url", "input_audio"], default="audio_url")
    m.add_argument("--image-max-side", type=int, help="Resize images to this longest side (PNG re-encode).")
    m.add_argument("--video-frames", type=int, help="Send N evenly sampled frames as images instead of the video.")
    m.add_argument("--system-prompt", help="Add a system message (the leaderboard run had none).")
    m.add_argument("--rutie-history", type=int, default=5, help="ruTiE dialogue history length (num_fewshot).")
    m.add_argument("--rutie-history-format", choices=["official", "formatted"], default="official",
                   help="Earlier ruTiE turns as the official code sends them (raw instruction) or formatted.")
    m.add_argument("--mm-limits", type=json.loads, default={"image": 6, "audio": 6, "video": 1}, metavar="JSON",
                   help="The server's --limit-mm-per-prompt, to report ruTiE turns that exceed it.")
    r = p.add_argument_group("failures")
    r.add_argument("--retry-errors", action="store_true", help="Re-send samples whose stored reply is an error.")
    r.add_argument("--rebuild-changed", action="store_true",
                   help="Re-send stored samples whose request would differ now (changed data or request "
                   "builder); without it such a resume is refused, naming the sample.")
    r.add_argument("--wait", type=duration, default=600.0, metavar="DURATION",
                   help="How long to wait for the endpoint to become ready, e.g. 30s, 10m, 1h (default 10m: a "
                   "server loading cached weights; 0 = do not wait).")
    r.add_argument("--max-reply-mb", type=float, default=DEFAULT_MAX_REPLY_BYTES / MiB, metavar="MB",
                   help="Refuse replies larger than this, unread (default 8; raise it for large logprobs).")
    r.add_argument("--max-attempts", type=int, default=6, help="Tries per request for transient errors.")
    r.add_argument("--timeout", type=json.loads, default={}, metavar="JSON",
                   help='Per-modality timeouts in seconds, e.g. \'{"video": 1800}\'.')
    r.add_argument("--max-error-rate", type=float, default=0.0,
                   help="Exit non-zero when failed/invalid samples exceed this share (default 0).")
    p.set_defaults(func=main)


def config_from_args(args) -> RunConfig:
    params = GenerationParams(model=args.model, temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed, stop=args.stop, extra_body=args.extra_body)
    options = RequestOptions(params=params, audio_part=args.audio_part, image_max_side=args.image_max_side,
                             video_frames=args.video_frames, system_prompt=args.system_prompt)
    return RunConfig(
        endpoints=args.endpoint, output=args.output, tasks=args.tasks, split=args.split,
        source=DataSource(data_dir=args.data_dir, token=args.hf_token, revision=args.revision),
        limit=args.limit, concurrency=args.concurrency, api_key=args.api_key, options=options,
        timeouts=args.timeout, retry=RetryPolicy(max_attempts=args.max_attempts,
                                                 max_reply_bytes=max(1, int(args.max_reply_mb * MiB))),
        retry_errors=args.retry_errors, rebuild_changed=args.rebuild_changed, wait_s=args.wait,
        rutie_history=args.rutie_history, rutie_history_format=args.rutie_history_format, mm_limits=args.mm_limits,
    )  # fmt: skip


def summary_table(summary: RunSummary) -> Table:
    table = Table(title=f"run {summary.output} — {summary.total} samples in {summary.seconds:.1f}s "
                  f"({summary.sent} sent, {summary.retries} retries)")
    for col in ("task", "done", "already stored", "errors"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for task, p in summary.progress.items():
        table.add_row(task, str(p.done), str(p.skipped), f"[red]{p.errors}[/red]" if p.errors else "0")
    return table


def main(args) -> int:
    console = Console(stderr=True)
    if args.system_prompt:
        console.print("[yellow]note: the leaderboard template renders a system message's content as a list "
                      "under vLLM (see README); the leaderboard run used none.[/yellow]")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        console.print(f"[red]mera-eval run: {exc}[/red]")
        return 2
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>6} /s  errors {task.fields[errors]}"), TimeElapsedColumn())
    error: UserError | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        rows: dict[str, int] = {}

        def on_progress(task: str, p: TaskProgress) -> None:
            if task not in rows:
                rows[task] = bar.add_task(task, total=p.total, rate="-", errors=0)
            row = rows[task]
            elapsed = bar.tasks[row].elapsed or 0
            rate = f"{p.done / elapsed:.1f}" if elapsed > 0 and p.done else "-"
            bar.update(row, completed=p.done + p.skipped, errors=p.errors, rate=rate)

        try:
            summary = asyncio.run(run(config, on_progress, on_notice=lambda message: bar.console.print(message)))
        except UserError as exc:
            error = exc
    if error is not None:  # after the bars' last frame, so it is the last line
        console.print(f"mera-eval run: {error.one_line()}", style="red", markup=False, highlight=False,
                      soft_wrap=True)  # one line, never wrapped: a log or `grep` gets it whole
        return error.exit_code
    Console().print(summary_table(summary))
    attempted = max(1, summary.total)
    if summary.errors / attempted > args.max_error_rate:
        console.print(f"[red]{summary.errors} of {summary.total} samples failed or were rejected; "
                      f"see {summary.output}/store.sqlite (re-run with --retry-errors to re-send them)[/red]")
        return 1
    return 0

