"""The per-clip stages (faces, keyframes) at several ``run.workers`` values: clips/s and memory per worker.

    python benchmarks/workers_scaling.py [--clips 12] [--workers 1,2,3,4,auto] [--rounds 2] [--size 640x360]

Each measurement is a fresh ``python -m pipeline.cli run CLIPS --until keyframes --set run.workers=W`` process on an
empty cache (``faces.device=cpu``): the runner's own stage times (worker start-up included, as a user pays it) give
clips/s per stage. While it runs, the process tree is sampled every 0.1 s from ``/proc``: the largest peak resident
memory of one worker (``VmHWM``) and the peak of the whole tree's resident memory. Rounds are interleaved (the order
of the worker counts reversed every other round), medians printed, with the speed-up over one worker.

Clips: code-generated (``tests/media.py``), ``--size`` at 25 fps, 3 s, the astronaut face with a 0.4 s mouth
opening, as in ``benchmarks/gpu_throughput.py``. On a machine of N cores, up to N workers should scale; more than N
only adds start-up and memory (``run.workers=auto`` takes N, bounded by memory: ``pipeline/engine/workers.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
med = statistics.median
STAGE_LINE = re.compile(r"^(faces|keyframes): .*\[([0-9.]+) s\](?:; (.*))?$", re.M)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the resident memory of process ``root`` and its descendants until ``stop`` is set."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.total_peak, self.per_pid = 0, {}

    def run(self) -> None:
        while not self.stop.is_set():
            tree, todo, pids = _children(), [self.root], []
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += tree.get(pid, [])
            total = 0
            for pid in pids:
                total += _status_kib(pid, "VmRSS")
                self.per_pid[pid] = max(self.per_pid.get(pid, 0), _status_kib(pid, "VmHWM"))
            self.total_peak = max(self.total_peak, total)
            time.sleep(0.1)


def measure(clips: Path, workers: str, work: Path) -> dict:
    out, cache = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(clips), "--out", str(out / "run"), "--cache", str(cache), "-q",
           "--until", "keyframes", "--set", f"run.workers={workers}", "--set", "faces.device=cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    mem.start()
    _, err = proc.communicate()
    mem.stop.set()
    mem.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    stages = {m.group(1): (float(m.group(2)), m.group(3) or "") for m in STAGE_LINE.finditer(err)}
    # the workers: children of the run that grew past 200 MiB (not the resource tracker); none: the run's own process
    workers_peak = [v for pid, v in mem.per_pid.items() if pid != proc.pid and v > 200 * 1024]
    return {"faces_s": stages["faces"][0], "keyframes_s": stages["keyframes"][0], "note": stages["faces"][1],
            "worker_peak_gib": max(workers_peak, default=mem.per_pid.get(proc.pid, 0)) / 2**20,
            "tree_peak_gib": mem.total_peak / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--workers", default="1,2,3,4,auto", help="run.workers values")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", default="640x360", help="frame size WxH")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)

    from tests.media import make_face_clip

    values = [v.strip() for v in args.workers.split(",") if v.strip()]
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="dfer-bench-workers-") as tmp:
        work = Path(tmp)
        clips = work / "clips"
        clips.mkdir()
        for i in range(args.clips):
            make_face_clip(clips / f"c{i:03d}.mp4", size=(width, height), seconds=args.seconds, seed=i, motion="static",
                           expression=(args.seconds * 0.5, args.seconds * 0.5 + 0.4))
        runs: dict[str, list[dict]] = {v: [] for v in values}
        for r in range(args.rounds):
            for v in values if r % 2 == 0 else values[::-1]:
                runs[v].append(measure(clips, v, work))
                x = runs[v][-1]
                print(f"round {r + 1}/{args.rounds} workers={v}: faces {args.clips / x['faces_s']:.2f} clips/s, keyframes "
                      f"{args.clips / x['keyframes_s']:.2f} clips/s, worker peak {x['worker_peak_gib']:.2f} GiB, tree peak "
                      f"{x['tree_peak_gib']:.2f} GiB {x['note']}", flush=True)

    from pipeline.engine.workers import usable_cores

    print(f"\n{args.clips} clips of {args.seconds:g} s at {args.size}, 25 fps; {usable_cores()} usable CPU cores "
          f"(machine: {os.cpu_count()}, load average {os.getloadavg()[1]:.1f} over 5 min); faces on the CPU; medians of "
          f"{args.rounds} rounds; run.workers=1 runs in the run's own process (torch with all cores' threads)")
    print(f"{'run.workers':>11s} {'faces clips/s':>14s} {'x 1 worker':>10s} {'keyframes clips/s':>18s} {'x 1 worker':>10s} "
          f"{'worker peak GiB':>16s} {'tree peak GiB':>14s}")
    base = runs[values[0]]
    for v in values:
        rs = runs[v]
        f = med(args.clips / x["faces_s"] for x in rs)
        k = med(args.clips / x["keyframes_s"] for x in rs)
        f1 = med(b["faces_s"] / x["faces_s"] for x, b in zip(rs, base))
        k1 = med(b["keyframes_s"] / x["keyframes_s"] for x, b in zip(rs, base))
        print(f"{v:>11s} {f:14.2f} {f1:10.2f} {k:18.2f} {k1:10.2f} {med(x['worker_peak_gib'] for x in rs):16.2f} "
              f"{med(x['tree_peak_gib'] for x in rs):14.2f}  {rs[0]['note']}")
    print(f"(speed-ups against run.workers={values[0]}, medians of the per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
