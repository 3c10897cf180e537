"""Peak memory of a whole ``dfer run --until keyframes`` process on clips of 10 s to 60 min, as ratios to the 10 s clip.

Each measurement is a fresh process, ``python -m pipeline.cli run CLIP --until keyframes --set run.workers=1``
(so decoding, face detection, tracking, crops and keyframes all run in that one process), on an empty cache;
its peak resident memory is the ``ru_maxrss`` that ``os.wait4`` reports for it. The same command runs for the
code *before* the change (``--before REF``, default :data:`baseline_tree.BEFORE`, unpacked with ``git archive``
and imported through ``PYTHONPATH``) and for the working tree (*after*), one process at a time, interleaved
round by round so that the noise of a shared machine hits both alike. Printed: peak RSS per clip length and
its ratio to the 10 s clip (median of the per-round ratios). Target: <= 1.2 at 10 and 60 min.

Also measured, working tree only: ``dfer run --until expression`` (faces + the per-frame expression stage) on the
shortest and the longest clip; and (``--trim``, on the first and third length) the ``faces.release_memory_every`` policy, glibc
``malloc_trim(0)`` after every Nth detector call (0: never), with the run's wall time, to choose its default.

Clips: code-generated (``tests/media.py``), 640x360 30 fps H.264, the astronaut face with ``motion="pan_zoom"``
over the whole clip. A 60-minute clip takes a while to make (minutes), so clips are kept in ``--clips-dir``
(default ``$DFER_BENCH_CLIPS`` or ``~/.cache/dfer-bench/clips``) and reused by later runs.

Run: ``python benchmarks/faces_memory.py`` (10 s, 2 min, 10 min, 60 min; before on 10 s, 2 min, 10 min:
the code before keeps a 60-minute clip's crops in memory, several GB), ``--lengths 10,120 --rounds 1``
for a quick look, ``--before-lengths 10,120,600,3600`` to include the 60-minute clip before the change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import BEFORE, REPO, env_for, unpack  # noqa: E402

med = statistics.median


def clip_for(folder: Path, seconds: float, size: tuple[int, int], fps: int = 30) -> tuple[Path, int]:
    """The pan-and-zoom clip of this length, size and frame rate from ``folder``, made first if missing (kept for
    later runs: a 60-minute one takes minutes); (path, frames)."""
    sys.path.insert(0, str(REPO))
    from tests.media import make_face_clip

    w, h = size
    path = folder / f"pan_zoom_{w}x{h}_{fps}fps_{seconds:g}s.mp4"
    done = path.with_suffix(".json")
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.mp4")
        spec = make_face_clip(tmp, codec="h264", size=size, fps=fps, seconds=seconds, motion="pan_zoom")
        os.replace(tmp, path)
        done.write_text(json.dumps({"frames": spec.n_frames, "made_in_s": round(time.perf_counter() - t0, 1)}))
        print(f"made {path.name}: {spec.n_frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)
    return path, json.loads(done.read_text())["frames"]


def measure(tree: Path, clip: Path, work: Path, sets: list[str], until: str = "keyframes") -> dict:
    """One fresh ``dfer run --until UNTIL`` process on an empty cache: peak RSS (MiB) and wall seconds."""
    cache, out = work / "cache", work / "run"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(clip), "--out", str(out), "--cache", str(cache),
           "--until", until, "-q", "--set", "run.workers=1", "--set", "faces.device=cpu"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(work.parent / "child.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=env_for(tree), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(work.parent / 'child.log').read_text()[-3000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return {"rss_mib": usage.ru_maxrss / 1024, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="10,120,600,3600", help="clip lengths in seconds, the first is the reference")
    ap.add_argument("--before-lengths", default="10,120,600", help="lengths also run with the code before ('' for none)")
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the code before (default {BEFORE})")
    ap.add_argument("--trim", default="0,1", help="faces.release_memory_every values also measured (working tree, "
                    "first and third length) besides the default ('' for none)")
    ap.add_argument("--no-expression", dest="expression", action="store_false",
                    help="skip `dfer run --until expression` (faces + the expression stage; working tree, shortest and "
                    "longest clip)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--clips-dir", default=os.environ.get("DFER_BENCH_CLIPS", str(Path.home() / ".cache" / "dfer-bench" / "clips")))
    args = ap.parse_args()
    lengths = [float(v) for v in args.lengths.split(",")]
    before_lengths = [float(v) for v in args.before_lengths.split(",") if v]
    trims = [int(v) for v in args.trim.split(",") if v]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    t_start = time.perf_counter()
    clips = {s: clip_for(Path(args.clips_dir), s, size) for s in sorted(set(lengths) | set(before_lengths))}
    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-mem-"))
    try:
        before_tree, commit = unpack(args.before, tmp / "before") if before_lengths else (None, None)
        from importlib import import_module

        sys.path.insert(0, str(REPO))
        default_trim = import_module("stages.faces").Config().release_memory_every
        trim_lengths = [lengths[0], lengths[min(2, len(lengths) - 1)]]  # the trim policy: 10 s and 10 min by default
        expr_lengths = [lengths[0], lengths[-1]]
        jobs = [("after", s, None) for s in lengths] + [("before", s, None) for s in before_lengths]
        jobs += [("after", s, t) for t in trims if t != default_trim for s in trim_lengths]
        jobs += [("expression", s, None) for s in expr_lengths] if args.expression else []
        res: dict = {j: [] for j in jobs}
        for r in range(args.rounds):
            for job in (jobs if r % 2 == 0 else jobs[::-1]):
                which, secs, trim = job
                tree = before_tree if which == "before" else REPO
                sets = [] if trim is None else [f"faces.release_memory_every={trim}"]
                out = measure(tree, clips[secs][0], tmp / "work", sets, "expression" if which == "expression" else "keyframes")
                res[job].append(out)
                label = f"{which} {secs:g} s" + ("" if trim is None else f" trim={trim}")
                print(f"round {r + 1}/{args.rounds}: {label:28s} peak RSS {out['rss_mib']:7.1f} MiB  {out['seconds']:7.1f} s",
                      flush=True)

        def ratio(job, ref):
            return med([a["rss_mib"] / b["rss_mib"] for a, b in zip(res[job], res[ref])])

        print()
        print(f"=== peak RSS of a whole `dfer run --until keyframes` process (run.workers=1, cpu), {size[0]}x{size[1]} 30 fps "
              f"H.264 pan_zoom clips; median of {args.rounds} rounds; ratio = median of per-round ratios to the "
              f"{lengths[0]:g} s clip ===")
        print(f"before = {commit[:12] if commit else '-'} ({args.before}); after = working tree "
              f"(faces.release_memory_every={default_trim})")
        print(f"{'clip':>8s} {'frames':>7s} | {'before MiB':>10s} {'ratio':>6s} {'s':>7s} | {'after MiB':>10s} {'ratio':>6s} {'s':>7s}")
        for s in lengths:
            b = ("before", s, None)
            bcol = (f"{med([o['rss_mib'] for o in res[b]]):10.1f} {ratio(b, ('before', before_lengths[0], None)):6.3f} "
                    f"{med([o['seconds'] for o in res[b]]):7.1f}") if b in res else f"{'-':>10s} {'-':>6s} {'-':>7s}"
            a = ("after", s, None)
            print(f"{s:7g}s {clips[s][1]:7d} | {bcol} | {med([o['rss_mib'] for o in res[a]]):10.1f} "
                  f"{ratio(a, ('after', lengths[0], None)):6.3f} {med([o['seconds'] for o in res[a]]):7.1f}")
        for s in before_lengths:
            if s not in lengths:
                b = ("before", s, None)
                print(f"{s:7g}s {clips[s][1]:7d} | {med([o['rss_mib'] for o in res[b]]):10.1f} "
                      f"{ratio(b, ('before', before_lengths[0], None)):6.3f} {med([o['seconds'] for o in res[b]]):7.1f} |")
        checks = [s for s in (600.0, 3600.0) if s in lengths]
        for s in checks:
            v = ratio(("after", s, None), ("after", lengths[0], None))
            print(f"target after {s / 60:g} min / {lengths[0]:g} s <= 1.2: {v:.3f} ({'met' if v <= 1.2 else 'NOT met'})")
        if any(t != default_trim for t in trims):
            print()
            print("faces.release_memory_every (malloc_trim after every Nth detector call; 0 = never), working tree:")
            print(f"{'setting':>10s} " + " ".join(f"{f'{s:g} s MiB':>12s} {'wall s':>8s}" for s in trim_lengths) +
                  f" {'ratio':>7s} {'time vs default':>16s}")
            for t in [default_trim] + [t for t in trims if t != default_trim]:
                key = (lambda s: ("after", s, None)) if t == default_trim else (lambda s, t=t: ("after", s, t))
                cells = " ".join(f"{med([o['rss_mib'] for o in res[key(s)]]):12.1f} {med([o['seconds'] for o in res[key(s)]]):8.1f}"
                                 for s in trim_lengths)
                r = ratio(key(trim_lengths[-1]), key(trim_lengths[0]))
                tv = med([a["seconds"] / b["seconds"] for a, b in zip(res[key(trim_lengths[-1])], res[("after", trim_lengths[-1], None)])])
                print(f"{t:10d} {cells} {r:7.3f} {tv:16.3f}")
        if args.expression:
            e0, e1 = (("expression", s, None) for s in expr_lengths)
            print()
            print("`dfer run --until expression` (faces + the expression stage), working tree: "
                  + ", ".join(f"{s:g} s {med([o['rss_mib'] for o in res[('expression', s, None)]]):.1f} MiB" for s in expr_lengths)
                  + f"; ratio {ratio(e1, e0):.3f}")
        print(f"\n(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
