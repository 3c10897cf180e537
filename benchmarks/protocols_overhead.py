"""What the protocol features of issue 23 cost, measured side by side in one run.

1. **Run card**, in a warm run: ``python -m pipeline.cli run FOLDER --until keyframes -q`` over clips that are
   already cached, with the code before the run card (``--before``, default ``main``: a ``git archive`` of it, see
   ``baseline_tree.py``) and with this tree, interleaved, each a whole command as a user sees it (Python start-up
   included); the card is written twice per run (start and end: git commit, library versions, models).
2. **build_card** alone, in this process: the start card and the end card (torch loaded, devices resolved).
3. **Paired statistics** on a DFEW-sized fold (2341 clips, 7 classes, 1000 resamples): ``paired_bootstrap`` of two
   runs against ``bootstrap_ci`` of one run (what every report computes already), and McNemar's test.
4. **Disjointness**: ``check_disjoint`` of a DFEW fold's 9356 training fingerprints against its 2341 test clips.

Run: ``python benchmarks/protocols_overhead.py`` (``--clips 40 --rounds 5`` by default; the clips are made once into
``~/.cache/dfer-bench/protocols-N``).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from baseline_tree import env_for, unpack  # noqa: E402

med = statistics.median


def make_clips(folder: Path, n: int) -> None:
    from tests.media import make_face_clip

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = folder / f"c{i:04d}.mp4"
        if not p.is_file():
            make_face_clip(p, size=(160, 120), fps=10, seconds=2.0, motion="pan", seed=i)


def dfer_run(tree: Path, folder: Path, cache: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(out), "--cache", str(cache),
                    "--until", "keyframes", "-q"], cwd=tree, env=env_for(tree), check=True, capture_output=True)
    return time.perf_counter() - t0


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return med(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", default="main", help="the revision to compare with (default: main)")
    args = ap.parse_args()

    folder = Path.home() / ".cache" / "dfer-bench" / f"protocols-{args.clips}"
    make_clips(folder, args.clips)
    with tempfile.TemporaryDirectory(prefix="dfer-bench-protocols-") as tmp_name:
        tmp = Path(tmp_name)
        before, commit = unpack(args.before, tmp / "before")
        trees = {"before": before, "after": REPO}
        for name, tree in trees.items():  # fill each tree's cache (keys are the same; separate caches all the same)
            dfer_run(tree, folder, tmp / f"cache-{name}", tmp / f"run-{name}")
        warm: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                warm[name].append(dfer_run(trees[name], folder, tmp / f"cache-{name}", tmp / f"run-{name}"))
        assert (tmp / "run-after" / "runcard.json").is_file() and not (tmp / "run-before" / "runcard.json").exists()

    from pipeline.engine.config import load_config
    from pipeline.engine.runcard import build_card
    from pipeline.engine.disjoint import check_disjoint
    from pipeline.eval.metrics import bootstrap_ci
    from pipeline.eval.paired import mcnemar, paired_bootstrap

    cfg = load_config(None, ["classify.model.backend=expression", "context.model.backend=expression"])
    sections = {s: getattr(cfg, s) for s in ("faces", "expression", "keyframes", "context", "classify")}
    start_card = timed(lambda: build_card(sections, complete=False), 10)
    import torch  # noqa: F401 - the end card resolves devices where torch is loaded

    end_card = timed(lambda: build_card(sections, complete=True), 10)

    rng = np.random.default_rng(0)
    t = rng.integers(0, 7, 2341)
    pa = np.where(rng.random(2341) < 0.5, t, rng.integers(0, 7, 2341))
    pb = np.where(rng.random(2341) < 0.1, rng.integers(0, 7, 2341), pa)
    one_ci = timed(lambda: bootstrap_ci(t, pa, 7, 1000, 0), 3)
    paired = timed(lambda: paired_bootstrap(t, pa, pb, 7, 1000, 0), 3)
    mc = timed(lambda: mcnemar(pa == t, pb == t), 10)

    def fp(i):
        return hashlib.sha256(str(i).encode()).hexdigest()

    train = {f"train/{i:05d}.mp4": fp(i) for i in range(9356)}
    test = {f"test/{i:05d}.mp4": fp(100000 + i) for i in range(2341)}
    disjoint = timed(lambda: check_disjoint(train, test, "train", "test"), 10)

    b, a = med(warm["before"]), med(warm["after"])
    print(f"=== warm `dfer run --until keyframes` over {args.clips} cached clips, whole command, median of "
          f"{args.rounds} interleaved rounds ===")
    print(f"before ({args.before} = {commit[:8]}): {b:.2f} s ({', '.join(f'{v:.2f}' for v in warm['before'])})")
    print(f"after (this tree, run card written twice): {a:.2f} s ({', '.join(f'{v:.2f}' for v in warm['after'])})")
    print(f"after / before: {a / b:.3f}  (median of per-round ratios "
          f"{med([x / y for x, y in zip(warm['after'], warm['before'])]):.3f})")
    print("=== in this process ===")
    print(f"build_card at the start: {1000 * start_card:.1f} ms; at the end (torch loaded, devices resolved): "
          f"{1000 * end_card:.1f} ms")
    print(f"one run's bootstrap CIs (2341 clips, 1000 resamples): {1000 * one_ci:.0f} ms; paired bootstrap of two runs: "
          f"{1000 * paired:.0f} ms (ratio {paired / one_ci:.2f}); McNemar: {1000 * mc:.2f} ms")
    print(f"check_disjoint, 9356 training against 2341 test fingerprints: {1000 * disjoint:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
