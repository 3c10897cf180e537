"""Prompt tokens: K keyframes + gap summaries (MSCE) against dense 5 fps frames of the same clip.

Image/video token counts come from the real Qwen2-VL processors (``Qwen2VLImageProcessor`` and
``Qwen2VLVideoProcessor`` with their default settings, which Qwen2-VL and Qwen2.5-VL share:
14 px patches, 2x2 merge, 2-frame temporal patches for video): tokens = prod(grid_thw) / merge^2.
Text tokens are estimated as 1.3 x words of the rendered prompt (no Qwen tokenizer can be
downloaded here), so the text part is approximate and the image part exact.

Dense frames are counted both as separate images (what our ``classify.dense_fps`` sends) and as
one video (Qwen's video path merges frame pairs, halving the cost).

    python benchmarks/token_budget.py [--size 224] [--k 4] [--fps 5]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.templates import PromptRenderer, image_slots  # noqa: E402

SUMMARY = "Motion: the brows rise slightly, the eyes widen and the corners of the mouth pull up into a brief smile."


def image_tokens(size: int, n: int) -> int:
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor()
    out = proc(images=[np.zeros((size, size, 3), np.uint8)] * n, return_tensors="np")
    merge = proc.merge_size**2
    return int(sum(np.prod(g) // merge for g in out["image_grid_thw"])) + 2 * n  # + vision start/end per image


def video_tokens(size: int, n_frames: int) -> int:
    from transformers import Qwen2VLVideoProcessor

    proc = Qwen2VLVideoProcessor()
    frames = np.zeros((max(n_frames, 2), size, size, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = proc(videos=[frames], return_tensors="np", do_sample_frames=False, cap_pixels_per_frame=True)
    return int(np.prod(out["video_grid_thw"][0]) // proc.merge_size**2) + 2


def text_tokens(text: str) -> int:
    return math.ceil(1.3 * len(re.findall(r"\w+|[^\w\s]", text)))


def msce_text(k: int, duration: float) -> str:
    slots = image_slots(k)
    ts = [duration * (i + 0.5) / k for i in range(k)]
    timeline = []
    for i, (t, s) in enumerate(zip(ts, slots)):
        timeline.append({"kind": "frame", "t": t, "image": s})
        if i + 1 < k:
            timeline.append({"kind": "motion", "t_start": t, "t_end": ts[i + 1], "text": SUMMARY})
    labels = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    prompt = PromptRenderer(None, "classify.j2").render([object()] * k, timeline=timeline, trajectory=None, labels=labels)
    return " ".join(p for p in prompt.parts if isinstance(p, str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--fps", type=float, default=5.0)
    args = ap.parse_args()
    per_image = image_tokens(args.size, 1)
    print(f"Qwen2-VL processor arithmetic at {args.size}x{args.size}: {per_image} tokens per image (incl. 2 markers)")
    print(f"\n| clip (s) | MSCE: {args.k} keyframes + {args.k - 1} summaries | dense {args.fps:g} fps as images | ratio | dense as one video | ratio |")
    print("|---|---|---|---|---|---|")
    for duration in (1.0, 2.0, 3.0, 5.0, 10.0, 30.0):
        text = msce_text(args.k, duration)
        msce = image_tokens(args.size, args.k) + text_tokens(text)
        n_dense = max(1, int(duration * args.fps))
        instr = text_tokens("Which emotion does this person express? Choose one of: happy, sad, neutral, angry, surprise, disgust, fear. Answer with one word.")
        dense_img = image_tokens(args.size, n_dense) + n_dense * text_tokens("[0.00 s]") + instr
        dense_vid = video_tokens(args.size, n_dense) + instr
        print(f"| {duration:g} | {msce} | {dense_img} ({n_dense} frames) | {dense_img / msce:.2f}x | {dense_vid} | {dense_vid / msce:.2f}x |")
    print("\n(MSCE text tokens ~ 1.3 x words; image and video tokens exact for the Qwen2-VL family.)")


if __name__ == "__main__":
    main()
