"""`--video-frames N`: peak memory and CPU of choosing N frames from real-sized H.264 clips.

a) per clip, each in a fresh child process: `media.video_frames_png(data, N)` on 5 / 30 / 60 s clips at
   720p (30 fps) and 1080p (25 fps), reporting the child's peak RSS (VmHWM), CPU and wall time; and, for the
   5 s clips, the earlier approach (every frame decoded to a PIL image, then N picked) for comparison;
b) a whole `mera-eval run --tasks CommonVideoQA --video-frames 6` over 9 samples of the 60 s 1080p clip
   against an endpoint that answers instantly (tests/faults.py), at the default concurrency.

    .venv/bin/python bench/video_frames.py [--work /tmp/mera-video-bench] [--frames 8] [--keep]

Clips are generated here with libx264 (PyAV), a moving noise texture so that they are not trivially small;
minimal on purpose: the project's generator of real-world media lives elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIPS = [(5, 720), (30, 720), (60, 720), (5, 1080), (30, 1080), (60, 1080)]


def make_clip(path: Path, seconds: int, height: int) -> Path:
    import av
    import numpy as np

    if path.exists():
        return path
    width, fps = (1280, 30) if height == 720 else (1920, 25)
    rng = np.random.default_rng(height)
    texture = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            frame = texture[:, (i * 8) % width:(i * 8) % width + width]
            frame = (frame // 4 + (i % 192)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def child(path: str, count: int, mode: str) -> None:
    """Runs in its own process: one frame selection, then its own peak RSS and CPU."""
    import io

    from evaluator import media

    data = Path(path).read_bytes()
    started = time.monotonic()
    if mode == "all-frames":  # the earlier approach: every frame as a PIL image, then N picked
        import av
        import numpy as np

        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_image() for f in container.decode(video=0)]
        picks = np.linspace(0, len(frames) - 1, num=count).round().astype(int)
        pngs = []
        for i in picks:
            buf = io.BytesIO()
            frames[int(i)].save(buf, format="PNG")
            pngs.append(buf.getvalue())
    else:
        pngs = media.video_frames_png(data, count)
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": round(hwm / 1024), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "wall_s": round(wall, 2), "video_mb": round(len(data) / 2**20, 1),
                      "png_mb": round(sum(map(len, pngs)) / 2**20, 1), "images": len(pngs)}))


def run_child(path: Path, count: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(count), mode], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_snapshot(root: Path, clip: Path, rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evaluator.registry import get_task
    from evaluator.sample_data import _features_schema

    data = clip.read_bytes()
    spec = get_task("CommonVideoQA")
    table = pa.Table.from_pylist([{
        "instruction": "Посмотрите видео.\n<video>\n{question}\nA. {option_a}\nB. {option_b}\nОтвет:",
        "inputs": {"video": {"bytes": data, "path": f"v{i}.mp4"}, "question": "Что происходит?",
                   "option_a": "одно", "option_b": "другое"},
        "outputs": "A", "meta": {"id": i},
    } for i in range(rows)])  # fmt: skip
    path = root / spec.hub_id / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(_features_schema(spec, table)), path, row_group_size=10)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mera-video-bench"))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    from bench.evaluator_throughput import echo_server, eval_run, machine

    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for seconds, height in CLIPS:
        clip = make_clip(args.work / f"clip_{seconds}s_{height}p.mp4", seconds, height)
        modes = ["streamed", "all-frames"] if seconds == 5 else ["streamed"]
        for mode in modes:
            row = {"clip": f"{seconds} s {height}p", "mode": mode, "frames": args.frames,
                   **run_child(clip, args.frames, mode)}
            results.append(row)
            print(json.dumps(row), flush=True)
    data = write_snapshot(args.work / "data", args.work / "clip_60s_1080p.mp4", rows=9)
    server, url = echo_server()
    try:
        out = args.work / "run"
        shutil.rmtree(out, ignore_errors=True)
        run = eval_run(out, url, data, "--tasks", "CommonVideoQA", "--video-frames", "6")
    finally:
        server.terminate()
        server.wait(10)
    run.update(bench="mera-eval run, 9 x 60 s 1080p, --video-frames 6, concurrency 64", machine=machine(),
               load_after=round(os.getloadavg()[0], 1))
    results.append(run)
    print(json.dumps(run), flush=True)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
