"""Run-level outputs of the classify stage: ``RUN/scores.jsonl`` and ``RUN/predictions.csv``.

Cheap and model-free: they are rebuilt from the cached raw scores on every run, so changing
``classify.length_norm`` (or calibrating later with ``dfer report``) never calls a model. The ranking
scores come from :mod:`pipeline.ranking`, the rule every validation uses too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.cache import Cache
from pipeline.labels import LabelError, load_label_set
from pipeline.ranking import ranking_scores


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    e = np.exp(z)
    return e / e.sum()


def write_predictions(run_dir: Path, cfg, cache: Cache, refs, keys: dict) -> str:
    """Write scores.jsonl and predictions.csv for every clip that has classify scores; return a
    one-paragraph summary (clips scored, prompt-token totals against dense sampling)."""
    label_set = load_label_set(cfg.classify.labels)
    names = label_set.names
    norm = cfg.classify.length_norm
    n, tok, dense, dense_frames = 0, 0, 0, 0
    with open(run_dir / "scores.jsonl", "w", encoding="utf-8") as fs, open(run_dir / "predictions.csv", "w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp)
        writer.writerow(["video", "prediction", *[f"p_{lab}" for lab in names], "label"])
        for ref in refs:
            key = keys.get(ref.id, {}).get("classify")
            art = cache.get("classify", key) if key else None
            if art is None:
                continue
            doc = art.json("scores.json")
            scores = ranking_scores(doc["scores"], names, norm)
            vec = np.array([scores[lab] for lab in names], dtype=np.float64)
            probs = _softmax(vec)
            pred = names[int(np.argmax(vec))]
            true = None
            if ref.label:
                try:
                    true = label_set.canonical(ref.label)
                except LabelError:
                    true = ref.label
            fs.write(json.dumps({"video": ref.id, "label": true, "labels": names, "scores": scores, "prediction": pred,
                                 "raw": doc["scores"], "prompt_tokens": doc["prompt_tokens"]}, ensure_ascii=False) + "\n")
            writer.writerow([ref.id, pred, *[f"{p:.6f}" for p in probs], true or ""])
            n += 1
            tok += int(doc["prompt_tokens"])
            dense += int(doc["dense_tokens"])
            dense_frames += int(doc["dense_frames"])
    (run_dir / "labelset.json").write_text(json.dumps({"name": label_set.name, "labels": names}), encoding="utf-8")
    if n == 0:
        return "classify: no clip was scored"
    ratio = tok / dense if dense else float("nan")
    return (
        f"scored {n} clips -> {run_dir / 'predictions.csv'}\n"
        f"prompt tokens: {tok} in total ({tok / n:.0f} per clip); dense 5 fps frames at the same size would need "
        f"{dense} ({dense / n:.0f} per clip, {dense_frames / n:.1f} frames): {ratio:.2f}x"
    )
