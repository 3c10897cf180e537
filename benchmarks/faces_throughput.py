"""Throughput of the faces stage, measured side by side with a decode-only floor and a naive baseline.

What is compared, on one code-generated 1280x720 30 fps H.264 clip (``tests/media.py``, the
astronaut face on a textured background, ``motion="pan_zoom"``; libx264 ultrafast, CRF 28,
a key frame every 2 s), all in this one process and interleaved round by round so that the
noise of a shared machine hits every variant alike:

(a) **decode only** - PyAV, ``thread_type="AUTO"`` as in :class:`pipeline.video.VideoReader`,
    every frame decoded, no pixel conversion; frames/s.
(b) **faces stage** - ``stages.faces.process`` called the way a runner worker calls it:
    ``pipeline.cache.Cache(tmp).write("faces", key, meta, lambda out: process(job, cfg, mtcnn, out))``
    with ``mtcnn = stages.faces.open(cfg)`` loaded once beforehand (as a worker does) and the
    default ``faces`` config with ``device="cpu"``; the whole clip, artifact written to disk;
    frames/s.
(c) **naive baseline** - ``cv2.VideoCapture`` reading every frame at full resolution, BGR->RGB,
    the same MTCNN object (same ``thresholds`` and ``min_face_size``) run on one full-resolution
    frame at a time, the largest confident face cropped with the stage's own margin / size and
    JPEG-encoded at the same quality. It is slow, so only the first ``--naive-frames`` frames
    (default 60) are measured; frames/s.

Ratios printed: b/a (target >= 0.5) and b/c (target >= 20), each the median of the per-round
ratios. Also printed:

* a breakdown of the stage's time (decode, YUV->RGB of the full frame, YUV->RGB+downscale of the
  detector copy, MTCNN, crop+resize, JPEG encode, and the rest = tracking/smoothing/bookkeeping),
  from one more stage run per round with timers wrapped around each of those calls;
* the effect of ``faces.detect_every`` (1, 3, 5) and torch threads (1, 2) on (b);
* a "patched copy" measurement of a candidate optimisation, applied by monkeypatching the
  *imported* ``stages.faces`` module inside this process only (the repository files are not
  changed): (P1) convert only the crop region of each frame from YUV to RGB;
* the stage's own bookkeeping (tracking, smoothing, interpolation, rows) per frame for clips of
  10, 60 and 300 s with decode and MTCNN stubbed out: it must not grow with the clip's length
  (smoothing is incremental, :class:`pipeline.tracking.Timeline`; before, every flush re-smoothed
  the whole clip, quadratic in its length: 6.6x slower per frame at 300 s).

torch runs with its default thread count (all cores) unless stated. On a machine whose cores are
busy with other work, two torch threads can be several times *slower* than one (the threads wait
on each other); the sweep shows it. The runner's worker processes use cores // run.workers.

Run:  ``python benchmarks/faces_throughput.py`` (about 2.5 min on 2 otherwise idle cores; much longer when they are busy)
      ``python benchmarks/faces_throughput.py --quick`` (under 1 min: 4 s clip, 2 rounds)
      ``--profile`` adds a cProfile listing of one stage run.
Absolute times on a shared machine mean little; read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import stages.faces as faces  # noqa: E402
from pipeline.cache import Cache  # noqa: E402
from pipeline.facetrack import CROPS_FILE, TRACK_FILE  # noqa: E402
from pipeline.jobs import ClipJob  # noqa: E402
from pipeline.video import VideoInfo  # noqa: E402
from tests.media import make_face_clip  # noqa: E402

pc = time.perf_counter
med = statistics.median


# ----------------------------------------------------------------------------------------------
# the three measurements
# ----------------------------------------------------------------------------------------------


def decode_only(path: Path, min_seconds: float = 1.0) -> tuple[float, int]:
    """(a): frames/s decoding every frame, no conversion; the clip is decoded again until
    ``min_seconds`` have passed (it decodes in a fraction of a second)."""
    n = 0
    t0 = pc()
    while True:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _frame in container.decode(stream):
                n += 1
        if pc() - t0 >= min_seconds:
            break
    return n / (pc() - t0), n


def run_stage(cache: Cache, job: ClipJob, cfg: faces.Config, mtcnn) -> tuple[float, object]:
    """(b): one full faces-stage run through Cache.write, as a runner worker does it."""
    key = uuid.uuid4().hex * 2
    t0 = pc()
    art = cache.write("faces", key, {"video_id": job.video_id}, lambda out: faces.process(job, cfg, mtcnn, out))
    return pc() - t0, art


def naive(path: Path, cfg: faces.Config, mtcnn, n_frames: int) -> tuple[float, int, int]:
    """(c): OpenCV full-resolution read + MTCNN on every full-resolution frame, one at a time."""
    t0 = pc()
    cap = cv2.VideoCapture(str(path))
    n = found = 0
    try:
        while n < n_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes, probs, _lms = mtcnn.detect(rgb, landmarks=True)
            box = None
            if boxes is not None:
                boxes, probs = np.asarray(boxes, np.float32), np.asarray(probs, np.float32)
                keep = probs >= cfg.min_score
                if keep.any():
                    b, p = boxes[keep], probs[keep]
                    box = b[int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) * p))]
                    found += 1
            crop, _ = faces._square_crop(rgb, box, cfg.margin, cfg.crop_size)
            ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            assert ok and len(enc) > 0
            n += 1
    finally:
        cap.release()
    return n / (pc() - t0), n, found


class _Timers:
    """Wall-clock seconds per operation, gathered by wrappers around the stage's own calls."""

    def __init__(self):
        self.t = dict.fromkeys(("decode", "rgb_full", "rgb_small", "mtcnn", "crop", "jpeg"), 0.0)

    def wrap(self, name, fn):
        def timed(*a, **k):
            s = pc()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] += pc() - s

        return timed


