"""Reading N frames of a clip at SxS: dfer's cached face crops vs qwen-vl-utils' ``fetch_video``.

The later stages of dfer read a few frames of a clip as face crops from the faces artifact:
``FaceTrack.load(artifact).crops(indices, size=S)``. That reads ``track.npz`` and N JPEG crops
from the cache and decodes them; the video decode and face detection were paid **once**, by the
faces stage. ``qwen_vl_utils.fetch_video`` (the helper Qwen2-VL / Qwen2.5-VL examples use),
with the decord backend (``FORCE_QWENVL_VIDEO_READER=decord``), decodes the video file **on
every call**: it opens it with ``decord.VideoReader``, seeks to N frames spread evenly over the
clip (``torch.linspace(0, total - 1, N).round()``, the same indices ours are given here), and
resizes the full frames to ``resized_height`` x ``resized_width`` (bicubic, antialiased).

What is compared (same clip, same N, same SxS, same frame indices; one process, interleaved
rounds, median per-call time):

* ours:   ``FaceTrack.load(art).crops(idx, size=S)`` -> uint8 array (N, S, S, 3), face crops;
* theirs: ``fetch_video({"video": path, "nframes": N, "resized_height": S, "resized_width": S})``
          -> float32 tensor (N, 3, S, S), whole frames squeezed to a square.

The outputs are not the same pictures (a face crop vs the whole frame); what is compared is the
cost of getting N model-ready SxS frames of the clip per call. The one-off cost of the faces stage
on the same clip is printed too, with the number of calls after which the cached path has paid
for it.

Needs two packages that are *not* dependencies of dfer (install them only to run this script)::

    pip install qwen-vl-utils decord

Run: ``python benchmarks/frame_sampling.py [--n 16] [--size 224]`` (about 1 min), ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"  # read by qwen_vl_utils at import time

try:
    import decord  # noqa: F401
    from qwen_vl_utils import fetch_video
except ImportError as exc:
    sys.exit(
        f"frame_sampling.py needs qwen-vl-utils and decord ({exc}). They are not dependencies of dfer;\n"
        "install them into your environment only to run this benchmark:\n"
        "    pip install qwen-vl-utils decord"
    )

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from stages.faces import STAGE as faces  # noqa: E402
from pipeline.core.cache import Cache  # noqa: E402
from stages.faces.facetrack import FaceTrack  # noqa: E402
from pipeline.core.jobs import ClipJob  # noqa: E402
from tests.media import make_face_clip  # noqa: E402

pc = time.perf_counter
med = statistics.median


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 s clip, 3 rounds")
    ap.add_argument("--n", type=int, default=16, help="frames per call (even; default 16)")
    ap.add_argument("--size", type=int, default=224, help="output side S in pixels (multiple of 28; default 224)")
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default 10; --quick 4)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 3)")
    args = ap.parse_args()
    if args.n % 2 or args.size % 28:
        ap.error("fetch_video rounds nframes to a multiple of 2 and sizes to a multiple of 28; pass such values")
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (3 if args.quick else 5)
    n, size = args.n, args.size
    t_start = pc()

    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-sampling-"))
    try:
        clip = tmp / "clip_720p30.mp4"
        spec = make_face_clip(clip, codec="h264", size=(1280, 720), fps=30, seconds=seconds, motion="pan_zoom")
        print(f"clip: {spec.width}x{spec.height} {spec.fps:g} fps H.264, {seconds:g} s, {spec.n_frames} frames, pan_zoom", flush=True)

        # the one-off cost: the faces stage, as a runner worker runs it (default config, cpu)
        cfg = faces.Config(device="cpu")
        t0 = pc()
        mtcnn = faces.open(cfg)
        t_load = pc() - t0
        job = ClipJob(clip.name, clip, "bench")
        cache = Cache(tmp / "cache")
        stage_times = []
        for key in ("0" * 64, "1" * 64):  # first run: a worker's first clip (detector warm-up); second: any later clip
            t0 = pc()
            art = cache.write("faces", key, {"video_id": job.video_id}, lambda out: faces.process(job, cfg, mtcnn, out))
            stage_times.append(pc() - t0)
        t_cold, t_stage = stage_times
        print(f"faces stage (one-off per clip): MTCNN load {t_load:.2f} s; first clip in a process {t_cold:.2f} s, "
              f"later clips {t_stage:.2f} s ({spec.n_frames / t_stage:.1f} frames/s)", flush=True)

        idx = torch.linspace(0, spec.n_frames - 1, n).round().long().tolist()  # fetch_video's indices
        ele = {"video": str(clip), "nframes": n, "resized_height": size, "resized_width": size}

        def ours():
            return FaceTrack.load(art).crops(idx, size=size)

        def theirs():
            video, meta = fetch_video(dict(ele), return_video_metadata=True)
            return video, meta

        a = ours()
        (b, meta) = theirs()  # warm-up of both (first-call imports/allocations), excluded
        if meta.get("video_backend") != "decord":
            sys.exit(f"fetch_video did not use decord (backend {meta.get('video_backend')!r}); "
                     "it falls back to torchvision when decord fails")
        if list(meta["frames_indices"]) != idx:
            sys.exit(f"fetch_video sampled frames {meta['frames_indices']}, expected {idx}")
        print(f"ours:   {type(a).__name__} {a.dtype} {tuple(a.shape)}  (face crops)")
        print(f"theirs: {type(b).__name__} {b.dtype} {tuple(b.shape)}  (whole frames, backend {meta['video_backend']}, "
              f"frames {meta['frames_indices'][:3]}...{meta['frames_indices'][-1]})", flush=True)

        k_ours, k_theirs = 20, 3
        t_ours, t_theirs, ratios = [], [], []
        for r in range(rounds):
            t0 = pc()
            for _ in range(k_ours):
                ours()
            to = (pc() - t0) / k_ours
            t0 = pc()
            for _ in range(k_theirs):
                theirs()
            tt = (pc() - t0) / k_theirs
            t_ours.append(to)
            t_theirs.append(tt)
            ratios.append(tt / to)
            print(f"round {r + 1}/{rounds}: ours {to * 1e3:.2f} ms/call  fetch_video {tt * 1e3:.1f} ms/call  "
                  f"ratio {tt / to:.1f}", flush=True)

        mo, mt, mr = med(t_ours), med(t_theirs), med(ratios)
        breakeven = t_stage / (mt - mo) if mt > mo else float("inf")
        print()
        print(f"=== N={n} frames at {size}x{size} from a {spec.width}x{spec.height} {seconds:g} s clip "
              f"({spec.n_frames} frames); {rounds} interleaved rounds ({k_ours} calls of ours, {k_theirs} of fetch_video "
              f"per round), medians; torch threads {torch.get_num_threads()}; cpu ===")
        print(f"{'per call':70s} {'ms':>9s}")
        print(f"{'ours: FaceTrack.load(art).crops(idx, size) - reads cached JPEG crops':70s} {mo * 1e3:9.2f}")
        print(f"{'qwen-vl-utils fetch_video (decord) - decodes the video every call':70s} {mt * 1e3:9.2f}")
        print(f"{'speed ratio fetch_video / ours (median of per-round ratios)':70s} {mr:9.1f}x   "
              f"target >= 1x: {'met' if mr >= 1 else 'NOT met'}")
        print()
        print(f"{'one-off faces stage on this clip (decode + detect + crops, paid once)':70s} {t_stage * 1e3:9.0f}")
        print(f"{'  (the first clip in a worker process: detector warm-up included)':70s} {t_cold * 1e3:9.0f}")
        print(f"{'  (+ MTCNN load, once per worker process)':70s} {t_load * 1e3:9.0f}")
        print(f"{'calls after which stage + ours is cheaper than fetch_video each time':70s} {breakeven:9.1f}")
        print("(ours returns face crops, uint8 NHWC; fetch_video returns the whole frame squeezed to a square, "
              "float32 NCHW)")
        print(f"\n(total benchmark time {pc() - t_start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
