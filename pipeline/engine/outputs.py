"""Run-level outputs of the classify stage: ``RUN/scores.jsonl`` and ``RUN/predictions.csv``, each naming the
model that scored the clip (the embedded model where classify fell back to it).

Cheap and model-free: they are rebuilt from the cached raw scores on every run, so changing
``classify.length_norm`` (or calibrating later with ``dfer report``) never calls a model. The ranking
scores come from :mod:`pipeline.eval.ranking`, the rule every validation uses too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.core.cache import Cache
from pipeline.core.errors import DamagedArtifactError
from pipeline.eval.calibration import softmax
from pipeline.eval.labels import LabelError, load_label_set
from pipeline.eval.ranking import ranking_scores
from pipeline.engine.rundir import RunDir
from stages.classify import scored_by


def write_predictions(run_dir: RunDir, cfg, cache: Cache, refs, keys: dict,
                      on_damaged: Callable[[str, DamagedArtifactError], None] | None = None) -> str:
    """Write scores.jsonl and predictions.csv for every clip that has classify scores (``cfg``: the classify section
    that ran); return a one-paragraph summary (clips scored, prompt-token totals against dense sampling). A clip whose
    scores turn out damaged in the cache is left out and handed to ``on_damaged`` (default: raise)."""
    label_set = load_label_set(cfg.labels)
    names = label_set.names
    norm = cfg.length_norm
    model = scored_by(cfg)
    n, tok, dense, dense_frames = 0, 0, 0, 0
    fs, fp = run_dir.score_writers(names)
    try:
        for ref in refs:
            key = keys.get(ref.id, {}).get("classify")
            art = cache.get("classify", key) if key else None
            if art is None:
                continue
            try:
                doc = art.json("scores.json")
            except DamagedArtifactError as exc:
                if on_damaged is None:
                    raise
                on_damaged(ref.id, exc)
                continue
            scores = ranking_scores(doc["scores"], names, norm)
            vec = np.array([scores[lab] for lab in names], dtype=np.float64)
            probs = softmax(vec)
            pred = names[int(np.argmax(vec))]
            true = None
            if ref.label:
                try:
                    true = label_set.canonical(ref.label)
                except LabelError:
                    true = ref.label
            fs.write({"video": ref.id, "label": true, "labels": names, "scores": scores, "prediction": pred,
                      "raw": doc["scores"], "prompt_tokens": doc["prompt_tokens"], "model": model,
                      **({"label_order": doc["label_order"]} if "label_order" in doc else {})})
            fp.write(ref.id, pred, probs, true, model)
            n += 1
            tok += int(doc["prompt_tokens"])
            dense += int(doc["dense_tokens"])
            dense_frames += int(doc["dense_frames"])
    finally:
        fs.close()
        fp.close()
    run_dir.write_labelset(label_set.name, names)
    if n == 0:
        return "classify: no clip was scored"
    scored = f"scored {n} clips with {model} -> {run_dir / 'predictions.csv'}"
    if tok == 0:  # a model that reads no prompt (the embedded expression model)
        return scored
    ratio = tok / dense if dense else float("nan")
    return (
        f"{scored}\n"
        f"prompt tokens: {tok} in total ({tok / n:.0f} per clip); dense 5 fps frames at the same size would need "
        f"{dense} ({dense / n:.0f} per clip, {dense_frames / n:.1f} frames): {ratio:.2f}x"
    )
