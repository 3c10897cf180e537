"""The plots of a report: confusion matrix, per-class recall, true against predicted label distribution, and
per-class F1 against label frequency. Object-oriented matplotlib with the Agg canvas; no pyplot state, no GUI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.engine.rundir import FREQUENCY_PLOT, PLOTS, RunDir
from pipeline.eval.metrics import GROUP_NAMES
from pipeline.report.markdown import freq_order, rho


def write_plots(rep: dict, out_dir: Path) -> dict[str, str]:
    m = rep["metrics"]
    if m is None:
        return {}
    order, basis = freq_order(m)
    names = [m["labels"][i] for i in order]
    n = len(names)
    cm = np.array(m["confusion_matrix"]["matrix"])[np.ix_(order, order)]
    support = np.array([m["per_class"][i]["support"] for i in order])
    norm = cm / np.maximum(support, 1)[:, None]
    size = max(5.0, 0.6 * n + 2)
    figures = {"confusion": Figure(figsize=(size, size)), "recall": Figure(figsize=(size + 1, 4)),
               "distribution": Figure(figsize=(size + 1, 4))}

    ax = figures["confusion"].add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (rows normalised; classes by {basis})")
    figures["confusion"].colorbar(im, ax=ax, fraction=0.046)

    group_of = {lab: g for g, d in m["groups"]["by_group"].items() for lab in d["labels"]}
    colors = dict(zip(GROUP_NAMES, ("tab:blue", "tab:orange", "tab:red")))
    ax = figures["recall"].add_subplot()
    recall = [m["per_class"][i]["recall"] for i in order]
    ax.bar(range(n), [0 if r is None else r for r in recall], color=[colors.get(group_of.get(x), "gray") for x in names])
    for i, (r, s) in enumerate(zip(recall, support)):
        ax.text(i, (r or 0) + 0.01, "n/a" if r is None else f"n={s}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    ax.set_title(f"Per-class recall (classes by {basis}; blue head, orange medium, red tail)")

    col = m["collapse"]
    ax = figures["distribution"].add_subplot()
    x = np.arange(n)
    ax.bar(x - 0.2, [col["true_distribution"][k] for k in names], 0.4, label="true")
    ax.bar(x + 0.2, [col["pred_distribution"][k] for k in names], 0.4, label="predicted")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_ylabel("share of clips")
    ax.set_title(f"True vs predicted label distribution (TV = {col['total_variation']:.3f})")
    ax.legend()
    for key, fig in figures.items():
        fig.tight_layout()
        RunDir(out_dir).write_plot(PLOTS[key], fig)
    plots = dict(PLOTS)
    lf = rep.get("label_frequency")
    if lf and lf["n"]:
        _frequency_plot(lf, out_dir / FREQUENCY_PLOT)
        plots["f1_vs_frequency"] = FREQUENCY_PLOT
    return plots


def _frequency_plot(lf: dict, path: Path) -> None:
    """Per-class F1 (y) against the label's count (x, log scale), each point labelled, Spearman's rho in the title."""
    used = [r for r in lf["rows"] if r["label"] not in lf["left_out"]]
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    x, y = [r["count"] for r in used], [r["f1"] for r in used]
    ax.scatter(x, y)
    for r in used:
        ax.annotate(str(r["label"]), (r["count"], r["f1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"label frequency ({Path(lf['path']).name}, log scale)")
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1 against label frequency (Spearman rho = {rho(lf['spearman'])}, {lf['n']} classes)")
    fig.tight_layout()
    RunDir(path.parent).write_plot(path.name, fig)
