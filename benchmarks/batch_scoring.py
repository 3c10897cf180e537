"""Label scoring: batched vs one prompt at a time, same tiny model, same run.

    python benchmarks/batch_scoring.py [--family qwen2vl|idefics3] [--model DIR] [--clips 16] [--images 4]
                                       [--batch 8] [--repeats 3] [--threads 1]

Scores ``--clips`` prompts (each with ``--images`` small random images and a question) against the 7 basic
emotion labels three ways with the transformers backend:

* ``batched``: ``batch_size=--batch`` (right-padded prompts, one prefill per batch, all label continuations of
  the batch in one pass over the repeated prompt KV cache);
* ``one-at-a-time``: the same cached route with ``batch_size=1``;
* ``full-sequence``: no KV reuse; every ``prompt + label`` sequence is run in full (images re-encoded per label),
  one prompt at a time with its labels batched; this is the fallback route.

Prints the median wall time of each over ``--repeats`` runs (after one warm-up) and the ratios. With a tiny random
model the numbers measure per-call overhead more than arithmetic; on a real model and a GPU the batched prefill is
where the gain comes from. Without ``--model`` a tiny Qwen2-VL (or Idefics3) is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2vl", choices=["qwen2vl", "idefics3"])
    ap.add_argument("--model", default=None, help="a local checkpoint folder instead of a tiny model")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from pipeline.backends import ModelConfig, Prompt, load_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    model_dir = args.model
    if model_dir is None:
        from tests.tiny_models import tiny_model_dir

        tmp = tempfile.TemporaryDirectory(prefix="dfer-bench-")
        model_dir = tiny_model_dir(args.family, tmp.name)

    rng = np.random.default_rng(0)
    prompts = []
    for i in range(args.clips):
        imgs = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(args.images)]
        words = " ".join(["brows raised, mouth slightly open"] * (1 + i % 3))  # prompts of different lengths
        prompts.append(Prompt(imgs + [f"Between keyframes: {words}. Which emotion is shown? Answer with one word."]))

    batched = load_backend(ModelConfig(model=model_dir, batch_size=args.batch))
    single = load_backend(ModelConfig(model=model_dir, batch_size=1))
    full = load_backend(ModelConfig(model=model_dir, batch_size=1))
    full.scoring_mode, full._verified = "full", True

    def timed(backend) -> tuple[float, list]:
        backend.score_labels(prompts[:2], LABELS)  # warm-up
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = backend.score_labels(prompts, LABELS)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    t_b, s_b = timed(batched)
    t_1, s_1 = timed(single)
    t_f, s_f = timed(full)
    worst = max(
        abs(a[lab].logprob - b[lab].logprob) for x, y in ((s_b, s_1), (s_b, s_f)) for a, b in zip(x, y) for lab in LABELS
    )
    print(f"model: {model_dir} ({batched.model.__class__.__name__}, {batched.model.dtype}, {batched.input_device})")
    print(f"{args.clips} prompts x {args.images} images, {len(LABELS)} labels, torch threads={torch.get_num_threads()}")
    rows = [
        (f"batched (batch_size={args.batch}, KV reuse)", t_b),
        ("one at a time (KV reuse)", t_1),
        ("one at a time, full sequences", t_f),
    ]
    for name, t in rows:
        print(f"  {name:<38} {t * 1000:8.1f} ms")
    print(f"ratio one-at-a-time / batched: {t_1 / t_b:.2f}x")
    print(f"ratio full-sequence / batched: {t_f / t_b:.2f}x")
    print(f"max |score difference| between the three: {worst:.2e}")
    for b in (batched, single, full):
        b.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
