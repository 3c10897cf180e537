"""Linear probes on frozen visual features: can a logistic regression read the label off the encoder?

* **Unit = clip.** Each clip is one row: the mean over its frames of the pooled per-frame features
  (:func:`pipeline.diagnostics.features.clip_level`). Frames of one clip never end up on both sides.
* **Split by video**, stratified by label (:func:`pipeline.training.split.stratified_split`). The same split is
  used for every encoder and layer of a task, so their numbers are comparable side by side.
* **Probe**: features standardised on the training clips, then scikit-learn ``LogisticRegression`` (lbfgs,
  multinomial, L2 with ``C``) with ``class_weight="balanced"``, so a head class cannot win by frequency.
* **Metrics** on the validation clips with :func:`pipeline.eval.metrics.compute_metrics`: UAR, WAR, macro-F1 and their
  percentile-bootstrap CIs over validation clips. Chance UAR is ``1 / classes``.

Tasks are label columns of a CSV with a ``video`` (or ``path``) column (:func:`read_task_table`); empty cells
mean "no label for this task" (e.g. clips of a second data set). A column with a single value is an error.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pipeline.core.files import json_text, write_atomic
from pipeline.core.errors import DiagnosticsError
from pipeline.eval.labels import match_labels
from pipeline.eval.metrics import compute_metrics
from pipeline.training.split import stratified_split


class TaskError(DiagnosticsError):
    """A task (label column) cannot be learnt or probed as given."""


# ------------------------------------------------------------------------------------------------ task tables

ID_COLUMNS = ("video", "path")


def read_task_table(path: str | Path, tasks: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """``{task: {video id: value}}`` from a CSV whose header has ``video`` (or ``path``) and label columns.

    ``tasks``: the columns to use (default: every column but the id). Empty cells are skipped. A missing
    column or a column with fewer than two distinct values raises :class:`TaskError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task table {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise TaskError(f"{path}: empty file") from None
        folded = [c.casefold() for c in header]
        id_col = next((folded.index(c) for c in ID_COLUMNS if c in folded), None)
        if id_col is None:
            raise TaskError(f"{path}:1: expected a 'video' (or 'path') column, got {header}")
        available = [c for i, c in enumerate(header) if i != id_col and c]
        wanted = list(tasks) if tasks else available
        missing = [t for t in wanted if t not in available]
        if missing:
            raise TaskError(f"{path}: task column(s) {missing} not in the header; columns are {available}")
        if not wanted:
            raise TaskError(f"{path}: no label column besides '{header[id_col]}'")
        cols = {t: header.index(t) for t in wanted}
        table: dict[str, dict[str, str]] = {t: {} for t in wanted}
        for line_no, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            vid = row[id_col].strip() if id_col < len(row) else ""
            if not vid:
                raise TaskError(f"{path}:{line_no}: empty video id")
            for t, i in cols.items():
                value = row[i].strip() if i < len(row) else ""
                if value:
                    if vid in table[t] and table[t][vid] != value:
                        raise TaskError(f"{path}:{line_no}: '{vid}' has two values for column '{t}'")
                    table[t][vid] = value
    check_tasks(table, where=str(path))
    return table


def check_tasks(table: Mapping[str, Mapping[str, str]], where: str = "task table") -> None:
    """Every task needs at least two distinct values; :class:`TaskError` names the column otherwise."""
    for task, values in table.items():
        distinct = sorted(set(values.values()))
        if len(distinct) < 2:
            what = f"a single value {distinct[0]!r}" if distinct else "no value at all"
            raise TaskError(f"{where}: task column '{task}' has {what} over {len(values)} clip(s): nothing to learn "
                            "or probe; drop the column or add clips of other classes")


def match_tasks(table: Mapping[str, Mapping[str, str]], videos: Iterable[str]) -> dict[str, dict[str, str]]:
    """Join the table's ids to pipeline video ids (:func:`pipeline.eval.labels.match_labels`: exact, without extension,
    path suffix), per task; re-checks that every task keeps two values on the matched clips."""
    videos = list(videos)
    out = {}
    for task, values in table.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[task] = dict(match_labels(dict(values), videos).matched)
    check_tasks(out, where="clips matched to the task table")
    return out


# ------------------------------------------------------------------------------------------------ probe


@dataclass
class ProbeResult:
    task: str
    encoder: str
    layer: int
    labels: list[str]
    n_train: int
    n_val: int
    metrics: dict  # compute_metrics on the validation clips
    train_war: float

    def row(self) -> dict:
        ci = self.metrics["ci"]
        return {"task": self.task, "encoder": self.encoder, "layer": self.layer, "classes": len(self.labels),
                "n_train": self.n_train, "n_val": self.n_val, "uar": self.metrics["uar"], "uar_ci": ci["uar"],
                "war": self.metrics["war"], "war_ci": ci["war"], "macro_f1": self.metrics["macro_f1"],
                "chance_uar": 1.0 / len(self.labels), "train_war": self.train_war}


def train_probe(x_train: np.ndarray, y_train: Sequence[str], x_val: np.ndarray, y_val: Sequence[str],
                labels: Sequence[str] | None = None, *, C: float = 1.0, n_boot: int = 1000,
                seed: int = 0, task: str = "label", encoder: str = "", layer: int = -1) -> ProbeResult:
    """Fit a class-balanced logistic-regression probe on ``x_train`` and evaluate it on ``x_val``."""
    from sklearn.linear_model import LogisticRegression  # start-up time: scikit-learn (the cli imports this module)
    from sklearn.preprocessing import StandardScaler

    labels = list(labels) if labels is not None else sorted(set(y_train) | set(y_val))
    if len(set(y_train)) < 2:
        raise TaskError(f"task '{task}': the training split has a single class {sorted(set(y_train))}")
    if len(y_val) == 0:
        raise TaskError(f"task '{task}': the validation split is empty (too few clips per class)")
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny/noisy sets: the metrics say how it did
        clf.fit(scaler.transform(x_train), list(y_train))
        pred = clf.predict(scaler.transform(x_val)).tolist()
        train_pred = clf.predict(scaler.transform(x_train))
        metrics = compute_metrics(list(y_val), pred, labels, n_boot=n_boot, seed=seed)
    train_war = float(np.mean(train_pred == np.asarray(y_train)))
    return ProbeResult(task, encoder, layer, labels, len(y_train), len(y_val), metrics, train_war)


def probe_table(results: Sequence[ProbeResult]) -> str:
    """Markdown table, one row per task x encoder x layer (UAR/WAR in % with 95% CIs)."""

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    def ci(c):
        return "–" if not c else f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"

    lines = ["| task | encoder | layer | UAR % | UAR 95% CI | WAR % | WAR 95% CI | chance UAR % | train / val clips |",
             "|---|---|---:|---:|---|---:|---|---:|---|"]
    for r in results:
        d = r.row()
        lines.append(f"| {d['task']} | {d['encoder']} | {d['layer']} | {pct(d['uar'])} | {ci(d['uar_ci'])} | "
                     f"{pct(d['war'])} | {ci(d['war_ci'])} | {pct(d['chance_uar'])} | {d['n_train']} / {d['n_val']} |")
    return "\n".join(lines) + "\n"


def run_probes(features: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]], tasks: Mapping[str, Mapping[str, str]],
               *, val_fraction: float = 0.3, seed: int = 0, C: float = 1.0, n_boot: int = 1000,
               label_order: Mapping[str, Sequence[str]] | None = None) -> list[ProbeResult]:
    """Probe every task on every encoder and layer.

    ``features``: ``{encoder name: {layer: {video: clip-level vector}}}``; ``tasks``: ``{task: {video: label}}``.
    Per task, only clips that have a label and features from *every* encoder are used, and one split by video
    serves all encoders and layers.
    """
    results = []
    for task, values in tasks.items():
        videos = sorted(v for v in values if all(v in by_video for enc in features.values() for by_video in enc.values()))
        y = [values[v] for v in videos]
        if len(set(y)) < 2:
            raise TaskError(f"task '{task}': fewer than two classes among the {len(videos)} clip(s) with features")
        order = list(label_order[task]) if label_order and task in label_order else sorted(set(y))
        train, val = stratified_split(videos, y, val_fraction, seed)
        if len(val) == 0:
            raise TaskError(f"task '{task}': too few clips to hold out a validation split ({len(videos)} clips; need at "
                            "least two clips in some class)")
        for enc, by_layer in features.items():
            for layer, by_video in sorted(by_layer.items()):
                x = np.stack([by_video[v] for v in videos])
                results.append(train_probe(x[train], [y[i] for i in train], x[val], [y[i] for i in val], order, C=C,
                                           n_boot=n_boot, seed=seed, task=task, encoder=enc, layer=layer))
    return results


def write_probe_report(results: Sequence[ProbeResult], out_dir: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """``probe.json`` (rows plus the full metrics per probe) and ``probe.md`` (the table) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"unit": "clip (features = mean over the clip's frames)", "split": "by video, stratified by label",
           "probe": "standardised features, LogisticRegression(class_weight='balanced')",
           "rows": [r.row() for r in results],
           "metrics": [{"task": r.task, "encoder": r.encoder, "layer": r.layer, **r.metrics} for r in results],
           **(extra or {})}
    jp, mp = out / "probe.json", out / "probe.md"
    write_atomic(jp, json_text(doc, indent=1, allow_nan=True))
    md = ["# Linear probes on frozen visual features", "",
          "One row per task, encoder and layer. Clip-level features are the mean over the clip's frames; the "
          "train/validation split is by video (never by frame), the same for every encoder and layer of a task. "
          "UAR/WAR are on the validation clips, with percentile-bootstrap 95% CIs.", "", probe_table(results)]
    write_atomic(mp, "\n".join(md))
    return jp, mp
