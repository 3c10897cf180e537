"""Long-tail benchmark: samplers and post-hoc calibration on a real long-tailed split.

Data: scikit-learn's bundled ``load_digits`` (1,797 8x8 digit images, 10 classes; no download).
Per seed, the classes are put in a random order and the training split is made exponentially
long-tailed, n_c = floor(n_max * ratio ** (-c / (C - 1))) for rank c = 0..C-1 (Cui et al.,
"Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019), with n_max = 100 and
ratio = 100, i.e. 100, 59, 35, 21, 12, 7, 4, 2, 1, 1 images. The test split is balanced (60 per
class) and disjoint from training. A small MLP (64-64-10, Adam) is trained with each sampler of
``pipeline.eval.longtail``; the instance-sampled model is also corrected after training with
logit adjustment (training prior, tau = 1), with report-time ``estimated`` calibration (no training
counts needed), and with Saerens' EM test prior (training prior known).

Run: ``python benchmarks/longtail.py [--seeds 10] [--epochs 100]``; about 15 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from pipeline.eval.calibration import calibrate, softmax
from pipeline.eval.longtail import STRATEGIES, estimate_prior, logit_adjust, make_sampler
from pipeline.eval.metrics import compute_metrics


def long_tailed_split(x, y, seed, n_max=100, ratio=100.0, n_test=60):
    """(x_train, y_train, x_test, y_test): exponentially long-tailed train, balanced test."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y))
    n_classes = len(classes)
    tr, te = [], []
    for rank, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_c = max(1, int(n_max * ratio ** (-rank / (n_classes - 1))))
        te.extend(idx[:n_test])
        tr.extend(idx[n_test:n_test + n_c])
    tr, te = np.array(tr), np.array(te)
    return x[tr], y[tr], x[te], y[te]


def train_mlp(x, y, strategy, epochs, seed, batch=32):
    """Train a 64-64-10 MLP; each epoch draws len(y) samples with ``strategy``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for epoch in range(epochs):
        sampler = make_sampler(y.tolist(), strategy, epoch=epoch, total_epochs=epochs, seed=seed * 1000)
        idx = torch.as_tensor(list(sampler))
        for start in range(0, len(idx), batch):
            b = idx[start:start + batch]
            loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


POST_HOC = ("instance + logit adjustment (train prior, tau=1)",
            "instance + estimated prior (report-time, no counts)",
            "instance + Saerens EM test prior (train prior known)")


def run(seeds: int, epochs: int) -> dict[str, list[tuple[float, ...]]]:
    """Per method, one (UAR, WAR, tail-third UAR, total variation) tuple per seed."""
    torch.set_num_threads(1)
    data = load_digits()
    x, y = data.data / 16.0, data.target
    results: dict[str, list[tuple[float, ...]]] = {}

    def record(name, logits, y_test, train_counts):
        pred = np.asarray(logits).argmax(axis=1).tolist()
        m = compute_metrics(y_test.tolist(), pred, list(range(10)), train_counts=train_counts, n_boot=0)
        results.setdefault(name, []).append((m["uar"], m["war"], m["groups"]["by_group"]["tail"]["uar"],
                                             m["collapse"]["total_variation"]))

    for seed in range(seeds):
        x_tr, y_tr, x_te, y_te = long_tailed_split(x, y, seed)
        if seed == 0:
            print(f"train per class (head->tail): {sorted(np.bincount(y_tr).tolist(), reverse=True)}, "
                  f"test per class: {np.bincount(y_te).tolist()[0]}")
        x_te_t = torch.as_tensor(x_te, dtype=torch.float32)
        for strategy in STRATEGIES:
            model = train_mlp(x_tr, y_tr, strategy, epochs, seed)
            with torch.no_grad():
                logits = model(x_te_t).numpy()
            counts = np.bincount(y_tr, minlength=10)
            record(strategy, logits, y_te, counts.tolist())
            if strategy != "instance":
                continue
            train_prior = counts / counts.sum()
            test_prior = estimate_prior(softmax(logits), train_prior=train_prior)
            for name, adjusted in zip(POST_HOC, (
                    logit_adjust(logits, train_prior, 1.0),
                    calibrate(logits, "estimated")[0],
                    logits + np.log(np.clip(test_prior, 1e-12, None)) - np.log(train_prior))):
                record(name, adjusted, y_te, counts.tolist())
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = run(args.seeds, args.epochs)
    base = np.array(results["instance"])[:, 0]
    print(f"\nload_digits, long-tailed 100:1 train, balanced test (so WAR = UAR); {args.seeds} seeds, "
          "mean ± std in %; tail = 3 rarest classes; TV = total variation predicted vs true distribution\n")
    print("| method | UAR | WAR | tail UAR | TV | UAR / UAR(instance) |")
    print("|---|---|---|---|---|---|")
    for name in (*STRATEGIES, *POST_HOC):
        v = np.array(results[name])
        cells = " | ".join(f"{100 * v[:, j].mean():.1f} ± {100 * v[:, j].std():.1f}" for j in range(4))
        print(f"| {name} | {cells} | {(v[:, 0] / base).mean():.3f} |")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
