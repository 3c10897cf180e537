"""classify's model work at several model batch sizes, before and after a change, side by side (CPU).

    python benchmarks/classify_batching.py [--before REF] [--clips 32] [--batches 8,32] [--words 3-40]
                                           [--rounds 3] [--threads 1]

Why: on an H200 ``classify`` ran at 8.5 clips/s with ``classify.model.batch_size=8`` and 6.1 with 32
(``docs/cluster.md``). This reproduces the per-prompt costs that grow with the batch on the CPU, with a model whose
shapes matter for them: a random Qwen2.5-VL of the same architecture as ``benchmarks/gpu_throughput.py --tiny``
(2 layers, hidden 64) with the *real* processor settings and the real vocabulary size (224-pixel crops cost 64
image tokens; the LM head has 151,936 rows). Each clip's prompt is the classify prompt (``prompts/classify.j2``,
rendered by ``stages.templates.PromptRenderer``) of 4 random 224x224 "keyframes" and 5 motion summaries of
``--words`` random face words each (the prompts' lengths differ as real summaries make them differ), scored over
the 7 DFEW labels; then, as ``stages/classify.py`` does per clip, the prompt's tokens are counted and the dense
baseline's cost estimated (a text-only prompt, one image, an empty prompt).

What is compared: the code at ``--before`` (default: main before issue 25's work on the transformers backend) and
the working tree, each in its own long-lived child process (``PYTHONPATH`` on one tree, torch with ``--threads``
threads), the model loaded once per child. Every round asks both children for every batch size, in an order
reversed every other round, so the noise of a shared machine hits both alike. Printed: per tree and batch size
the median CPU seconds (the child's process time) and wall seconds per clip over the rounds; the ratios batch 32 /
batch 8 per tree and after / before per batch size (medians of the per-round ratios); and the largest difference
between the trees' label scores (they must agree: the change is in what is computed, not in the result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import REPO, TreeProcess, unpack  # noqa: E402

BEFORE_SCORING = "30b8e91"  # main when issue 25's transformers-backend work started
LABELS = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
WORDS = ("brows raised lowered mouth open closed eyes wide narrowed smile corners lips pressed pulled head tilt nod "
         "frown jaw drop cheeks raise slightly strongly left right upper lower inner outer wrinkle nose blink").split()
med = statistics.median


def prompts(n: int, words: tuple[int, int], seed: int = 0):
    """``n`` classify prompts: 4 keyframes (random 224x224 images) and 5 summaries of ``words`` random words."""
    import numpy as np
    from PIL import Image

    from stages.templates import PromptRenderer, image_slots

    rng = np.random.default_rng(seed)
    renderer = PromptRenderer(None, "classify.j2")
    out = []
    for _ in range(n):
        slots = image_slots(4)
        items, t = [], 0.0
        for k in range(5):
            gap = "lead_in" if k == 0 else "lead_out" if k == 4 else "between"
            text = " ".join(rng.choice(WORDS, int(rng.integers(words[0], words[1] + 1))))
            items.append({"kind": "motion", "gap": gap, "t_start": t, "t_end": t + 0.6, "text": text})
            t += 0.6
            if k < 4:
                items.append({"kind": "frame", "t": t, "image": slots[k]})
        images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(4)]
        out.append(renderer.render(images, timeline=items, trajectory=None, labels=LABELS, timestamps=True))
    return out


def child_main(model_dir: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from pipeline.backends import ModelConfig, Prompt, load_backend

    backend = load_backend(ModelConfig(model=model_dir, batch_size=8))
    cache: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            key = (cmd["clips"], tuple(cmd["words"]))
            if key not in cache:
                cache[key] = prompts(cmd["clips"], tuple(cmd["words"]))
            batch = cache[key]
            backend.cfg.batch_size = cmd["batch"]
            backend._token_counts = type(getattr(backend, "_token_counts", {}))()  # each call starts cold (after)
            c0, w0 = time.process_time(), time.perf_counter()
            scores = backend.score_labels(batch, LABELS)
            c1 = time.process_time()
            tokens = []
            for p in batch:  # what stages/classify.py asks per clip after scoring
                tokens.append(backend.count_prompt_tokens(p))
                backend.count_prompt_tokens(Prompt([x for x in p.parts if isinstance(x, str)]))
                backend.count_prompt_tokens(Prompt([p.images[0], " "]))
                backend.count_prompt_tokens(Prompt([" "]))
            c2, w2 = time.process_time(), time.perf_counter()
            out = {"cpu": c2 - c0, "score_cpu": c1 - c0, "count_cpu": c2 - c1, "wall": w2 - w0, "tokens": tokens,
                   "scores": [[row[lab].logprob for lab in LABELS] for row in scores]}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BEFORE_SCORING, help="git revision of the 'before' code")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batches", default="8,32", help="classify.model.batch_size values")
    ap.add_argument("--words", default="3-40", help="words per motion summary, LO-HI (3-40: lengths differ; 20-20: equal)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child[0], int(args.child[1]))
        return 0

    sys.path.insert(0, str(REPO))
    import torch

    from gpu_throughput import build_checkpoint

    batches = [int(b) for b in args.batches.split(",")]
    lo, hi = (int(v) for v in args.words.split("-"))
    with tempfile.TemporaryDirectory(prefix="dfer-bench-classify-") as tmp:
        tmp = Path(tmp)
        build_checkpoint(tmp / "model", tiny=True, device="cpu", dtype=torch.float32)
        before_tree, commit = unpack(args.before, tmp / "before")
        script = Path(__file__).resolve()
        trees = {"before": TreeProcess(script, before_tree, str(tmp / "model"), str(args.threads)),
                 "after": TreeProcess(script, REPO, str(tmp / "model"), str(args.threads))}
        try:
            def ask(name: str, bs: int) -> dict:
                return trees[name].ask(clips=args.clips, words=[lo, hi], batch=bs)

            for name in trees:  # warm-up, excluded
                ask(name, batches[0])
            runs: dict = {(name, bs): [] for name in trees for bs in batches}
            for r in range(args.rounds):
                order = [(n, b) for n in trees for b in batches]
                for name, bs in order if r % 2 == 0 else order[::-1]:
                    runs[name, bs].append(ask(name, bs))
                ms = "  ".join(f"{n} b{b} {runs[n, b][-1]['cpu'] / args.clips * 1000:.1f}" for n, b in order)
                print(f"round {r + 1}/{args.rounds}: {ms} ms CPU/clip", flush=True)
        finally:
            for child in trees.values():
                child.close()

    tokens = runs["after", batches[0]][0]["tokens"]
    print(f"\n{args.clips} classify prompts of {min(tokens)}-{max(tokens)} tokens (4 images of 64 tokens, summaries of "
          f"{lo}-{hi} words), 7 labels; tiny Qwen2.5-VL, real processor and vocabulary; torch {torch.__version__}, "
          f"{args.threads} thread(s); before = {commit[:12]} ({args.before}), after = working tree; {args.rounds} rounds")
    print(f"{'tree':>7s} {'batch':>5s} {'CPU ms/clip':>12s} {'scoring':>8s} {'counting':>9s} {'wall ms/clip':>13s}")
    for (name, bs), rs in runs.items():
        ms = {k: med(x[k] for x in rs) / args.clips * 1000 for k in ("cpu", "score_cpu", "count_cpu", "wall")}
        print(f"{name:>7s} {bs:5d} {ms['cpu']:12.1f} {ms['score_cpu']:8.1f} {ms['count_cpu']:9.1f} {ms['wall']:13.1f}")

    def ratio(a, b, key="cpu"):
        return med(x[key] / y[key] for x, y in zip(runs[a], runs[b]))

    big, small = max(batches), min(batches)
    for name in trees:
        print(f"{name}: batch {big} / batch {small}, CPU time per clip: {ratio((name, big), (name, small)):.2f} "
              f"(wall {ratio((name, big), (name, small), 'wall'):.2f})")
    for bs in batches:
        print(f"batch {bs}: after / before, CPU time per clip: {ratio(('after', bs), ('before', bs)):.2f} "
              f"(scoring alone {ratio(('after', bs), ('before', bs), 'score_cpu'):.2f}; wall "
              f"{ratio(('after', bs), ('before', bs), 'wall'):.2f})")
    worst = max(abs(a - b) for bs in batches for x, y in zip(runs["before", bs][0]["scores"], runs["after", bs][0]["scores"])
                for a, b in zip(x, y))
    across = max(abs(a - b) for x, y in zip(runs["after", small][0]["scores"], runs["after", big][0]["scores"])
                 for a, b in zip(x, y))
    print(f"largest label-score difference: before vs after {worst:.2e}; after, batch {small} vs {big} {across:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
