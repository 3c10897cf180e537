"""Evaluation metrics for closed-set emotion recognition, with long-tail diagnostics.

Definitions (scikit-learn's formulas, with the label list always passed explicitly):

- WAR = accuracy over all clips; UAR = mean per-class recall (``balanced_accuracy_score``);
  macro-F1 = mean per-class F1.
- A class with **no true examples** has undefined recall and F1: they are reported as ``null``, the
  class is left out of UAR and macro-F1 (and named in ``classes_without_examples`` and ``warnings``).
  scikit-learn would count it as 0 in macro-F1; we exclude it so UAR and macro-F1 average over the
  same classes. Its precision still counts if it was predicted (false positives are real errors).
- A class never predicted has undefined precision (``null``); its F1 is 0 when it has examples.
- ``y_pred`` may contain ``None`` ("no prediction", e.g. a failed clip): always wrong, it lowers the
  recall of the true class and WAR but falls in no confusion-matrix column.
- Groups: classes sorted by training count (descending; ties in label order) and cut into thirds by
  rank with ``numpy.array_split`` (head gets the extra class first, then medium). Without training
  counts the test support is used, and ``groups.source`` says so. Users may pass their own groups.
- Bootstrap CIs: percentile intervals over ``n_boot`` resamples of clips (with replacement, seeded).
"""

from __future__ import annotations

import warnings
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

GROUP_NAMES = ("head", "medium", "tail")