class _Cv2Proxy:
    """``stages.faces.cv2`` for the timed run: RGB->BGR + JPEG encode (the two cv2 calls of
    ``_Writer.add``) are timed, everything else is the real cv2."""

    def __init__(self, timers: _Timers):
        self.cvtColor = timers.wrap("jpeg", cv2.cvtColor)
        self.imencode = timers.wrap("jpeg", cv2.imencode)

    def __getattr__(self, name):
        return getattr(cv2, name)


def timed_stage_run(cache: Cache, job: ClipJob, cfg: faces.Config, mtcnn) -> dict[str, float]:
    """One real stage run (same call as (b)) with timers around each operation it performs:
    ``VideoReader.frames`` (decode), ``to_rgb`` (full frame / downscaled detector copy),
    ``mtcnn.detect``, ``_square_crop`` (crop + resize) and the JPEG encode. 'rest' is the run's
    total minus these (tracking, smoothing, interpolation, rows, npz, file I/O, Python overhead)."""
    timers = _Timers()
    orig = (faces.VideoReader, faces.to_rgb, faces._square_crop, faces.cv2)

    class TimedReader(faces.VideoReader):
        def frames(self):
            it = super().frames()
            while True:
                s = pc()
                item = next(it, None)
                timers.t["decode"] += pc() - s
                if item is None:
                    return
                yield item

    rgb_small, rgb_full = timers.wrap("rgb_small", orig[1]), timers.wrap("rgb_full", orig[1])

    def to_rgb(frame, rotation, width=None, height=None):
        return rgb_small(frame, rotation, width, height) if width or height else rgb_full(frame, rotation)

    detector = _TimedDetector(mtcnn, timers)
    faces.VideoReader, faces.to_rgb, faces.cv2 = TimedReader, to_rgb, _Cv2Proxy(timers)
    faces._square_crop = timers.wrap("crop", orig[2])
    try:
        total, _ = run_stage(cache, job, cfg, detector)
    finally:
        faces.VideoReader, faces.to_rgb, faces._square_crop, faces.cv2 = orig
    out = dict(timers.t)
    out["rest"] = total - sum(out.values())
    out["total"] = total
    return out


class _TimedDetector:
    def __init__(self, mtcnn, timers: _Timers):
        self.detect = timers.wrap("mtcnn", mtcnn.detect)


# ----------------------------------------------------------------------------------------------
# patched copies (monkeypatching the imported stages.faces module; repository files untouched)
# ----------------------------------------------------------------------------------------------


