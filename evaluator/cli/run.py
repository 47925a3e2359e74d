"""`mera-eval run`: send every sample to the endpoint(s) and store the replies (resumable).

Order: arguments (while parsing), then every local check (tasks, data, output folder), then the
network; a mistake is reported before anything waits for an endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from rich.console import Console

from evaluator.checks import preflight
from evaluator.cli import INTERRUPTED
from evaluator.cli.args import (
    concurrency_arg,
    duration_arg,
    json_object,
    mm_limits,
    non_negative_int,
    positive_float,
    positive_int,
    share,
    timeouts,
)
from evaluator.cli.progress import ConsoleLog, make_progress
from evaluator.cli.tables import make_console
from evaluator.client import RetryPolicy
from evaluator.data import DataSource
from evaluator.failures import group_failures
from evaluator.http_policy import DEFAULT_MAX_REPLY_BYTES, MiB
from evaluator.report import failure_line
from evaluator.requests import RequestOptions
from evaluator.runinfo import duration
from evaluator.runner import RunConfig, RunInterrupted, RunSummary, run
from evaluator.schema import GenerationParams
from evaluator.store import STORE_FILE, RunStore

SPLIT_HELP = ("test: the leaderboard's split (answers hidden for private datasets; `submit` packs it); "
              "shots: MERA's dev split, with answers for every dataset (local scores for all 18, a dev estimate "
              "not comparable to the leaderboard). Default test.")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="Run tasks against OpenAI-compatible endpoints; resumable, every reply stored.",
                       description="Send every sample as MERA's harness would and store each reply in OUTPUT. "
                       "Re-running the same command resumes: finished samples are never sent twice.")
    p.add_argument("--endpoint", action="append", required=True, metavar="URL",
                   help="Server base URL, e.g. http://localhost:8000 (repeat for several servers).")
    p.add_argument("--output", "-o", type=Path, required=True, help="Run folder (store, exports, reports).")
    p.add_argument("--tasks", nargs="*", help="Datasets (as `mera-eval tasks` names them, or lm-eval names), a board "
                   "(image/Images, audio, video) or all (default).")
    p.add_argument("--split", choices=["test", "shots"], default="test", help=SPLIT_HELP)
    p.add_argument("--data-dir", type=Path, help="Local hub snapshot (parquet); default: the Hugging Face Hub.")
    p.add_argument("--hf-token", default=os.environ.get("HF_TOKEN"), help="Token for gated datasets (env HF_TOKEN).")
    p.add_argument("--revision", help="Dataset revision on the hub.")
    p.add_argument("--limit", type=positive_int, help="At most N samples per task (and domain).")
    p.add_argument("--concurrency", type=concurrency_arg, default=None, metavar="N|auto",
                   help="Requests in flight. Default auto: from the server's vLLM /metrics (its KV cache; 64 on a CPU "
                   "engine or an endpoint without vLLM metrics, up to 1024 on a large GPU); the choice is printed.")
    p.add_argument("--api-key", default=os.environ.get("MERA_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                   help="Bearer key (env MERA_API_KEY or OPENAI_API_KEY).")
    g = p.add_argument_group("generation (default: each task's settings in the registry, see `mera-eval tasks`; "
                             "a flag given here overrides them for every task)")
    g.add_argument("--model", default="", help="Model name to send (default: the endpoint's /v1/models).")
    g.add_argument("--temperature", type=float, help="Default: each task's (mera-eval tasks).")
    g.add_argument("--max-tokens", type=positive_int, help="Default: each task's (10000 on the leaderboard).")
    g.add_argument("--seed", type=int, help="Default: each task's (1234 on the leaderboard).")
    g.add_argument("--stop", nargs="*", help="Default: each task's (<eos> on the leaderboard).")
    g.add_argument("--extra-body", type=json_object('{"top_p": 0.9}'), default={}, metavar="JSON",
                   help='More request fields, a JSON object, e.g. \'{"top_p": 0.9}\'.')
    m = p.add_argument_group("media options (off by default = as the leaderboard run)")
    m.add_argument("--audio-part", choices=["audio_url", "input_audio"], default="audio_url")
    m.add_argument("--audio-channels", choices=["mono", "stored"], default="mono",
                   help="mono: mixed down as the official path sends it (default); stored: every channel kept.")
    m.add_argument("--image-max-side", type=positive_int, help="Resize images to this longest side (PNG re-encode).")
    m.add_argument("--video-frames", type=positive_int,
                   help="Send N uniformly sampled frames as images instead of the video (N <= the image limit).")
    m.add_argument("--system-prompt", help="Add a system message (the leaderboard run had none).")
    m.add_argument("--rutie-history", type=non_negative_int, default=5, help="ruTiE dialogue history length (num_fewshot).")
    m.add_argument("--rutie-history-format", choices=["official", "formatted"], default="official",
                   help="Earlier ruTiE turns as the official code sends them (raw instruction) or formatted.")
    m.add_argument("--mm-limits", type=mm_limits, default={"image": 6, "audio": 6, "video": 1}, metavar="JSON",
                   help="The server's --limit-mm-per-prompt: requests over it are refused here, not sent.")
    r = p.add_argument_group("failures")
    r.add_argument("--retry-errors", action="store_true", help="Re-send samples whose stored reply is an error.")
    r.add_argument("--rebuild-changed", action="store_true",
                   help="Re-send stored samples whose request would differ now (changed data or request "
                   "builder); without it such a resume is refused, naming the sample.")
    r.add_argument("--wait", type=duration_arg, default=600.0, metavar="DURATION",
                   help="How long to wait for the endpoint to become ready, e.g. 30s, 10m, 1h (default 10m: a "
                   "server loading cached weights; 0 = do not wait).")
    r.add_argument("--max-reply-mb", type=positive_float, default=DEFAULT_MAX_REPLY_BYTES / MiB, metavar="MB",
                   help="Refuse replies larger than this, unread (default 8; raise it for large logprobs).")
    r.add_argument("--max-attempts", type=positive_int, default=6, help="Tries per request for transient errors.")
    r.add_argument("--timeout", type=timeouts, default={}, metavar="JSON",
                   help='Per-modality timeouts in seconds, e.g. \'{"video": 1800}\'.')
    r.add_argument("--max-error-rate", type=share, default=0.0,
                   help="Exit non-zero when failed/invalid samples exceed this share (0 to 1, default 0).")
    o = p.add_argument_group("output")
    o.add_argument("--progress-interval", type=positive_float, default=15.0, metavar="SECONDS",
                   help="Off a terminal (a pipe, a log file): seconds between progress lines (default 15).")
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
        timeouts=args.timeout, retry=RetryPolicy(max_attempts=args.max_attempts,
                                                 max_reply_bytes=max(1, int(args.max_reply_mb * MiB))),
        retry_errors=args.retry_errors, rebuild_changed=args.rebuild_changed, wait_s=args.wait,
        rutie_history=args.rutie_history, rutie_history_format=args.rutie_history_format, mm_limits=args.mm_limits,
    )  # fmt: skip


def _stored(output: Path) -> tuple[int, int] | None:
    """(replies stored, of which failures) in a run folder, or None if there is no store yet."""
    if not (output / STORE_FILE).is_file():
        return None
    store = RunStore.open_existing(output)
    try:
        counts = store.status_counts()
    finally:
        store.close()
    replies = sum(n for task in counts.values() for status, n in task.items() if status != "missing")
    failures = sum(n for task in counts.values() for status, n in task.items() if status not in ("ok", "missing"))
    return replies, failures


def interrupted(output: Path) -> str:
    stored = _stored(output)
    if stored is None:
        return "interrupted before anything was stored"
    replies, failures = stored
    failed = f" ({failures} of them failures)" if failures else ""
    return (f"interrupted; {replies} replies are stored in {output}{failed}; "
            "run the same command again to resume (stored replies are not sent again)")


async def _run(config: RunConfig, display) -> RunSummary:
    """The run, with a ticker that keeps progress lines coming while nothing completes."""

    async def ticker() -> None:
        while True:
            await asyncio.sleep(min(display.interval, 1.0))
            display.tick()

    beat = asyncio.create_task(ticker())
    try:
        return await run(config, display.update, on_notice=display.notice)
    finally:
        beat.cancel()


def report_failures(summary: RunSummary, console: Console) -> tuple[int, int]:
    """Print the run's failures by reason; (fixable by a retry, not fixable)."""
    store = RunStore.open_existing(summary.output)
    try:
        groups = group_failures(r for r in store.replies() if r.status != "ok")
    finally:
        store.close()
    groups = [g for g in groups if g.tasks.keys() & summary.progress.keys()]
    for group in groups:
        console.print(f"  • {failure_line(group)}", style="red")
    retry = sum(g.count for g in groups if g.retry in ("yes", "maybe", "after a fix"))
    return retry, sum(g.count for g in groups) - retry


