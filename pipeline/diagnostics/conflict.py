"""Gradient conflict between tasks trained together (the *compatibility* lens of SocialFusion).

At a recorded step every task's loss is differentiated separately with respect to the **shared** parameters
(the connector, the LoRA adapters: whatever is trainable and used by every task); the gradients are flattened
per parameter group and compared pairwise by cosine similarity. A negative cosine means a step that helps one
task hurts the other (to first order): a *conflicting* step. :class:`ConflictLog` keeps every recorded step and
reports, per pair of tasks and parameter group, the mean/median/min cosine and the share of conflicting steps, as
a Markdown table, JSON and a PNG plot of the cosine over training.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.core.files import json_text, save_figure, write_atomic


def task_gradients(losses: Mapping[str, "torch.Tensor"], params: Sequence) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """One gradient per task over the same ``params``, flattened into a float32 vector (zeros for parameters the
    task's loss does not touch); the graph is kept for a later backward."""
    import torch

    params, out = list(params), {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[task] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])
    return out


def pairwise_cosines(grads: Mapping[str, "torch.Tensor"]) -> dict[tuple[str, str], float]:  # noqa: F821
    """``{(task_a, task_b): cosine}`` for every unordered pair, in task order; NaN when a gradient is zero."""
    import torch

    def cosine(a, b) -> float:
        na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
        return float("nan") if na == 0.0 or nb == 0.0 else float(torch.dot(a.double(), b.double()) / (na * nb))

    return {(a, b): cosine(grads[a], grads[b]) for a, b in itertools.combinations(list(grads), 2)}


class ConflictLog:
    """Per-step pairwise gradient cosines, per parameter group."""

    def __init__(self) -> None:
        self.rows: list[dict] = []  # {"step", "group", "a", "b", "cosine", "norm_a", "norm_b"}

    def record(self, step: int, grads: Mapping[str, "torch.Tensor"], group: str = "all") -> dict[tuple[str, str], float]:  # noqa: F821
        import torch

        cos = pairwise_cosines(grads)
        norms = {t: float(torch.linalg.vector_norm(g)) for t, g in grads.items()}
        for (a, b), c in cos.items():
            self.rows.append({"step": int(step), "group": group, "a": a, "b": b, "cosine": c,
                              "norm_a": norms[a], "norm_b": norms[b]})
        return cos

    def record_groups(self, step: int, grads: Mapping[str, "torch.Tensor"], groups: Mapping[str, slice]) -> None:  # noqa: F821
        """Record ``all`` and every named slice of the flat gradients (e.g. connector vs LoRA parameters)."""
        self.record(step, grads, "all")
        if len(groups) > 1:
            for name, sl in groups.items():
                self.record(step, {t: g[sl] for t, g in grads.items()}, name)

    def summary(self) -> list[dict]:
        """Per (group, pair): steps, mean/median/min cosine, and the share of steps with cosine < 0."""
        out = []
        keys = sorted({(r["group"], r["a"], r["b"]) for r in self.rows}, key=lambda k: (k[0] != "all", k))
        for group, a, b in keys:
            vals = np.array([r["cosine"] for r in self.rows if (r["group"], r["a"], r["b"]) == (group, a, b)], float)
            ok = vals[np.isfinite(vals)]
            out.append({
                "group": group, "task_a": a, "task_b": b, "steps": int(len(vals)),
                "mean_cosine": float(ok.mean()) if len(ok) else None,
                "median_cosine": float(np.median(ok)) if len(ok) else None,
                "min_cosine": float(ok.min()) if len(ok) else None,
                "conflict_share": float((ok < 0).mean()) if len(ok) else None,
            })
        return out

    def markdown(self) -> str:
        def f(x, pct=False):
            return "–" if x is None else (f"{100 * x:.1f}" if pct else f"{x:+.3f}")

        lines = ["| parameters | task A | task B | steps | mean cos | median cos | min cos | conflicting steps % |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for s in self.summary():
            lines.append(f"| {s['group']} | {s['task_a']} | {s['task_b']} | {s['steps']} | {f(s['mean_cosine'])} | "
                         f"{f(s['median_cosine'])} | {f(s['min_cosine'])} | {f(s['conflict_share'], pct=True)} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        rows = [{**r, "cosine": None if not math.isfinite(r["cosine"]) else r["cosine"]} for r in self.rows]
        return {"definition": "cosine similarity of per-task gradients on the shared trainable parameters; "
                              "a step conflicts when cosine < 0",
                "summary": self.summary(), "steps": rows}

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``conflict.json``, ``conflict.md`` and ``conflict.png`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {ext: out / f"conflict.{ext}" for ext in ("json", "md", "png")}
        write_atomic(paths["json"], json_text(self.to_json(), indent=1, ensure_ascii=True, allow_nan=True))
        write_atomic(paths["md"], "# Gradient conflict between tasks\n\n" + self.markdown())
        self.plot(paths["png"])
        return paths

    def plot(self, path: str | Path) -> Path:
        """Cosine per recorded step, one line per task pair, one panel per parameter group (matplotlib Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = sorted({r["group"] for r in self.rows}, key=lambda g: (g != "all", g)) or ["all"]
        fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.6 * len(groups)), squeeze=False, sharex=True)
        for ax, group in zip(axes[:, 0], groups):
            pairs = sorted({(r["a"], r["b"]) for r in self.rows if r["group"] == group})
            for a, b in pairs:
                pts = [(r["step"], r["cosine"]) for r in self.rows if r["group"] == group and (r["a"], r["b"]) == (a, b)]
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", linewidth=1, label=f"{a} vs {b}")
            ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("gradient cosine")
            ax.set_title(f"parameters: {group}", fontsize=10)
            if pairs:
                ax.legend(fontsize=8, loc="lower right")
        axes[-1, 0].set_xlabel("training step")
        fig.tight_layout()
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        return Path(path)
