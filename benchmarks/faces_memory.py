"""Peak memory of the faces stage: a short and a long clip of the same size, each in a fresh process.

The stage streams the video (a bounded window of decoded frames waits for its boxes), so its peak
memory should hardly depend on the clip's length. Measured here: the RSS high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh child process (``python <this file>
--child ...``) that

* ``stage``: imports the stage, loads MTCNN (``stages.faces.open``) and runs the faces stage on
  one clip exactly as a runner worker does (``Cache.write`` + ``stages.faces.process``, default
  config, ``device="cpu"``, artifact written to a temporary cache), nothing else;
* ``baseline``: the same imports (``stages.faces``, ``pipeline.cache``, torch, facenet-pytorch,
  PyAV, OpenCV) and ``stages.faces.open`` (MTCNN loaded), but no clip: subtracted from ``stage``
  it gives the stage's own memory (decoder, frame window, detector activations, rows, and what
  the C allocator keeps);
* ``torch_facenet``: only ``import torch, facenet_pytorch`` and ``MTCNN(...)``, for reference.

Clips: code-generated (``tests/media.py``), 640x360 30 fps H.264, ``motion="pan_zoom"``, 10 s and
120 s (``--quick``: 10 s and 40 s). Children run one at a time, interleaved round by round; the
medians over the rounds are printed. Target: peak RSS of the long clip / short clip <= 1.3.

Variants (``--variants``, each run on both clips; the repository files are untouched, the child
applies the change to the imported module / config):

* ``trim``: glibc ``malloc_trim(0)`` after every MTCNN batch, i.e. one line at the end of
  ``run_detector`` in ``stages.faces.process``;
* ``mmap``: ``mallopt(M_MMAP_THRESHOLD, 1 MiB)`` before MTCNN is loaded (one call in
  ``stages.faces.open``); this switches off glibc's dynamic mmap threshold, so every buffer of
  1 MiB or more is returned to the system when freed;
* ``batch4``: the config setting ``faces.detect_batch=4`` (not part of the cache key) instead of 16;
* ``notrim``: ``faces.release_memory_every=0``, i.e. the stage without its periodic ``malloc_trim``
  (the default trims after every 4th MTCNN batch, :mod:`pipeline.memory`).

Why: without them the process's peak RSS creeps up with the clip's length although the frame
window is bounded, because glibc keeps freed large buffers (detector activations, decoded
frames) in its heap instead of returning them to the system; ``mmap`` makes the growth vanish.

Run: ``python benchmarks/faces_memory.py`` (about 4 min on 2 otherwise idle cores; variant
``trim``), ``--variants notrim,trim,mmap,batch4`` (about 8 min), ``--variants none``, ``--quick``
(10 s vs 40 s clips, 2 rounds, about 1.5 min).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

med = statistics.median
VARIANTS = {
    "trim": "malloc_trim(0) after every MTCNN batch",
    "mmap": "mallopt(M_MMAP_THRESHOLD, 1 MiB) at load",
    "batch4": "faces.detect_batch=4 (default 16)",
    "notrim": "faces.release_memory_every=0 (default 4)",
}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def child(mode: str, clip: str | None, cache_dir: str | None, variant: str | None = None) -> None:
    """Runs in the fresh subprocess; prints one JSON line."""
    out: dict = {"mode": mode, "variant": variant}
    if variant == "mmap" and _libc().mallopt(-3, 1 << 20) != 1:  # M_MMAP_THRESHOLD
        raise SystemExit("mallopt(M_MMAP_THRESHOLD) failed")
    if mode == "torch_facenet":
        import facenet_pytorch
        import torch  # noqa: F401

        facenet_pytorch.MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], device="cpu", post_process=False)
    else:
        import stages.faces as faces
        from pipeline.cache import Cache
        from pipeline.jobs import ClipJob

        extra = {"batch4": {"detect_batch": 4}, "notrim": {"release_memory_every": 0}}.get(variant or "", {})
        cfg = faces.Config(device="cpu", **extra)
        mtcnn = faces.open(cfg)
        out["rss_after_load_mib"] = _maxrss_mib()
        if variant == "trim":
            libc, detect = _libc(), mtcnn.detect

            def detect_then_trim(*a, **k):
                result = detect(*a, **k)
                libc.malloc_trim(0)
                return result

            mtcnn.detect = detect_then_trim
        if mode == "stage":
            job = ClipJob(Path(clip).name, Path(clip), "bench")
            t0 = time.perf_counter()
            art = Cache(cache_dir).write(
                "faces", os.urandom(32).hex(), {"video_id": job.video_id}, lambda w: faces.process(job, cfg, mtcnn, w)
            )
            out["seconds"] = time.perf_counter() - t0
            meta = art.meta()
            out["n_frames"] = meta["n_frames"]
            out["n_detected"] = meta["n_detected"]
    out["maxrss_mib"] = _maxrss_mib()
    print(json.dumps(out))


def run_child(mode: str, clip: Path | None = None, cache_dir: Path | None = None, variant: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    if clip is not None:
        cmd += ["--clip", str(clip), "--cache", str(cache_dir)]
    if variant:
        cmd += ["--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} {variant or ''} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 s vs 40 s clips, 2 rounds")
    ap.add_argument("--short", type=float, default=10.0, help="short clip length in seconds (default 10)")
    ap.add_argument("--long", type=float, default=None, help="long clip length in seconds (default 120; --quick 40)")
    ap.add_argument("--size", default="640x360", help="frame size WxH, even numbers (default 640x360)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 2)")
    ap.add_argument("--variants", default="trim", help="comma-separated: trim, mmap, batch4, or none (default trim)")
    ap.add_argument("--child", choices=("stage", "baseline", "torch_facenet"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.clip, args.cache, args.variant)
        return 0

    from tests.media import make_face_clip

    variants = [v for v in args.variants.split(",") if v and v != "none"]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant {v!r} ({', '.join(VARIANTS)}, none)")
        if v in ("trim", "mmap") and not sys.platform.startswith("linux"):
            ap.error(f"--variants {v} needs glibc (Linux)")
    long_s = args.long or (40.0 if args.quick else 120.0)
    rounds = args.rounds or (2 if args.quick else 3)
    w, h = (int(v) for v in args.size.lower().split("x"))
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-mem-"))
    try:
        clips = {}
        for name, secs in (("short", args.short), ("long", long_s)):
            t0 = time.perf_counter()
            path = tmp / f"{name}_{w}x{h}_{secs:g}s.mp4"
            spec = make_face_clip(path, codec="h264", size=(w, h), fps=30, seconds=secs, motion="pan_zoom")
            clips[name] = (path, spec)
            print(f"clip {name}: {w}x{h} 30 fps H.264, {secs:g} s, {spec.n_frames} frames, "
                  f"{path.stat().st_size / 1e6:.1f} MB (made in {time.perf_counter() - t0:.1f} s)", flush=True)

        setups = [""] + variants  # "" = the stage as it is
        kinds = ["torch_facenet", "baseline"] + [f"{c}+{v}" if v else c for v in setups for c in ("short", "long")]
        res: dict = {k: [] for k in kinds}
        for r in range(rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for what in order:
                if what.startswith(("short", "long")):
                    name, _, variant = what.partition("+")
                    out = run_child("stage", clips[name][0], tmp / "cache", variant or None)
                    shutil.rmtree(tmp / "cache", ignore_errors=True)
                else:
                    out = run_child(what)
                res[what].append(out)
            print(f"round {r + 1}/{rounds}: " + "  ".join(f"{k} {res[k][-1]['maxrss_mib']:.0f}" for k in kinds) + "  (MiB)",
                  flush=True)

        def peak(kind):
            return med([o["maxrss_mib"] for o in res[kind]])

        def fps(kind):
            return med([o["n_frames"] / o["seconds"] for o in res[kind]])

        def ratio(num, den, key=lambda o: o["maxrss_mib"]):
            return med([key(a) / key(b) for a, b in zip(res[num], res[den])])

        base = peak("baseline")
        n_frames = {k: res[k][0]["n_frames"] for k in ("short", "long")}
        print()
        print(f"=== faces stage peak memory: {w}x{h} 30 fps H.264, a fresh child process per measurement, "
              f"ru_maxrss, median of {rounds} rounds; torch default threads; cpu ===")
        print(f"{'child process':66s} {'peak RSS MiB':>12s}   per round")
        rows = [
            ("torch_facenet", "import torch + facenet_pytorch, MTCNN(...) loaded"),
            ("baseline", "baseline: stage imports + stages.faces.open (MTCNN), no clip"),
            ("short", f"faces stage on the {args.short:g} s clip ({n_frames['short']} frames)"),
            ("long", f"faces stage on the {long_s:g} s clip ({n_frames['long']} frames)"),
        ]
        for v in variants:
            rows += [(f"short+{v}", f"  {v}: short clip"), (f"long+{v}", f"  {v}: long clip")]
        for k, label in rows:
            print(f"{label:66s} {peak(k):12.1f}   " + ", ".join(f"{o['maxrss_mib']:.1f}" for o in res[k]))

        print()
        print(f"{'setup':48s} {'short':>8s} {'long':>8s} {'long/short':>10s} {'own short':>10s} {'own long':>9s} "
              f"{'own l/s':>8s} {'frames/s long':>14s}")
        for v in setups:
            s, lg = (f"short+{v}", f"long+{v}") if v else ("short", "long")
            r_ls = ratio(lg, s)
            own_s, own_l = peak(s) - base, peak(lg) - base
            label = "stage as it is" if not v else f"{v}: {VARIANTS[v]}"
            fps_note = "" if not v else f" ({ratio(lg, 'long', key=lambda o: o['n_frames'] / o['seconds']):.2f}x)"
            print(f"{label:48s} {peak(s):8.1f} {peak(lg):8.1f} {r_ls:10.3f} {own_s:10.1f} {own_l:9.1f} "
                  f"{own_l / own_s if own_s > 0 else float('nan'):8.2f} {fps(lg):8.1f}{fps_note}")
        r0 = ratio("long", "short")
        print(f"\ntarget: long/short peak RSS <= 1.3 -> stage as it is: {r0:.3f} ({'met' if r0 <= 1.3 else 'NOT met'})")
        print("('own' = peak minus the baseline child; long/short and the frames/s ratio in brackets, variant vs the "
              "stage as it is on the long clip, are medians of per-round ratios)")
        print(f"\n(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
