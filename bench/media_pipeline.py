"""What real-world-sized media cost the evaluator: `mera-eval run` over the generated snapshot (phone photos,
table screenshots, 11-25 s 44.1/48 kHz clips, 30-60 s 720p/1080p H.264 and HEVC videos) against an endpoint
that answers instantly (tests/faults.py in its own process), at 1x and 10x the rows.

Per task group (images, audio, video, ruTiE dialogues) and scale: samples, wall time, the child's peak RSS
(VmHWM) and CPU ms per sample (all-in, and marginal: minus the same command re-run with everything stored,
which sends nothing). Peak RSS must not grow with the rows; where it does, the table shows it.

    .venv/bin/python bench/media_pipeline.py [--rows 2] [--scale 10] [--groups image audio video rutie]
        [--video-seconds S] [-- <extra mera-eval run arguments, e.g. --video-frames 6>]

Media come from the media cache ($MERA_MEDIA_CACHE, default ~/.cache/mera-multi/media; the first run renders
them, a few minutes). Prints one JSON object per measurement and a markdown table at the end.
Shares its process measurement and echo endpoint with bench/evaluator_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.evaluator_throughput import echo_server, eval_run, machine  # noqa: E402
from evaluator.registry import TASKS  # noqa: E402

GROUPS = {
    "image": [s.name for s in TASKS.values() if s.modality == "image" and not s.dialogue],
    "audio": [s.name for s in TASKS.values() if s.modality == "audio" and not s.dialogue],
    "video": [s.name for s in TASKS.values() if s.modality == "video"],
    "rutie": [s.name for s in TASKS.values() if s.dialogue],
}
CONCURRENCY = 64  # mera-eval run's default


def snapshot(tmp: Path, rows: int, video_seconds: float | None, row_group_mb: float) -> tuple[Path, float]:
    from evaluator.sample_data import write_sample_data

    started = time.monotonic()
    out = write_sample_data(tmp / f"data-{rows}", per_split=rows, video_seconds=video_seconds,
                            row_group_mb=row_group_mb)
    return out, time.monotonic() - started


def bench(args) -> list[dict]:
    results: list[dict] = []
    proc, url = echo_server()
    try:
        with tempfile.TemporaryDirectory(prefix="mera-media-bench-") as tmp_name:
            tmp = Path(tmp_name)
            for rows in (args.rows, args.rows * args.scale):
                data, write_s = snapshot(tmp, rows, args.video_seconds, args.row_group_mb)
                size_mb = sum(p.stat().st_size for p in data.rglob("*.parquet")) / 1e6
                print(json.dumps({"snapshot_rows_per_split": rows, "parquet_mb": round(size_mb, 1),
                                  "write_s": round(write_s, 1)}), flush=True)
                for group in args.groups:
                    out = tmp / f"run-{group}-{rows}"
                    common = (url, data, "--tasks", *GROUPS[group], "--concurrency", str(CONCURRENCY),
                              "--rutie-history", "2", *args.extra)
                    measured = eval_run(out, *common)
                    fixed = eval_run(out, *common)  # everything stored: start-up, imports, data scan
                    n = measured["samples"]
                    result = {"group": group, "rows_per_split": rows, **measured,
                              "marginal_cpu_ms_per_sample": round((measured["cpu_s"] - fixed["cpu_s"]) * 1000 / n, 1),
                              "fixed_cpu_s": fixed["cpu_s"]}
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        proc.terminate()
        proc.wait(30)
    return results


def markdown(results: list[dict]) -> str:
    cols = ["group", "rows_per_split", "samples", "errors", "wall_s", "cpu_ms_per_sample",
            "marginal_cpu_ms_per_sample", "fixed_cpu_s", "peak_rss_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2, help="Rows per task/domain/split at 1x (default 2).")
    parser.add_argument("--scale", type=int, default=10, help="The larger snapshot has this many times the rows.")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--video-seconds", type=float, help="Cut the 30-60 s videos to this length (same codecs).")
    parser.add_argument("--row-group-mb", type=float, default=10.0,
                        help="Parquet row groups of at most this many MB (the hub: 100; default 10, so that the "
                        "small snapshots hold several groups, as the real splits do at 100 MB).")
    parser.add_argument("extra", nargs="*", help="After `--`: more `mera-eval run` arguments for every run.")
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="minutes")}), flush=True)
    print(markdown(bench(args)))


if __name__ == "__main__":
    main()