class _RegionRGB:
    """Stands in for the full upright RGB frame that ``_square_crop`` slices (``img.shape`` and
    ``img[y0:y1, x0:x1]``): only the sliced region is converted from YUV 4:2:0 to RGB.

    The region is widened to even coordinates, copied into a small yuv420p ``av.VideoFrame`` and
    converted by the same swscale call as the full frame, so the pixels are byte-identical."""

    _subframes: dict = {}

    def __init__(self, frame: av.VideoFrame):
        self.frame = frame
        self.shape = (frame.height, frame.width, 3)

    def __getitem__(self, key):
        ys, xs = key
        y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        ax0, ay0, ax1, ay1 = x0 - x0 % 2, y0 - y0 % 2, x1 + x1 % 2, y1 + y1 % 2
        ww, hh = ax1 - ax0, ay1 - ay0
        sub = self._subframes.get((ww, hh))
        if sub is None:  # one small frame per region size, reused (and its swscale context with it)
            sub = self._subframes[(ww, hh)] = av.VideoFrame(ww, hh, "yuv420p")
        for k, (src_plane, dst_plane) in enumerate(zip(self.frame.planes, sub.planes)):
            d = 1 if k == 0 else 2
            src = np.frombuffer(src_plane, np.uint8).reshape(src_plane.height, src_plane.line_size)
            dst = np.frombuffer(dst_plane, np.uint8).reshape(dst_plane.height, dst_plane.line_size)
            dst[:, : ww // d] = src[ay0 // d : ay1 // d, ax0 // d : ax1 // d]
        sub.colorspace, sub.color_range = self.frame.colorspace, self.frame.color_range
        return sub.to_ndarray(format="rgb24")[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]


@contextlib.contextmanager
def patch_region_rgb():
    """P1: ``stages.faces.to_rgb`` returns a lazy region converter for the full-frame call (the
    detector's downscaled copy, rotated frames and other pixel formats are left as they are)."""
    orig = faces.to_rgb

    def to_rgb(frame, rotation, width=None, height=None):
        if width or height or rotation or frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:
            return orig(frame, rotation, width, height)
        return _RegionRGB(frame)

    faces.to_rgb = to_rgb
    try:
        yield
    finally:
        faces.to_rgb = orig


def same_artifact(a, b) -> tuple[bool, bool]:
    """(track arrays equal, crop bytes equal)."""
    ta, tb = a.npz(TRACK_FILE), b.npz(TRACK_FILE)
    arrays = ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k], equal_nan=True) for k in ta)
    crops = a.path(CROPS_FILE).read_bytes() == b.path(CROPS_FILE).read_bytes()
    return arrays, crops


# --- bookkeeping cost vs clip length: the real process() with decode and MTCNN stubbed out ----


