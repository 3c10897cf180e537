"""Long-tail tools: class-aware sampling, logit adjustment, test-prior estimation.

Sampling strategies are defined by the probability ``p_c`` of drawing class ``c`` (``n_c`` training
examples, ``C`` classes); every example of a class gets ``p_c / n_c``:

- ``instance``:    p_c = n_c / N                (uniform over examples)
- ``sqrt``:        p_c ∝ n_c ** 0.5              (square-root sampling)
- ``balanced``:    p_c = 1 / C                   (class-balanced)
- ``progressive``: p_c = (1 - a) * p_instance + a * p_balanced, a = epoch / (total_epochs - 1)

These follow Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
ICLR 2020 (their p_j = n_j^q / sum n_i^q with q = 1, 1/2, 0, and progressively balanced sampling).
Epochs count from 0, so the first epoch is instance-balanced and the last one class-balanced.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np

STRATEGIES = ("instance", "sqrt", "balanced", "progressive")


def _is_tensor(x: Any) -> bool:
    """A torch tensor, told without importing torch (report-time calibration never needs it)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if _is_tensor(x) else x


def _classes(labels: Sequence[Hashable]) -> tuple[list, np.ndarray, np.ndarray]:
    """Sorted distinct classes, per-sample class index, and per-class counts."""
    labels = list(labels.tolist() if isinstance(labels, np.ndarray) or _is_tensor(labels) else labels)
    if not labels:
        raise ValueError("labels is empty: need at least one training label")
    classes = sorted(set(labels), key=lambda c: (str(type(c)), c))
    pos = {c: i for i, c in enumerate(classes)}
    idx = np.fromiter((pos[c] for c in labels), dtype=np.int64, count=len(labels))
    return classes, idx, np.bincount(idx, minlength=len(classes))


def class_probabilities(labels: Sequence[Hashable], strategy: str, epoch: int = 0,
                        total_epochs: int = 1) -> tuple[list, np.ndarray]:
    """(classes, probability of drawing each class) for ``strategy``; see the module docstring."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy '{strategy}'; allowed: {', '.join(STRATEGIES)}")
    classes, _, counts = _classes(labels)
    n = counts.astype(float)
    instance = n / n.sum()
    balanced = np.full(len(n), 1.0 / len(n))
    if strategy == "instance":
        return classes, instance
    if strategy == "sqrt":
        return classes, np.sqrt(n) / np.sqrt(n).sum()
    if strategy == "balanced":
        return classes, balanced
    if total_epochs < 2:
        raise ValueError("strategy 'progressive' needs total_epochs >= 2 (it moves from instance to "
                         f"balanced sampling over the epochs), got total_epochs={total_epochs}")
    if not 0 <= epoch <= total_epochs - 1:
        raise ValueError(f"epoch must be in 0..{total_epochs - 1} (0-based), got {epoch}")
    a = epoch / (total_epochs - 1)
    return classes, (1 - a) * instance + a * balanced


def sampling_weights(labels: Sequence[Hashable], strategy: str, epoch: int = 0,
                     total_epochs: int = 1) -> np.ndarray:
    """Per-sample sampling probabilities (summing to 1) for ``strategy``."""
    _, idx, counts = _classes(labels)
    _, p_class = class_probabilities(labels, strategy, epoch, total_epochs)
    w = p_class[idx] / counts[idx]
    return w / w.sum()


def make_sampler(labels: Sequence[Hashable], strategy: str, num_samples: int | None = None,
                 epoch: int = 0, total_epochs: int = 1, generator: "torch.Generator | None" = None,  # noqa: F821
                 seed: int = 0) -> "WeightedRandomSampler":  # noqa: F821
    """A seeded with-replacement sampler drawing ``num_samples`` (default: len(labels)) indices.

    Without ``generator``, one is seeded with ``seed + epoch``, so every epoch draws differently and
    a rerun draws the same. For ``progressive``, build a new sampler each epoch.
    """
    import torch
    from torch.utils.data import WeightedRandomSampler

    w = sampling_weights(labels, strategy, epoch, total_epochs)
    n = len(w) if num_samples is None else int(num_samples)
    if n <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed) + int(epoch))
    return WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), n, replacement=True,
                                 generator=generator)


def _check_prior(prior: Any, n_classes: int) -> np.ndarray:
    p = np.asarray(_numpy(prior), dtype=float)
    if p.ndim != 1 or len(p) != n_classes:
        raise ValueError(f"prior must be a vector of {n_classes} class probabilities, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("prior must be finite and > 0 for every class (a class never seen in training "
                         f"has prior 0: smooth the counts first); got {p.tolist()}")
    return p / p.sum()


def logit_adjust(logits: Any, prior: Any, tau: float = 1.0) -> Any:
    """``logits - tau * log(prior)`` along the last axis (Menon et al., "Long-tail learning via logit
    adjustment", ICLR 2021, post-hoc form). Returns the same type as ``logits`` (numpy or torch)."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if not _is_tensor(logits):
        logits = np.asarray(logits, dtype=float)
    log_p = np.log(_check_prior(prior, logits.shape[-1]))
    if _is_tensor(logits):
        return logits - tau * logits.new_tensor(log_p)
    return logits - tau * log_p


def estimate_prior(probs: Any, iters: int = 1000, train_prior: Any = None, tol: float = 1e-10) -> np.ndarray:
    """Estimate the class prior of an unlabelled test set by EM (Saerens, Latinne & Decaestecker,
    "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

    ``probs`` (N x C) are posteriors computed under ``train_prior`` (default: uniform, i.e. the scores
    are treated as class likelihoods). Each step re-weights every posterior by prior / train_prior,
    renormalises it, and takes the mean as the new prior, starting from ``train_prior``.
    """
    p = np.asarray(_numpy(probs), dtype=float)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be an N x C matrix with N >= 1, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p.sum(axis=1) <= 0):
        raise ValueError("probs must be finite and non-negative, with every row summing to more than 0")
    p = p / p.sum(axis=1, keepdims=True)
    c = p.shape[1]
    base = np.full(c, 1.0 / c) if train_prior is None else _check_prior(train_prior, c)
    prior = base.copy()
    for _ in range(int(iters)):
        q = p * (prior / base)
        q /= np.clip(q.sum(axis=1, keepdims=True), 1e-300, None)
        new = q.mean(axis=0)
        done, prior = np.abs(new - prior).max() < tol, new
        if done:
            break
    return prior / prior.sum()
