"""Speed of the embedded captioner (``context.model.backend=expression``) against a VLM captioner, side by side.

What is compared, in this one process, round by round (so the noise of a shared machine hits both alike): the
context stage's ``process_batch`` over the same clips in one batch (as the runner hands a model stage a batch,
``run.batch_size`` 8 by default), with its backend loaded once beforehand, the artifacts written
(``context.json``), default context settings otherwise (windows, ``condense=model``, ``max_new_tokens=40``):

(e) **embedded captioner** - backend ``expression``: per clip, the expression stage's probabilities and the
    landmarks are read and one sentence is built per window, per gap (condense) - no language model;
(v) **tiny VLM captioner** - backend ``transformers`` on the tiny random Idefics3 (SmolVLM layout: SigLIP-style
    vision tower, 2-layer Llama text model) of ``tests/tiny_models.py``: face crops per window to the model,
    greedy captions, then one condense prompt per gap with more than one window. It is far smaller than the
    default captioner (SmolVLM-256M), so the ratio printed is a lower bound of what the embedded captioner saves.

The upstream artifacts (faces, expression, keyframes) are computed once with the runner and read by both.
Clips (``tests/media.py``, the astronaut face, 320x240 at 25 fps, 3 s): a still face, a pan, a zoom, and a
still face with a mouth-opening event.

Printed: clips/s of each (median over rounds) and (e)/(v), the median of the per-round ratios.
torch runs on ``--threads`` threads (default 1). Run: ``python benchmarks/expression_captioner.py`` (about a
minute on 2 cores; ``--rounds 2`` for a quick look). Absolute times on a shared machine mean little; read the ratio.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.core.cache import ArtifactWriter, Cache  # noqa: E402
from pipeline.engine.config import load_config  # noqa: E402
from pipeline.core.jobs import ClipJob  # noqa: E402
from pipeline.engine.runner import run_pipeline  # noqa: E402
from stages import context  # noqa: E402
from tests.media import make_face_clip  # noqa: E402
from tests.tiny_models import tiny_model_dir  # noqa: E402

CLIPS = {
    "still.mp4": dict(motion="static"),
    "pan.mp4": dict(motion="pan"),
    "zoom.mp4": dict(motion="zoom"),
    "mouth.mp4": dict(motion="static", expression=(1.0, 2.0)),
}


def upstream_jobs(root: Path) -> list[ClipJob]:
    """The clips, their faces, expression and keyframes artifacts computed once through the runner."""
    clips = root / "clips"
    clips.mkdir()
    for i, (name, kw) in enumerate(CLIPS.items()):
        make_face_clip(clips / name, codec="h264", size=(320, 240), fps=25, seconds=3.0, seed=i, **kw)
    cfg = load_config(None, ["run.progress=false", "run.workers=1", "keyframes.strategy=uniform"])
    res = run_pipeline(clips, root / "run", cfg, cache_dir=root / "cache", until="keyframes", log=io.StringIO())
    cache = Cache(root / "cache")
    # the embedded captioner reads the expression stage too (faces come from the cache)
    exp = run_pipeline(clips, root / "run-e", cfg, cache_dir=root / "cache", until="expression", log=io.StringIO())
    jobs = []
    for name in CLIPS:
        keys = {**res.keys[name], "expression": exp.keys[name]["expression"]}
        jobs.append(ClipJob(name, clips / name, "", None, {s: cache.get(s, keys[s]) for s in ("faces", "expression", "keyframes")}))
    return jobs


def timed(cfg: context.Config, backend, jobs: list[ClipJob], out_dir: Path) -> float:
    t0 = time.perf_counter()
    fills = context.process_batch(jobs, cfg, backend)
    for i, fill in enumerate(fills):
        target = out_dir / str(i)
        target.mkdir(parents=True, exist_ok=True)
        fill(ArtifactWriter(target))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = upstream_jobs(root)
        embedded = load_config(None, ["context.model.backend=expression"]).context
        vlm = load_config(None, [f"context.model.model={tiny_model_dir('idefics3', root / 'models')}",
                                 "context.model.device=cpu"]).context
        backends = {"embedded": context.STAGE.open(embedded), "vlm": context.STAGE.open(vlm)}
        cfgs = {"embedded": embedded, "vlm": vlm}
        for name in backends:  # warm-up
            timed(cfgs[name], backends[name], jobs, root / "out" / "warm" / name)
        secs: dict[str, list[float]] = {"embedded": [], "vlm": []}
        for r in range(args.rounds):
            for name in (("embedded", "vlm") if r % 2 == 0 else ("vlm", "embedded")):
                secs[name].append(timed(cfgs[name], backends[name], jobs, root / "out" / str(r) / name))
        for b in backends.values():
            context.STAGE.close(b)
    n = len(jobs)
    rate = {k: n / statistics.median(v) for k, v in secs.items()}
    ratio = statistics.median(v / e for e, v in zip(secs["embedded"], secs["vlm"]))
    print(f"context stage over {n} clips (320x240, 3 s, 5 gaps each), {args.rounds} rounds, {args.threads} torch thread(s)")
    print(f"  embedded captioner (backend expression): {rate['embedded']:8.1f} clips/s")
    print(f"  tiny VLM captioner (tiny Idefics3):       {rate['vlm']:8.2f} clips/s")
    print(f"  embedded / tiny VLM: {ratio:.0f}x the clips per second (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
