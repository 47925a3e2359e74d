"""`mera-eval run`: send every sample to the endpoint(s) and store the replies (resumable)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.client import RetryPolicy
from evaluator.data import DataError, DataSource
from evaluator.limits import MediaLimitError
from evaluator.registry import UnknownTaskError
from evaluator.requests import RequestOptions
from evaluator.runner import RunConfig, RunSummary, TaskProgress, run
from evaluator.schema import GenerationParams
from evaluator.store import StoreError


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
    g = p.add_argument_group("generation (default: each task's settings in the registry, see `mera-eval tasks`; "
                             "a flag given here overrides them for every task)")
    g.add_argument("--model", default="", help="Model name to send (default: the endpoint's /v1/models).")
    g.add_argument("--temperature", type=float)
    g.add_argument("--max-tokens", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", nargs="*")
    g.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON", help="More request fields.")
    m = p.add_argument_group("media options (off by default = as the leaderboard run)")
    m.add_argument("--audio-part", choices=["audio_url", "input_audio"], default="audio_url")
    m.add_argument("--audio-channels", choices=["mono", "stored"], default="mono",
                   help="mono: mixed down as the official path sends it (default); stored: every channel kept.")
    m.add_argument("--image-max-side", type=int, help="Resize images to this longest side (PNG re-encode).")
    m.add_argument("--video-frames", type=int,
                   help="Send N uniformly sampled frames as images instead of the video (N <= the image limit).")
    m.add_argument("--system-prompt", help="Add a system message (the leaderboard run had none).")
    m.add_argument("--rutie-history", type=int, default=5, help="ruTiE dialogue history length (num_fewshot).")
    m.add_argument("--rutie-history-format", choices=["official", "formatted"], default="official",
                   help="Earlier ruTiE turns as the official code sends them (raw instruction) or formatted.")
    m.add_argument("--mm-limits", type=json.loads, default={"image": 6, "audio": 6, "video": 1}, metavar="JSON",
                   help="The server's --limit-mm-per-prompt: requests over it are refused here, not sent.")
    r = p.add_argument_group("failures")
    r.add_argument("--retry-errors", action="store_true", help="Re-send samples whose stored reply is an error.")
    r.add_argument("--max-attempts", type=int, default=6, help="Tries per request for transient errors.")
    r.add_argument("--timeout", type=json.loads, default={}, metavar="JSON",
                   help='Per-modality timeouts in seconds, e.g. \'{"video": 1800}\'.')
    r.add_argument("--max-error-rate", type=float, default=0.0,
                   help="Exit non-zero when failed/invalid samples exceed this share (default 0).")
    p.set_defaults(func=main)


def config_from_args(args) -> RunConfig:
    given = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens),
                               ("seed", args.seed), ("stop", args.stop)) if v is not None}
    params = GenerationParams(model=args.model, extra_body=args.extra_body, **given)  # only given flags override
    options = RequestOptions(params=params, audio_part=args.audio_part, audio_channels=args.audio_channels,
                             image_max_side=args.image_max_side, video_frames=args.video_frames,
                             system_prompt=args.system_prompt)
    return RunConfig(
        endpoints=args.endpoint, output=args.output, tasks=args.tasks, split=args.split,
        source=DataSource(data_dir=args.data_dir, token=args.hf_token, revision=args.revision),
        limit=args.limit, concurrency=args.concurrency, api_key=args.api_key, options=options,
        timeouts=args.timeout, retry=RetryPolicy(max_attempts=args.max_attempts), retry_errors=args.retry_errors,
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
            summary = asyncio.run(run(config, on_progress))
        except MediaLimitError as exc:
            console.print(f"[red]mera-eval run: {exc.one_line()}[/red]", highlight=False, soft_wrap=True)
            return exc.exit_code
        except (StoreError, DataError, UnknownTaskError, ConnectionError) as exc:
            console.print(f"[red]mera-eval run: {exc}[/red]")
            return 2
    Console().print(summary_table(summary))
    attempted = max(1, summary.total)
    if summary.errors / attempted > args.max_error_rate:
        console.print(f"[red]{summary.errors} of {summary.total} samples failed or were rejected; "
                      f"see {summary.output}/store.sqlite (re-run with --retry-errors to re-send them)[/red]")
        return 1
    return 0

