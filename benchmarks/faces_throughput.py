"""Throughput and accuracy of the faces stage before and after a change, side by side, with a decode-only floor
and a naive baseline.

Measured on one code-generated 1280x720 30 fps H.264 clip (``tests/media.py``: the astronaut face on a
textured background, ``motion="pan_zoom"``; libx264 ultrafast, CRF 28, a key frame every 2 s), in frames/s:

(a)  **decode only** - PyAV, ``thread_type="AUTO"`` as in :class:`pipeline.core.video.VideoReader`, every frame
     decoded, no pixel conversion;
(b0) **faces stage before** - ``stages.faces.STAGE.process`` of the code at ``--before REF`` (default
     :data:`baseline_tree.BEFORE`, main before issue 15; unpacked with ``git archive``), its default config,
     ``device="cpu"``, called the way a runner worker calls it (``Cache.write``, MTCNN loaded once by the
     stage's ``open``), the whole clip, artifact written to disk;
(b)  **faces stage after** - the same call with the working tree's code and defaults;
(c)  **naive baseline** - ``cv2.VideoCapture`` reading every frame at full resolution, BGR->RGB, a plain
     facenet-pytorch ``MTCNN`` (same thresholds, smallest face 20 px) run on one full-resolution frame at a
     time, the largest confident face cropped with the stage's margin and size and JPEG-encoded; slow, so only
     the first ``--naive-frames`` frames (default 60).

Torch runs with one thread in every child (``--threads``), as in each of the runner's two default workers on a
2-core machine; on a busy machine two threads can be several times slower than one. How the comparison is
made honest: (b0) and (b) run in two long-lived child processes, one importing each
code tree (``PYTHONPATH``), each with MTCNN loaded and warmed up once; the parent asks them in turn, one
at a time, interleaved round by round (the order reversed every other round), so that the noise of a shared
machine hits both alike. (a) and (c) run in a third child that imports neither tree's stage. Ratios are the
medians of the per-round ratios. Targets: b/c >= 25 and b/b0 >= ``--target`` (default 2, issue 15's speed-up over
its baseline; issue 21, shots and identities against the code before them: ``--before main --target 0.9``, within
10 %).

Accuracy (``--accuracy-seeds``, default 0 and 1): both trees' stages on the clips with known face boxes
(``make_face_clip``'s ground truth): 1280x720 pan/zoom (6 s), 640x360 fast pan (2 s across the frame), two
faces (3 s, the larger one panning), variable frame rate (3 s, pan/zoom); median and minimum IoU of the
stage's box with the true box over all frames, and the mean centre error.

``--variants 'faces.full_frame_every_s=0;faces.detect_every=3'``: more configs of the working tree, timed in
the same rounds (ratios to b). ``--profile``: a cProfile listing of one stage run (after).

Run: ``python benchmarks/faces_throughput.py`` (about 5 min on 2 otherwise idle cores), ``--quick`` (4 s clip,
2 rounds, one accuracy seed). Absolute frames/s on a shared machine mean little; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import BEFORE, REPO, TreeProcess, unpack  # noqa: E402

med = statistics.median
ACCURACY_CLIPS = {
    "pan/zoom 720p": dict(size=(1280, 720), fps=30, seconds=6.0, motion="pan_zoom"),
    "fast pan 360p": dict(size=(640, 360), fps=30, seconds=2.0, motion="pan"),
    "two faces": dict(size=(640, 360), fps=30, seconds=3.0, motion="pan", faces=2),
    "VFR": dict(size=(640, 360), seconds=3.0, motion="pan_zoom", vfr=True),
}


# ----------------------------------------------------------------------------------------------
# child processes: one per code tree (stage runs) and one for the tree-independent measurements
# ----------------------------------------------------------------------------------------------


def child_main(role: str, work: Path, threads: int) -> None:
    import io
    import traceback
    import uuid

    import numpy as np
    import torch

    torch.set_num_threads(threads)

    state: dict = {}

    def stage(cmd):
        from stages.faces import STAGE as faces
        try:
            from pipeline.core.cache import Cache
            from pipeline.core.jobs import ClipJob
        except ImportError:  # a code tree from before the layer folders (pipeline/core/)
            from pipeline.cache import Cache
            from pipeline.jobs import ClipJob

        sets = cmd.get("set") or {}
        key = json.dumps(sets, sort_keys=True)
        if key not in state:
            cfg = faces.Config(device="cpu", **sets)
            state[key] = (cfg, faces.open(cfg))
        cfg, mtcnn = state[key]
        job = ClipJob(Path(cmd["clip"]).name, Path(cmd["clip"]), "bench")
        cache = Cache(work / "cache")
        t0 = time.perf_counter()
        art = cache.write("faces", uuid.uuid4().hex * 2, {"video_id": job.video_id}, lambda out: faces.process(job, cfg, mtcnn, out))
        seconds = time.perf_counter() - t0
        meta = art.meta()
        track = art.npz("track.npz")
        shutil.rmtree(art.root)
        return {"seconds": seconds, "frames": meta["n_frames"], "detections": meta.get("detections"), "box": track["box"].tolist()}

    def decode(cmd):
        import av

        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < cmd.get("min_seconds", 1.0):
            with av.open(cmd["clip"]) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for _ in container.decode(stream):
                    n += 1
        return {"fps": n / (time.perf_counter() - t0)}

    def naive(cmd):
        import cv2
        from facenet_pytorch import MTCNN

        if "naive" not in state:
            state["naive"] = MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], device="cpu", post_process=False)
        mtcnn, margin, size = state["naive"], 0.2, 224
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(cmd["clip"])
        n = found = 0
        while n < cmd["frames"]:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes, probs = mtcnn.detect(rgb)
            h, w = rgb.shape[:2]
            box = None
            if boxes is not None:
                keep = np.asarray(probs) >= 0.9
                if keep.any():
                    b = np.asarray(boxes)[keep]
                    box = b[int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))]
                    found += 1
            if box is None:
                box = np.array([0, 0, w, h], np.float32)
            side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
            crop = cv2.resize(rgb[y0 : int(cy + side / 2), x0 : int(cx + side / 2)], (size, size), interpolation=cv2.INTER_AREA)
            ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok and len(enc)
            n += 1
        cap.release()
        return {"fps": n / (time.perf_counter() - t0), "frames": n, "found": found}

    def profile(cmd):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        stage(cmd)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        return {"text": "\n".join(line for line in buf.getvalue().splitlines() if line.strip())}

    ops = {"stage": stage, "decode": decode, "naive": naive, "profile": profile}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out = ops[cmd["op"]](cmd)
        except Exception:  # report it to the parent, which stops
            out = {"error": traceback.format_exc()}
        print(json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------


def ious(boxes, truth) -> tuple[list[float], list[float]]:
    """IoU and centre error (px) of each frame's box with the true box (a missing box counts as IoU 0)."""
    import numpy as np

    out, err = [], []
    for b, g in zip(boxes, truth):
        b, g = np.asarray(b, float), np.asarray(g, float)
        if not np.isfinite(b).all():
            out.append(0.0)
            continue
        iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
        ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
        inter = iw * ih
        out.append(inter / ((b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter))
        err.append(float(np.hypot((b[0] + b[2] - g[0] - g[2]) / 2, (b[1] + b[3] - g[1] - g[3]) / 2)))
    return out, err


def parse_variants(text: str) -> list[dict]:
    out = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        sets = {}
        for item in chunk.split(","):
            k, _, v = item.partition("=")
            sets[k.strip().removeprefix("faces.")] = json.loads(v)
        out.append(sets)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 s clip, 2 rounds, 20 naive frames, one accuracy seed")
    ap.add_argument("--seconds", type=float, default=None, help="throughput clip length (default 10; --quick 4)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 2)")
    ap.add_argument("--naive-frames", type=int, default=None, help="frames measured for (c) (default 60; --quick 20)")
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the code before (default {BEFORE})")
    ap.add_argument("--target", type=float, default=2.0, help="b/b0 target (default 2; 0.9: within 10 %% of before)")
    ap.add_argument("--variants", default="", help="';'-separated working-tree configs also timed, e.g. 'faces.detect_every=3'")
    ap.add_argument("--accuracy-seeds", default=None, help="seeds of the accuracy clips (default 0,1; --quick 0; '' for none)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile listing of one stage run (after)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child (default 1: what each of the "
                    "runner's two default workers gets on 2 cores)")
    ap.add_argument("--child", choices=("tree", "tools"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, Path(args.work), args.threads)
        return 0
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 5)
    naive_frames = args.naive_frames or (20 if args.quick else 60)
    seeds_text = args.accuracy_seeds if args.accuracy_seeds is not None else ("0" if args.quick else "0,1")
    seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
    variants = parse_variants(args.variants)

    sys.path.insert(0, str(REPO))
    import torch

    from tests.media import make_face_clip

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-faces-"))
    children = []
    try:
        before_tree, commit = unpack(args.before, tmp / "before")
        clip = tmp / "clip_720p30.mp4"
        spec = make_face_clip(clip, codec="h264", size=(1280, 720), fps=30, seconds=seconds, motion="pan_zoom")
        print(f"clip: {spec.width}x{spec.height} {spec.fps:g} fps H.264 (libx264 ultrafast crf 28), {seconds:g} s, "
              f"{spec.n_frames} frames, pan_zoom, {clip.stat().st_size / 1e6:.2f} MB", flush=True)
        print(f"machine: {os.cpu_count()} CPU cores (shared); torch {torch.__version__}, {args.threads} thread(s) per child; "
              f"before = {commit[:12]} ({args.before}), after = working tree", flush=True)
        script = Path(__file__).resolve()
        before = TreeProcess(script, before_tree, "tree", "--work", str(tmp / "w-before"), "--threads", str(args.threads))
        after = TreeProcess(script, REPO, "tree", "--work", str(tmp / "w-after"), "--threads", str(args.threads))
        tools = TreeProcess(script, tmp, "tools", "--work", str(tmp / "w-tools"), "--threads", str(args.threads))
        children = [before, after, tools]
        for c in (before, after):  # warm-up (first-call allocations), excluded
            c.ask(op="stage", clip=str(clip))
        for v in variants:
            after.ask(op="stage", clip=str(clip), set=v)

        names = ["a", "b0", "b", "c"] + [f"v{i}" for i in range(len(variants))]
        fps: dict = {k: [] for k in names}
        det: dict = {}
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for k in order:
                if k == "a":
                    fps[k].append(tools.ask(op="decode", clip=str(clip))["fps"])
                elif k == "c":
                    out = tools.ask(op="naive", clip=str(clip), frames=naive_frames)
                    fps[k].append(out["fps"])
                else:
                    child = before if k == "b0" else after
                    sets = variants[int(k[1:])] if k.startswith("v") else None
                    out = child.ask(op="stage", clip=str(clip), set=sets)
                    fps[k].append(out["frames"] / out["seconds"])
                    det[k] = out["detections"]
            print(f"round {r + 1}/{rounds}: (a) {fps['a'][-1]:.0f}  (b0) {fps['b0'][-1]:.1f}  (b) {fps['b'][-1]:.1f}  "
                  f"(c) {fps['c'][-1]:.1f}" + "".join(f"  v{i} {fps[f'v{i}'][-1]:.1f}" for i in range(len(variants))) +
                  f"  frames/s | b/b0 {fps['b'][-1] / fps['b0'][-1]:.2f}  b/c {fps['b'][-1] / fps['c'][-1]:.1f}", flush=True)

        def ratio(x, y):
            return med([p / q for p, q in zip(fps[x], fps[y])])

        acc = []
        for seed in seeds:
            for name, kw in ACCURACY_CLIPS.items():
                path = tmp / f"acc_{seed}_{len(acc)}.mp4"
                aspec = make_face_clip(path, seed=seed, **kw)
                row = {"clip": name, "seed": seed, "frames": aspec.n_frames}
                for label, child in (("before", before), ("after", after)):
                    out = child.ask(op="stage", clip=str(path))
                    iou, err = ious(out["box"], aspec.face_boxes)
                    row[label] = (med(iou), min(iou), sum(err) / max(len(err), 1), out["detections"])
                acc.append(row)
                print(f"accuracy {name} seed {seed}: median/min IoU before {row['before'][0]:.3f}/{row['before'][1]:.3f}, "
                      f"after {row['after'][0]:.3f}/{row['after'][1]:.3f}", flush=True)

        if args.profile:
            print("\ncProfile of one stage run (after), top 15 by own time:")
            print(after.ask(op="profile", clip=str(clip))["text"][:6000])

        print()
        print(f"=== faces throughput: {spec.width}x{spec.height} {spec.fps:g} fps H.264, {spec.n_frames} frames; {rounds} "
              f"interleaved rounds, medians; cpu, torch threads {args.threads} ===")
        print(f"{'measurement':62s} {'frames/s':>9s}   per round")
        rows = [("a", "(a) PyAV decode only (no conversion), whole clip"),
                ("b0", f"(b0) faces stage before ({commit[:8]}), its defaults"),
                ("b", "(b) faces stage after (working tree), its defaults"),
                ("c", f"(c) naive cv2 + MTCNN full-res, first {naive_frames} frames")]
        rows += [(f"v{i}", f"     after with {', '.join(f'{k}={v}' for k, v in variants[i].items())}") for i in range(len(variants))]
        for k, label in rows:
            print(f"{label:62s} {med(fps[k]):9.1f}   {', '.join(f'{v:.1f}' for v in fps[k])}")
        print(f"detections per run: before {det.get('b0')}, after {det.get('b')}")
        print()
        print(f"{'ratio (median of per-round ratios)':44s} {'value':>8s}   {'target':>8s}   met")
        for (x, y), label, target in [(("b", "b0"), "b/b0 after vs before", args.target), (("b", "c"), "b/c  after vs naive", 25.0),
                                      (("b0", "c"), "b0/c before vs naive", None), (("b", "a"), "b/a  after vs decode-only", None),
                                      (("b0", "a"), "b0/a before vs decode-only", None)]:
            v = ratio(x, y)
            tgt = f">= {target:g}" if target else ""
            met = ("yes" if v >= target else "NO") if target else ""
            print(f"{label:44s} {v:8.3f}   {tgt:>8s}   {met}")
        for i in range(len(variants)):
            print(f"{f'v{i}/b':44s} {ratio(f'v{i}', 'b'):8.3f}")
        if acc:
            print()
            print("accuracy against the clips' true face boxes (IoU of the stage's box per frame; median / minimum over the "
                  "clip; mean centre error px):")
            print(f"  {'clip':16s} {'seed':>4s} {'frames':>6s}   {'before med':>10s} {'min':>6s} {'err':>5s}   "
                  f"{'after med':>10s} {'min':>6s} {'err':>5s}   after detections")
            for row in acc:
                b, a = row["before"], row["after"]
                print(f"  {row['clip']:16s} {row['seed']:4d} {row['frames']:6d}   {b[0]:10.4f} {b[1]:6.3f} {b[2]:5.1f}   "
                      f"{a[0]:10.4f} {a[1]:6.3f} {a[2]:5.1f}   {a[3]}")
            worse = [f"{r['clip']} seed {r['seed']} {what} by {r['before'][i] - r['after'][i]:.5f}"
                     for r in acc for i, what in ((0, "median"), (1, "minimum")) if r["after"][i] < r["before"][i] - 1e-4]
            print(f"  IoU (median and minimum) not lower after on every clip: {'yes' if not worse else 'NO: ' + '; '.join(worse)}")
        print(f"\n(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    finally:
        for c in children:
            c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
