"""Report-time calibration of raw per-label scores (log-likelihoods); no model is called.

Methods (``METHODS``):

- ``none``: scores as they are.
- ``prior``: logit adjustment ``s - tau * log(prior)`` with the prior from training label counts
  (Menon et al. 2021), which removes a head-class bias shaped like the training distribution.
- ``estimated``: the model's label bias is estimated from the run's own softmax posteriors with
  :func:`pipeline.eval.longtail.estimate_prior` (EM of Saerens et al. 2002 from a uniform start), then the
  same logit adjustment. It needs no labels. By default EM runs **one** step, which is the mean
  posterior over the run: Batch Calibration (Zhou et al., ICLR 2024). More steps (``em_iters``) are
  available but not advised: Saerens' EM estimates the *test* prior of a *calibrated* classifier; on
  head-biased, uncalibrated scores its fixed point is degenerate (on synthetic 5-class scores with a
  0.5..0.03 bias the two rarest classes got prior < 1e-150 after 1000 steps, and subtracting it gave
  chance-level UAR 0.20, while the one-step estimate raised UAR from 0.50 to 0.65; oracle 0.66).
  The mean posterior mixes the model's bias with the test set's own skew, so on a skewed test set it
  removes some real signal too; tau < 1 (see :func:`tau_sweep`) softens it.

:func:`tau_sweep` scores several temperatures at once; tune tau on a held-out split, not the test set.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.eval.longtail import estimate_prior, logit_adjust
from pipeline.eval.metrics import encode_labels, class_counts, summarize
from pipeline.eval.ranking import choose_rows

METHODS = ("none", "prior", "estimated")


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large or ``-inf`` scores."""
    s = np.asarray(scores, dtype=float)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def prior_from_counts(counts: Mapping[str, int] | Sequence[int], labels: Sequence[str] | None = None,
                      smoothing: float = 0.0) -> np.ndarray:
    """Normalised prior from per-class counts (a dict needs ``labels`` for the order).

    ``smoothing`` is a pseudo-count added to every class; a zero count without it is an error,
    because its log-prior would be minus infinity.
    """
    if isinstance(counts, Mapping):
        if labels is None:
            raise ValueError("counts given as a dict need 'labels' to fix the class order")
        missing = [lab for lab in labels if lab not in counts]
        if missing:
            raise ValueError(f"training counts lack label(s) {missing}")
        c = np.array([counts[lab] for lab in labels], dtype=float)
    else:
        c = np.asarray(counts, dtype=float)
        if labels is not None and len(c) != len(labels):
            raise ValueError(f"{len(c)} counts for {len(labels)} labels")
    if np.any(c < 0) or smoothing < 0:
        raise ValueError("counts and smoothing must be >= 0")
    c = c + smoothing
    zero = [labels[i] if labels is not None else i for i in np.flatnonzero(c == 0)]
    if zero:
        raise ValueError(f"zero training count for {zero}: pass smoothing > 0 (e.g. 1) to use a prior")
    return c / c.sum()


def calibrate(scores: Any, method: str = "none", tau: float = 1.0,
              train_counts: Mapping[str, int] | Sequence[int] | None = None,
              labels: Sequence[str] | None = None, smoothing: float = 0.0,
              em_iters: int = 1) -> tuple[np.ndarray, dict]:
    """Calibrated scores (N x C) and a JSON-ready description (method, tau, prior used).

    ``smoothing`` is a pseudo-count for 'prior'; ``em_iters`` the EM steps for 'estimated'. A ``ValueError`` says what
    is wrong without naming the method (its caller does: ``dfer report`` prefixes "calibration '<method>': ")."""
    if method not in METHODS:
        raise ValueError(f"unknown method; allowed: {', '.join(METHODS)}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"scores must be an N x C matrix, got shape {s.shape}")
    info: dict = {"method": method, "tau": float(tau) if method != "none" else None, "prior": None}
    if method == "none":
        return s, info
    if method == "prior":
        if train_counts is None:
            raise ValueError("needs training label counts (train_counts; --train-counts FILE)")
        prior = prior_from_counts(train_counts, labels, smoothing)
        info["prior_source"] = "training label counts"
    else:
        if len(s) == 0:
            raise ValueError("needs at least one scored clip")
        prior = estimate_prior(softmax(s), iters=em_iters)
        info["prior_source"] = (f"{em_iters} EM step(s) from a uniform start over this run's softmax "
                                "posteriors (1 step = mean posterior, Batch Calibration)")
    info["prior"] = dict(zip(labels, prior.tolist())) if labels is not None else prior.tolist()
    return logit_adjust(s, prior, tau), info


def tau_sweep(scores: Any, y_true: Sequence, prior: Any, taus: Sequence[float],
              labels: Sequence[str] | None = None, scored: Sequence[str] | None = None) -> list[dict]:
    """UAR, WAR and macro-F1 of the label ranked first after ``scores - tau * log prior`` for each tau, by the one
    rule (:func:`pipeline.eval.ranking.choose`): a tie, or a row scored ``none`` (``scored``: each row's kind,
    default all ``exact``), is no prediction and counts as an error.

    ``y_true`` holds label indices, or label names when ``labels`` is given. ``prior=None`` uses the
    one-step estimate from the scores themselves (the ``estimated`` method; rows scored ``none`` left out).
    """
    s = np.asarray(scores, dtype=float)
    names = list(labels) if labels is not None else list(range(s.shape[1]))
    kinds = list(scored) if scored is not None else ["exact"] * len(s)
    if prior is None:
        ranked = [i for i, k in enumerate(kinds) if k != "none"]
        prior = estimate_prior(softmax(s[ranked]), iters=1) if ranked else np.full(s.shape[1], 1.0 / s.shape[1])
    y = list(y_true)
    if all(isinstance(v, (int, np.integer)) for v in y):
        t = np.asarray(y, dtype=np.int64)
        if len(t) and (t.min() < 0 or t.max() >= s.shape[1]):
            raise ValueError(f"label indices must be in 0..{s.shape[1] - 1}")
    else:
        t, _ = encode_labels(y, y, names)
    if len(t) != len(s):
        raise ValueError(f"{len(t)} true labels for {len(s)} score rows")
    out = []
    pos = {lab: i for i, lab in enumerate(names)}
    for tau in taus:
        chosen = choose_rows(logit_adjust(s, prior, float(tau)), names, kinds)
        pred = np.array([-1 if p is None else pos[p] for p, _ in chosen], dtype=np.int64)
        u, w, f = summarize(*class_counts(t, pred, len(names)))
        out.append({"tau": float(tau), "uar": u, "war": w, "macro_f1": f})
    return out
