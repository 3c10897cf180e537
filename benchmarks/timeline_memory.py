"""Timelines at scale (issue 24): peak memory of a whole segmented ``dfer run`` on a 60-minute recording against a
10 s clip, and the wall time per minute of video.

Each measurement is a fresh process, ``python -m pipeline.cli run CLIP --segments 4s --set run.workers=1`` (every
stage in that one process, so its ``ru_maxrss`` from ``os.wait4`` is the run's peak), on an empty cache, with the
embedded model (the default models are not on this machine: context and classify fall back to it, as a new user's
run does). Printed: peak RSS of each clip, their ratio (target <= 1.2, as for the faces stage), the segments scored,
and the wall time per minute of video, in total and per stage (from the run's stage lines).

Clips: made by code with PyAV (``tests/media.make_face_clip``: the astronaut photo, a real face, panned and zoomed
over the whole clip), ``--size`` and ``--fps`` (default 320x240 at 10 fps: a low-resolution recording), kept in
``--clips-dir`` (default ``$DFER_BENCH_CLIPS`` or ``~/.cache/dfer-bench/clips``) since a 60-minute one takes minutes
to make.

Run: ``python benchmarks/timeline_memory.py`` (10 s and 60 min), ``--minutes 5`` for a quicker look.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faces_memory import REPO, clip_for  # noqa: E402 - the same clips, kept in the same folder


STAGE_LINE = re.compile(r"^(\w+): (\d+) cached, (\d+) computed.*?\[([\d.]+) s\]", re.M)


def measure(clip: Path, work: Path, segments: str, until: str | None = None, fresh: bool = True,
            sets: tuple[str, ...] = ()) -> dict:
    """One segmented ``dfer run`` (``until``: ``--until``; ``fresh``: on an empty cache, else on the cache the last
    call left): peak RSS (MiB), wall seconds, seconds per stage, segments."""
    cache, out = work / "cache", work / "run"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(clip), "--out", str(out), "--cache", str(cache),
           "--segments", segments, "-q", "--set", "run.workers=1", "--set", "faces.device=cpu",
           *(["--until", until] if until else []), *[a for v in sets for a in ("--set", v)]]
    log_path = work.parent / "child.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{text[-3000:]}")
    stages = {m.group(1): float(m.group(4)) for m in STAGE_LINE.finditer(text)}
    timeline = out / "timeline.csv"
    rows = timeline.read_text().splitlines()[1:] if timeline.is_file() else []
    scored = sum(1 for r in rows if ",exact," in r or ",partial," in r)
    return {"rss_mib": usage.ru_maxrss / 1024, "seconds": seconds, "stages": stages, "segments": len(rows),
            "scored": scored}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="the long recording's length")
    ap.add_argument("--short", type=float, default=10.0, help="the reference clip's length in seconds")
    ap.add_argument("--segments", default="4s")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--split", action="store_true",
                    help="also measure each clip's per-file stages (--until expression, fresh cache) and its per-segment "
                         "stages alone (the same cache, faces and expression cached)")
    ap.add_argument("--heap", action="store_true",
                    help="also measure each clip with faces.flat_heap=false (glibc's own mmap threshold), "
                         "the run before and after the setting side by side")
    ap.add_argument("--clips-dir", default=os.environ.get("DFER_BENCH_CLIPS", str(Path.home() / ".cache" / "dfer-bench" / "clips")))
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    lengths = [args.short, args.minutes * 60]
    clips = {s: clip_for(Path(args.clips_dir), s, size, args.fps) for s in lengths}
    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-timeline-"))
    res = {}
    split = {}
    glibc = {}
    plain = ("faces.flat_heap=false",)
    try:
        for s in lengths:
            res[s] = measure(clips[s][0], tmp / "work", args.segments)
            r = res[s]
            print(f"{s:7g} s ({clips[s][1]} frames): peak RSS {r['rss_mib']:.1f} MiB, {r['seconds']:.1f} s, "
                  f"{r['segments']} segments ({r['scored']} scored); stages: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items()), flush=True)
            if args.heap:
                g = glibc[s] = measure(clips[s][0], tmp / "work", args.segments, sets=plain)
                print(f"{s:7g} s with {plain[0]}: peak RSS {g['rss_mib']:.1f} MiB, {g['seconds']:.1f} s, faces "
                      f"{g['stages'].get('faces', 0):.1f} s", flush=True)
            if args.split:  # where the memory goes: the per-file stages alone, then the per-segment ones alone
                a = measure(clips[s][0], tmp / "work", args.segments, until="expression")
                b = measure(clips[s][0], tmp / "work", args.segments, fresh=False)
                split[s] = (a, b)
                print(f"{s:7g} s: --until expression (faces, expression) peak RSS {a['rss_mib']:.1f} MiB; then the "
                      f"per-segment stages alone (faces and expression cached) {b['rss_mib']:.1f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    short, long = (res[s] for s in lengths)
    minutes = lengths[1] / 60
    print()
    print(f"=== segmented `dfer run --segments {args.segments}` (embedded model, run.workers=1, cpu), {size[0]}x{size[1]} "
          f"{args.fps} fps H.264 pan_zoom clips, fresh cache ===")
    ratio = long["rss_mib"] / short["rss_mib"]
    print(f"peak RSS: {lengths[0]:g} s {short['rss_mib']:.1f} MiB, {minutes:g} min {long['rss_mib']:.1f} MiB; "
          f"ratio {ratio:.3f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
    print(f"wall time per minute of video ({minutes:g} min clip): {long['seconds'] / minutes:.1f} s in total; per stage: "
          + ", ".join(f"{k} {v / minutes:.2f} s" for k, v in long["stages"].items()))
    per_seg = sum(v for k, v in long["stages"].items() if k in ("keyframes", "context", "classify")) / max(1, long["scored"])
    print(f"per-segment stages (keyframes, context, classify): {per_seg * 1000:.0f} ms per segment scored "
          f"({long['scored']} of {long['segments']})")
    if glibc:
        g0, g1 = (glibc[s] for s in lengths)
        print(f"with {plain[0]} (glibc's dynamic threshold): peak RSS {g0['rss_mib']:.1f} -> {g1['rss_mib']:.1f} MiB, "
              f"ratio {g1['rss_mib'] / g0['rss_mib']:.3f}; the default's faces stage time / glibc's: "
              f"{long['stages']['faces'] / g1['stages']['faces']:.2f} on the long clip, "
              f"{short['stages']['faces'] / g0['stages']['faces']:.2f} on the short one")
    if split:
        (a0, b0), (a1, b1) = (split[s] for s in lengths)
        print(f"per-file stages alone (--until expression): {a0['rss_mib']:.1f} -> {a1['rss_mib']:.1f} MiB, ratio "
              f"{a1['rss_mib'] / a0['rss_mib']:.3f}; per-segment stages alone (faces, expression cached): "
              f"{b0['rss_mib']:.1f} -> {b1['rss_mib']:.1f} MiB, ratio {b1['rss_mib'] / b0['rss_mib']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