def main(args) -> int:
    err = make_console(stderr=True)
    out = make_console()
    if args.system_prompt:
        err.print("note: the leaderboard template renders a system message's content as a list under vLLM "
                  "(see README); the leaderboard run used none.", style="yellow")
    config = config_from_args(args)  # a bad value: one line (pydantic's errors, by flag)
    preflight(config)  # tasks, data, output folder: before anything waits for the network
    progress_console = make_console(stderr=True)
    display = make_progress(progress_console, args.progress_interval)
    log = logging.getLogger("evaluator")
    handler = ConsoleLog(progress_console)
    log.addHandler(handler)
    try:
        with display:
            summary = asyncio.run(_run(config, display))
    except (RunInterrupted, KeyboardInterrupt):  # the store is consistent: say so, and how to go on
        err.print(f"mera-eval run: {interrupted(config.output)}")
        return INTERRUPTED
    finally:
        log.removeHandler(handler)
    stored = summary.total - summary.sent
    in_flight = f", concurrency {summary.concurrency.value}" if summary.concurrency else ""
    out.print(f"{summary.output}: {summary.total} samples ({summary.sent} sent, {stored} already stored, "
              f"{summary.retries} retries{in_flight}) in {duration(summary.seconds)}")
    if summary.errors:
        out.print(f"{summary.errors} of {summary.total} samples failed:")
        retry, final = report_failures(summary, out)
        if summary.errors / max(1, summary.total) > args.max_error_rate:
            parts = [f"{retry} can be re-sent with --retry-errors"] if retry else []
            parts += [f"{final} will fail again as they are"] if final else []
            err.print(f"mera-eval run: {summary.errors} of {summary.total} samples failed ({'; '.join(parts)}); "
                      f"`mera-eval score {summary.output}` reports them by reason", style="red")
            return 1
    out.print(f"next: mera-eval score {summary.output}")
    return 0
