"""Paired statistics of two classifiers on the same clips: is B better than A, or is the difference noise?

- :func:`paired_bootstrap`: the differences B - A in UAR, WAR and macro-F1, each with a percentile confidence
  interval from resamples of the clips in which both runs are resampled *together* (the same clip indices for A and
  B), so the variation the two share (hard clips are hard for both) cancels. A difference whose interval excludes
  zero is called significant at that level.
- :func:`mcnemar`: McNemar's test on per-clip correctness: of the clips exactly one run got right, ``b`` only A and
  ``c`` only B. Under "equally accurate" ``b`` is Binomial(b + c, 1/2); the exact two-sided p-value is
  ``min(1, 2 P(X <= min(b, c)))`` (as ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``); the chi-square
  statistic with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` with 1 degree of freedom, is given beside it.

Predictions are label indices, -1 for a clip without a prediction (failed or abstained: always wrong), as in
:mod:`pipeline.eval.metrics`.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.eval.metrics import class_counts, resample_chunks, resampled_metrics, summarize

METRICS = ("uar", "war", "macro_f1")


def paired_bootstrap(t: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """``{metric: {"a", "b", "diff", "ci": [lo, hi] | None, "excludes_zero": bool | None}}`` for UAR, WAR and
    macro-F1, ``diff`` = B - A on all clips, the CI over ``n_boot`` paired resamples (``n_boot=0``: no CI)."""
    t, pred_a, pred_b = (np.asarray(x, dtype=np.int64) for x in (t, pred_a, pred_b))
    if not len(t) == len(pred_a) == len(pred_b):
        raise ValueError(f"{len(t)} true labels, {len(pred_a)} and {len(pred_b)} predictions")
    a = summarize(*class_counts(t, pred_a, n_classes))
    b = summarize(*class_counts(t, pred_b, n_classes))
    ci = None
    if len(t) and n_boot > 0:
        diffs = np.empty((n_boot, 3))
        for start, idx in resample_chunks(len(t), n_boot, seed):
            diffs[start:start + len(idx)] = (resampled_metrics(t, pred_b, idx, n_classes)
                                             - resampled_metrics(t, pred_a, idx, n_classes))
        lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
        ci = np.percentile(diffs, [lo, hi], axis=0)
    out = {}
    for j, name in enumerate(METRICS):
        interval = None if ci is None or not len(t) else [float(ci[0, j]), float(ci[1, j])]
        out[name] = {"a": _finite(a[j]), "b": _finite(b[j]), "diff": _finite(b[j] - a[j]), "ci": interval,
                     "excludes_zero": None if interval is None else bool(interval[0] > 0 or interval[1] < 0)}
    return {"level": level, "n_boot": int(n_boot), "seed": int(seed), "n": int(len(t)), "metrics": out}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def binomial_two_sided(k: int, n: int) -> float:
    """``min(1, 2 P(X <= k))`` for X ~ Binomial(n, 1/2) and k <= n/2 (exact, in log space so that n may be large)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(k + 1)]
    top = max(log_terms)
    cdf = math.exp(top) * sum(math.exp(x - top) for x in log_terms)
    return min(1.0, 2 * cdf)


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test on two boolean vectors of per-clip correctness (see the module docstring): the 2x2 table
    (``both``, ``only_a``, ``only_b``, ``neither``), the exact p-value and the continuity-corrected chi-square with
    its p-value (None when no clip is discordant)."""
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if len(ca) != len(cb):
        raise ValueError(f"{len(ca)} and {len(cb)} clips")
    only_a, only_b = int((ca & ~cb).sum()), int((~ca & cb).sum())
    n = only_a + only_b
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n if n else None
    return {"both": int((ca & cb).sum()), "only_a": only_a, "only_b": only_b, "neither": int((~ca & ~cb).sum()),
            "discordant": n, "p_exact": binomial_two_sided(min(only_a, only_b), n),
            "chi2": chi2, "p_chi2": math.erfc(math.sqrt(chi2 / 2)) if chi2 is not None else None}