class _FakeReader:
    """Replaces ``stages.faces.VideoReader``: yields one tiny yuv420p frame ``n`` times at 30 fps."""

    frame = av.VideoFrame.from_ndarray(np.full((36, 64, 3), 128, np.uint8), format="rgb24").reformat(format="yuv420p")

    def __init__(self, path, threads=0):
        self.n = int(str(path).rsplit("-", 1)[1])
        self.info = VideoInfo(str(path), "fake", 64, 36, 0, 64, 36, 30.0, self.n / 30, self.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def frames(self):
        for i in range(self.n):
            yield i / 30, self.frame

    def frame_rotation(self, frame):
        return 0


class _FakeDetector:
    """Replaces MTCNN: one confident face per image, jittering by a pixel."""

    def detect(self, imgs, landmarks=True):
        out_b, out_p, out_l = [], [], []
        for i, _ in enumerate(imgs):
            j = float(i % 3)
            out_b.append(np.array([[16 + j, 8, 40 + j, 32]], np.float32))
            out_p.append(np.array([0.99], np.float32))
            out_l.append(np.tile(np.array([[28 + j, 20]], np.float32), (1, 5, 1)))
        return out_b, out_p, out_l


def bookkeeping_scan(cache: Cache, durations: list[int], repeats: int) -> list[dict]:
    """Per-frame cost of the stage's own Python work (tracking, smoothing, interpolation, rows,
    tiny crops) for clips of several lengths, with decode and MTCNN stubbed out."""
    cfg = faces.Config(device="cpu", crop_size=32, detect_max_side=64)
    orig_reader = faces.VideoReader
    faces.VideoReader = _FakeReader
    rows = []
    try:
        for secs in durations:
            n = secs * 30
            job = ClipJob(f"fake-{n}", Path(f"fake-{n}"), "fake")
            times = [run_stage(cache, job, cfg, _FakeDetector())[0] for _ in range(repeats)]
            rows.append(dict(seconds=secs, frames=n, us=med(times) / n * 1e6))
            print(f"  bookkeeping {secs:4d} s clip ({n} frames): {rows[-1]['us']:.0f} us/frame", flush=True)
    finally:
        faces.VideoReader = orig_reader
    return rows


# ----------------------------------------------------------------------------------------------


def fmt_list(values, digits=1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 s clip, 2 rounds, 20 naive frames, short bookkeeping scan")
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default 10; --quick 4)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 2)")
    ap.add_argument("--naive-frames", type=int, default=None, help="frames measured for (c) (default 60; --quick 20)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile listing of one stage run")
    ap.add_argument("--no-sweep", action="store_true", help="skip the detect_every x torch threads sweep")
    ap.add_argument("--no-scan", action="store_true", help="skip the bookkeeping-vs-clip-length scan")
    args = ap.parse_args()
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 3)
    naive_frames = args.naive_frames or (20 if args.quick else 60)
    scan_durations = [10, 60] if args.quick else [10, 60, 300]
    threads0 = torch.get_num_threads()
    cores = os.cpu_count()

    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-faces-"))
    try:
        t0 = pc()
        clip = tmp / "clip_720p30.mp4"
        spec = make_face_clip(clip, codec="h264", size=(1280, 720), fps=30, seconds=seconds, motion="pan_zoom")
        print(
            f"clip: {spec.width}x{spec.height} {spec.fps:g} fps H.264 (libx264 ultrafast crf 28), {seconds:g} s, "
            f"{spec.n_frames} frames, pan_zoom, {clip.stat().st_size / 1e6:.2f} MB (made in {pc() - t0:.1f} s)",
            flush=True,
        )
        print(f"machine: {cores} CPU cores (shared); torch {torch.__version__}, default torch threads {threads0}", flush=True)

        cfg = faces.Config(device="cpu")
        mtcnn = faces.open(cfg)
        cache = Cache(tmp / "cache")
        job = ClipJob("clip_720p30.mp4", clip, "bench")
        _, ref_art = run_stage(cache, job, cfg, mtcnn)  # warm-up (first-call allocations), excluded
        ref_meta = ref_art.meta()
        print(
            f"warm-up stage run: {ref_meta['n_frames']} frames, {ref_meta['n_detected']} detected, "
            f"{ref_meta['n_interpolated']} interpolated, {ref_meta['n_missing']} missing",
            flush=True,
        )

        sweep = [(de, th) for de in (1, 3, 5) for th in (1, 2) if not (de == cfg.detect_every and th == threads0)]
        res: dict = {k: [] for k in ("a", "b", "c", "p1")}
        res_sweep: dict = {k: [] for k in sweep}
        ratio_ba, ratio_bc, ratio_p1 = [], [], []
        comp_rounds = []
        p1_identical = None
        for r in range(rounds):
            torch.set_num_threads(threads0)
            fa, _ = decode_only(clip)
            dtb, art_b = run_stage(cache, job, cfg, mtcnn)
            fb = spec.n_frames / dtb
            fc, nc, found = naive(clip, cfg, mtcnn, naive_frames)
            with patch_region_rgb():
                dtp, art_p = run_stage(cache, job, cfg, mtcnn)
            fp1 = spec.n_frames / dtp
            if p1_identical is None:
                p1_identical = same_artifact(art_b, art_p)
            comp_rounds.append(timed_stage_run(cache, job, cfg, mtcnn))
            res["a"].append(fa)
            res["b"].append(fb)
            res["c"].append(fc)
            res["p1"].append(fp1)
            ratio_ba.append(fb / fa)
            ratio_bc.append(fb / fc)
            ratio_p1.append(fp1 / fb)
            print(
                f"round {r + 1}/{rounds}: (a) {fa:.0f} fps  (b) {fb:.1f} fps  (c) {fc:.1f} fps on {nc} frames "
                f"({found} with a face)  P1 {fp1:.1f} fps  | b/a {fb / fa:.3f}  b/c {fb / fc:.2f}  P1/b {fp1 / fb:.3f}",
                flush=True,
            )
            if not args.no_sweep:
                order = sweep if r % 2 == 0 else sweep[::-1]
                for de, th in order:
                    torch.set_num_threads(th)
                    dt, _ = run_stage(cache, job, cfg.model_copy(update={"detect_every": de}), mtcnn)
                    res_sweep[(de, th)].append(spec.n_frames / dt)
                torch.set_num_threads(threads0)
                print("  sweep: " + "  ".join(f"de={de},t={th}: {res_sweep[(de, th)][-1]:.1f}" for de, th in sweep), flush=True)
            shutil.rmtree(cache.root / "faces", ignore_errors=True)

        scan = [] if args.no_scan else bookkeeping_scan(cache, scan_durations, repeats=1 if args.quick else 2)

        if args.profile:
            torch.set_num_threads(threads0)
            prof = cProfile.Profile()
            prof.enable()
            run_stage(cache, job, cfg, mtcnn)
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
            print("\ncProfile of one stage run (default config), top 15 by own time:")
            print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])

        # ------------------------------------------------------------------ final table
        fa, fb, fc, fp1 = (med(res[k]) for k in ("a", "b", "c", "p1"))
        rba, rbc, rp1 = med(ratio_ba), med(ratio_bc), med(ratio_p1)
        print()
        print(f"=== faces throughput: {spec.width}x{spec.height} {spec.fps:g} fps H.264, {spec.n_frames} frames; "
              f"{rounds} interleaved rounds, medians; torch threads {threads0} unless stated; cpu ===")
        print(f"{'measurement':58s} {'frames/s':>9s}   per round")
        print(f"{'(a) PyAV decode only (no conversion), whole clip':58s} {fa:9.1f}   {fmt_list(res['a'], 0)}")
        print(f"{'(b) faces stage, default config, Cache.write path':58s} {fb:9.1f}   {fmt_list(res['b'])}")
        print(f"{f'(c) naive cv2+MTCNN full-res, first {naive_frames} frames only':58s} {fc:9.1f}   {fmt_list(res['c'])}")
        print(f"{'P1 = (b) converting only the crop region to RGB':58s} {fp1:9.1f}   {fmt_list(res['p1'])}")
        print()
        print(f"{'ratio (median of per-round ratios)':40s} {'value':>8s}   {'target':>8s}   met")
        print(f"{'b/a  stage vs decode-only':40s} {rba:8.3f}   {'>= 0.5':>8s}   {'yes' if rba >= 0.5 else 'NO'}")
        print(f"{'b/c  stage vs naive baseline':40s} {rbc:8.2f}   {'>= 20':>8s}   {'yes' if rbc >= 20 else 'NO'}")
        arrays_same, crops_same = p1_identical
        print(f"{'P1/b region-only YUV->RGB':40s} {rp1:8.3f}   {'':>8s}   "
              f"(track arrays identical: {arrays_same}, crop JPEG bytes identical: {crops_same})")

        print()
        print(f"where the stage's time goes: one extra stage run per round with timers around each call it makes "
              f"(share = median over the {rounds} rounds of part / that run's total):")
        labels = {
            "decode": "decode (VideoReader.frames)",
            "rgb_full": "YUV->RGB full frame (to_rgb, every frame)",
            "rgb_small": "YUV->RGB + downscale for the detector",
            "mtcnn": "MTCNN detect (batches of detect_batch)",
            "crop": "crop + resize (_square_crop)",
            "jpeg": "RGB->BGR + JPEG encode",
            "rest": "rest: tracking, smoothing, rows, npz, file I/O",
        }
        for k, label in labels.items():
            share = med([c[k] / c["total"] for c in comp_rounds])
            ms = med([c[k] for c in comp_rounds]) / spec.n_frames * 1e3
            print(f"  {label:46s} {100 * share:5.1f} %  {ms:6.2f} ms/frame")
        tot = med([c["total"] for c in comp_rounds])
        print(f"  {'timed stage run, total':46s} 100.0 %  {tot / spec.n_frames * 1e3:6.2f} ms/frame")

        if not args.no_sweep:
            print()
            print(f"effect of detect_every and torch threads on (b) (frames/s, median of {rounds}; "
                  f"ratio to the default detect_every={cfg.detect_every}, threads={threads0}):")
            print(f"  {'detect_every':>12s} {'threads':>8s} {'frames/s':>9s} {'vs default':>10s}   per round")
            for de, th in sorted(set(sweep) | {(cfg.detect_every, threads0)}):
                if True:
                    vals = res["b"] if (de, th) == (cfg.detect_every, threads0) else res_sweep.get((de, th), [])
                    if not vals:
                        continue
                    print(f"  {de:12d} {th:8d} {med(vals):9.1f} {med(vals) / fb:10.2f}   {fmt_list(vals)}")

        if scan:
            print()
            print("stage bookkeeping cost vs clip length (real process(), decode and MTCNN stubbed, 64x36 frames, "
                  "crop_size 32):")
            print(f"  {'clip':>6s} {'frames':>7s} {'us/frame':>9s} {'vs shortest':>12s}")
            for row in scan:
                print(f"  {row['seconds']:5d}s {row['frames']:7d} {row['us']:9.0f} {row['us'] / scan[0]['us']:12.2f}")
        print(f"\n(total benchmark time {pc() - t0:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
