"""What MSCE's captioner sees of a clip: the captioning windows of each gap and how much of the clip they cover.

No model and no video: the real planning functions (``stages.keyframes.choose`` and ``gaps``,
``stages.context.plan_windows``) run on the timestamps of a clip of ``--seconds`` at ``--fps`` whose face does not
move (so ``hybrid`` finds no apex and fills with uniform keyframes, as on a still face). For each setting it prints
the keyframes, each gap's windows (frame counts and frame indices), the share of the clip's frames that some window
or keyframe shows, and the share of the clip's time that windows span (the union of [first, last frame time] of
each window, over the clip's duration).

    python benchmarks/msce_coverage.py                      # 4 s at 25 fps: default and paper-like settings
    python benchmarks/msce_coverage.py --seconds 2.5 --fps 30
    python benchmarks/msce_coverage.py --preset msce        # the defaults and a preset's settings, side by side
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.engine.config import load_config
from stages.faces.facetrack import clip_duration
from stages import context, keyframes

SETTINGS = {
    "default (keyframes.strategy=hybrid, k=4; still face: uniform fill)": [],
    "paper-like as suggested (keyframes.strategy=uniform, context.min_frames_per_gap=4)": [
        "keyframes.strategy=uniform", "context.min_frames_per_gap=4"],
    "paper-like, four in-between frames per 1 s gap (... and context.min_fps=4)": [
        "keyframes.strategy=uniform", "context.min_frames_per_gap=4", "context.min_fps=4"],
}


def spanned(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of closed intervals."""
    total, cur = 0.0, None
    for a, b in sorted(intervals):
        if cur is None or a > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (0.0 if cur is None else cur[1] - cur[0])


def measure(name: str, kcfg: keyframes.Config, ccfg: context.Config, n: int, fps: float) -> None:
    t = np.arange(n) / fps
    flat = {"expression": np.zeros(n), "motion": np.zeros(n)}
    picks = keyframes.choose(t, flat, kcfg, np.ones(n, bool))
    plan = context.plan_windows(t, {"gaps": keyframes.gaps(picks, t, kcfg.edge_gap_min_s)}, ccfg)
    duration = clip_duration(t)
    shown, spans = set(picks), []
    print(f"== {name}")
    print(f"   keyframes {picks} at {[round(float(t[i]), 2) for i in picks]} s")
    for g in plan:
        sizes = [len(w["indices"]) for w in g["windows"]]
        print(f"   {g['kind']:>8} gap {g['start_index']:>2}->{g['end_index']:<2} ({g['t_start']:.2f}-{g['t_end']:.2f} s): "
              f"windows of {sizes} frames: {[w['indices'] for w in g['windows']]}")
        for w in g["windows"]:
            shown |= set(w["indices"])
            spans.append((w["timestamps"][0], w["timestamps"][-1]))
    covered = spanned(spans)
    print(f"   frames shown (in a window or a keyframe): {len(shown)}/{n} = {100 * len(shown) / n:.0f}%; "
          f"time spanned by windows: {covered:.2f}/{duration:.2f} s = {100 * covered / duration:.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--preset", action="append", default=[], metavar="NAME",
                    help="measure the defaults and this preset (repeatable) instead of the built-in settings")
    args = ap.parse_args()
    n = int(round(args.seconds * args.fps))
    print(f"clip: {args.seconds} s at {args.fps} fps ({n} frames), k={keyframes.Config().k}, "
          f"context.window_size={context.Config().window_size}, keyframes.edge_gap_min_s={keyframes.Config().edge_gap_min_s}")
    settings = [(name, load_config(None, over)) for name, over in SETTINGS.items()]
    if args.preset:
        settings = settings[:1] + [(f"--preset {p}", load_config(preset=p)) for p in args.preset]
    for name, cfg in settings:
        measure(name, cfg.keyframes, cfg.context, n, args.fps)


if __name__ == "__main__":
    main()