def encode_labels(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Label indices for y_true (all known) and y_pred (-1 = no prediction)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contain duplicates: {labels}")
    pos = {lab: i for i, lab in enumerate(labels)}
    bad_true = sorted({str(y) for y in y_true if y not in pos})
    bad_pred = sorted({str(y) for y in y_pred if y is not None and y not in pos})
    if bad_true or bad_pred:
        raise ValueError(f"values not in labels {labels}: y_true {bad_true}, y_pred {bad_pred}")
    t = np.array([pos[y] for y in y_true], dtype=np.int64)
    p = np.array([-1 if y is None else pos[y] for y in y_pred], dtype=np.int64)
    return t, p


def class_counts(t: np.ndarray, p: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (support, true positives, predicted count) from encoded labels."""
    support = np.bincount(t, minlength=c)
    tp = np.bincount(t[t == p], minlength=c)
    predicted = np.bincount(p[p >= 0], minlength=c)
    return support, tp, predicted


def summarize(support: np.ndarray, tp: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(UAR, WAR, macro-F1) over classes with support; NaN when there are no clips."""
    has = support > 0
    if not has.any():
        return float("nan"), float("nan"), float("nan")
    recall = tp[has] / support[has]
    f1 = 2 * tp[has] / (support[has] + predicted[has])  # = 2PR/(P+R); 0 when tp = 0
    return float(recall.mean()), float(tp.sum() / support.sum()), float(f1.mean())


def _summary(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable] | None) -> tuple[float, float, float]:
    labels = list(labels) if labels is not None else sorted(set(y_true) | {y for y in y_pred if y is not None})
    return summarize(*class_counts(*encode_labels(y_true, y_pred, labels), len(labels)))


def uar(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted average recall over classes with at least one true example."""
    return _summary(y_true, y_pred, labels)[0]


def war(y_true: Sequence, y_pred: Sequence) -> float:
    """Weighted average recall = accuracy."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not len(y_true):
        return float("nan")
    return float(np.mean([a == b for a, b in zip(y_true, y_pred)]))


def macro_f1(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable] | None = None) -> float:
    """Mean F1 over classes with at least one true example."""
    return _summary(y_true, y_pred, labels)[2]


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def make_groups(labels: Sequence[Hashable], counts: Sequence[int]) -> dict[str, list]:
    """Head/medium/tail: classes by count (descending, ties in label order) split into thirds by rank."""
    order = sorted(range(len(labels)), key=lambda i: (-counts[i], i))
    parts = np.array_split(np.array(order, dtype=int), 3)
    return {name: [labels[i] for i in part] for name, part in zip(GROUP_NAMES, parts)}


def _group_metrics(support, tp, predicted, labels, groups) -> dict:
    pos = {lab: i for i, lab in enumerate(labels)}
    out = {}
    for name, members in groups.items():
        idx = [pos[m] for m in members]
        u, _, f = summarize(support[idx], tp[idx], predicted[idx])
        n = int(support[idx].sum())
        out[name] = {"labels": list(members), "n": n, "uar": _nan_none(u), "macro_f1": _nan_none(f),
                     "accuracy": _ratio(tp[idx].sum(), n)}
    return out


def _collapse(t, p, support, predicted, labels, groups) -> dict:
    c, n_pred = len(labels), int(predicted.sum())
    true_d = support / max(len(t), 1)
    pred_d = predicted / max(n_pred, 1)
    # KL(true || pred) on counts smoothed with 0.5 per class (Jeffreys), else a class never predicted
    # makes it infinite; JS distance (base 2, in [0, 1]) needs no smoothing.
    ts = (support + 0.5) / (len(t) + 0.5 * c)
    ps = (predicted + 0.5) / (n_pred + 0.5 * c)
    pos = {lab: i for i, lab in enumerate(labels)}
    head = [pos[x] for x in groups.get("head", [])]
    tail = [pos[x] for x in groups.get("tail", [])]
    tail_clips = np.isin(t, tail)
    n_tail = int(tail_clips.sum())
    return {
        "true_distribution": dict(zip(labels, true_d.tolist())),
        "pred_distribution": dict(zip(labels, pred_d.tolist())),
        "total_variation": float(0.5 * np.abs(true_d - pred_d).sum()),
        "kl_true_pred": float(np.sum(ts * np.log(ts / ps))),
        "js_distance": _nan_none(js_distance(true_d, pred_d)) if n_pred and len(t) else None,
        "n_tail_clips": n_tail,
        "tail_to_head_share": _ratio(int(np.isin(p[tail_clips], head).sum()), n_tail),
        "head_share_true": float(true_d[head].sum()),
        "head_share_pred": float(pred_d[head].sum()),
        "classes_never_predicted": [lab for lab, n in zip(labels, predicted) if n == 0],
    }


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) of two distributions (normalised first): the square root of
    ``(KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``; 0 for equal, 1 for disjoint distributions."""
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))


def _nan_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def resampled_metrics(t: np.ndarray, p: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """UAR, WAR and macro-F1 (columns) of each resample (rows of clip indices ``idx``, shape B x n) of the encoded
    labels ``t`` and predictions ``p`` (-1: no prediction, always wrong); a class counts in a resample that has an
    example of it."""
    b, n = idx.shape
    correct = (t == p).astype(float)
    off = (np.arange(b) * n_classes)[:, None]
    tb, pb = t[idx], p[idx]
    support = np.bincount((tb + off).ravel(), minlength=b * n_classes).reshape(b, n_classes)
    tp = np.bincount((tb + off).ravel(), weights=correct[idx].ravel(), minlength=b * n_classes).reshape(b, n_classes)
    pred = np.bincount((np.where(pb >= 0, pb, 0) + off).ravel(), weights=(pb >= 0).ravel().astype(float),
                       minlength=b * n_classes).reshape(b, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support > 0, 2 * tp / (support + pred), np.nan)
    return np.stack([np.nanmean(rec, axis=1), tp.sum(axis=1) / n, np.nanmean(f1, axis=1)], axis=1)


def resample_chunks(n: int, n_boot: int, seed: int):
    """``n_boot`` resamples of ``n`` clips (with replacement, seeded), in chunks of index rows small enough to
    hold in memory: yields (first resample's number, B x n index array)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        yield start, rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def bootstrap_ci(t: np.ndarray, p: np.ndarray, n_classes: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile CIs of UAR, WAR and macro-F1 from ``n_boot`` clip resamples (encoded labels)."""
    n = len(t)
    if n == 0 or n_boot <= 0:
        return {"uar": None, "war": None, "macro_f1": None}
    stats = np.empty((n_boot, 3))
    for start, idx in resample_chunks(n, n_boot, seed):
        stats[start:start + len(idx)] = resampled_metrics(t, p, idx, n_classes)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    q = np.percentile(stats, [lo, hi], axis=0)
    return {name: [float(q[0, j]), float(q[1, j])] for j, name in enumerate(("uar", "war", "macro_f1"))}


def compute_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable],
                    train_counts: Mapping[Any, int] | Sequence[int] | None = None, n_boot: int = 1000,
                    seed: int = 0, groups: Mapping[str, Sequence] | None = None, ci_level: float = 0.95) -> dict:
    """All metrics as one JSON-serialisable dict (see the module docstring for definitions).

    ``train_counts`` (dict label -> count, or a list in label order) defines head/medium/tail groups;
    ``groups`` overrides them with user-given lists of labels.
    """
    labels = list(labels)
    t, p = encode_labels(y_true, y_pred, labels)
    c = len(labels)
    support, tp, predicted = class_counts(t, p, c)
    notes: list[str] = []
    tc = None
    if train_counts is not None:
        tc = [int(train_counts.get(lab, 0)) for lab in labels] if isinstance(train_counts, Mapping) \
            else [int(x) for x in train_counts]
        if len(tc) != c:
            raise ValueError(f"train_counts has {len(tc)} entries for {c} labels")
    if groups is not None:
        groups = {k: list(v) for k, v in groups.items()}
        unknown = sorted({str(x) for v in groups.values() for x in v if x not in labels})
        if unknown:
            raise ValueError(f"groups name labels not in the label set: {unknown}")
        group_source = "user"
    else:
        groups = make_groups(labels, tc if tc is not None else support.tolist())
        group_source = "train_counts" if tc is not None else "test_support"
    missing = [labels[i] for i in range(c) if support[i] == 0]
    if missing:
        notes.append(f"no test examples for class(es) {', '.join(map(str, missing))}: recall and F1 "
                     "undefined (null), left out of UAR and macro-F1")
        warnings.warn(notes[-1])
    u, w, f = summarize(support, tp, predicted)
    rows = [{"label": lab, "support": int(support[i]), "predicted": int(predicted[i]), "tp": int(tp[i]),
             "precision": _ratio(tp[i], predicted[i]), "recall": _ratio(tp[i], support[i]),
             "f1": _ratio(2 * tp[i], support[i] + predicted[i]) if support[i] > 0 else None,
             "train_count": tc[i] if tc is not None else None} for i, lab in enumerate(labels)]
    mask = p >= 0
    cm = np.bincount(t[mask] * c + p[mask], minlength=c * c).reshape(c, c)  # rows true, columns predicted
    return {
        "n": int(len(t)),
        "n_no_prediction": int((~mask).sum()),
        "labels": labels,
        "uar": _nan_none(u), "war": _nan_none(w), "macro_f1": _nan_none(f),
        "ci": {"level": ci_level, "n_boot": int(n_boot), "seed": int(seed), "method": "percentile bootstrap over clips",
               **bootstrap_ci(t, p, c, n_boot, seed, ci_level)},
        "per_class": rows,
        "classes_without_examples": missing,
        "confusion_matrix": {"rows": "true", "columns": "predicted", "labels": labels,
                             "no_prediction": np.bincount(t[~mask], minlength=c).tolist(), "matrix": cm.tolist()},
        "groups": {"source": group_source,
                   "rule": "user-given" if group_source == "user" else
                   "classes sorted by count (desc), split into thirds by rank (numpy.array_split)",
                   "by_group": _group_metrics(support, tp, predicted, labels, groups)},
        "collapse": _collapse(t, p, support, predicted, labels, groups),
        "warnings": notes,
    }


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they occupy."""
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tied = a == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of ``x`` and ``y`` (ties share
    their mean rank). None for fewer than 3 pairs or when either side is constant (undefined)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values but y has {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denom = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry / denom) if denom > 0 else None


def mean_std(values: Sequence[float | None]) -> dict:
    """Mean and sample standard deviation (ddof=1) of the values that are not None, and how many there are
    (``std`` is None for fewer than two values; both None for none)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}
