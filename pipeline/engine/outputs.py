"""Run-level outputs of the classify stage: ``RUN/scores.jsonl`` and ``RUN/predictions.csv``, each naming the
model that scored the clip (the embedded model where classify fell back to it) and how it was scored.

Cheap and model-free: they are rebuilt from the cached raw scores on every run, so changing
``classify.length_norm`` or a label file's synonyms (or calibrating later with ``dfer report``) never calls a
model. Predictions come from :func:`pipeline.eval.ranking.decide`, the rule every validation uses too: a clip
scored ``none`` (no label among a server's top-k, an answer that names no label) or with a tie at the top has no
prediction (an abstention: empty ``prediction`` and probabilities in ``predictions.csv``, ``null`` in
``scores.jsonl``, with the reason in ``abstained``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.core.cache import Cache
from pipeline.core.errors import DamagedArtifactError
from pipeline.eval.answers import AnswerParser
from pipeline.eval.calibration import softmax
from pipeline.eval.labels import LabelError, load_label_set
from pipeline.eval.ranking import SCORED, decide
from pipeline.engine.rundir import RunDir
from pipeline.engine.units import Units
from stages.classify import scored_by


@dataclass
class Outputs:
    """What :func:`write_predictions` wrote: clips scored, how (``by_kind``: exact/partial/none), abstentions by
    reason, the label-matching rules of the backends, and the summary paragraph printed after the run."""

    scored: int = 0
    videos: set = field(default_factory=set)  # the clips of the units scored
    fields: tuple = ()  # what a run split into units splits by (``subject``), else empty
    by_kind: Counter = field(default_factory=Counter)
    abstained: Counter = field(default_factory=Counter)
    label_matching: Counter = field(default_factory=Counter)
    answer: str = "scores"
    summary: str = ""

    def status(self) -> dict:
        """``status.json``'s ``scoring`` entry."""
        return {"answer": self.answer, "scored": self.scored, **{k: self.by_kind.get(k, 0) for k in SCORED},
                "abstained": sum(self.abstained.values()), "abstained_by_reason": dict(self.abstained),
                "label_matching": dict(self.label_matching)}


def probabilities(scores: list[float | None]) -> np.ndarray:
    """Softmax of ranking scores (a label without a score: probability 0)."""
    return softmax(np.array([-np.inf if s is None else s for s in scores], dtype=np.float64))


def write_predictions(run_dir: RunDir, cfg, cache: Cache, refs, keys: dict,
                      on_damaged: Callable[[str, DamagedArtifactError], None] | None = None,
                      units: Units | None = None) -> Outputs:
    """Write scores.jsonl and predictions.csv for every unit (clip, or subject of a clip) that has classify scores
    (``cfg``: the classify section that ran; ``keys`` by unit id); return what was written, with a one-paragraph
    summary (clips scored and how, abstentions, prompt-token totals against dense sampling). A run split into units
    gets their fields as columns. A unit whose scores turn out damaged in the cache is left out and handed to
    ``on_damaged`` (default: raise)."""
    label_set = load_label_set(cfg.labels)
    names = label_set.names
    parse = AnswerParser(label_set).parse
    model = scored_by(cfg)
    by_id = {r.id: r for r in refs}
    units = units or Units([r.id for r in refs])
    out = Outputs(answer=cfg.answer, fields=tuple(units.fields))
    tok, dense, dense_frames = 0, 0, 0
    fs, fp = run_dir.score_writers(names, out.fields)
    try:
        for unit in (u for ref in refs for u in units.of(ref.id)):
            key = keys.get(unit.id, {}).get("classify")
            art = cache.get("classify", key) if key else None
            if art is None:
                continue
            try:
                doc = art.json("scores.json")
            except DamagedArtifactError as exc:
                if on_damaged is None:
                    raise
                on_damaged(unit.id, exc)
                continue
            d = decide(doc, names, cfg.length_norm, parse)
            vec = [d.scores[lab] for lab in names]
            probs = None if d.prediction is None else probabilities(vec)
            true = None
            label = by_id[unit.video].label if unit.own else None  # a label names the clip's own subject
            if label:
                try:
                    true = label_set.canonical(label)
                except LabelError:
                    true = label
            cols = units.columns(unit)
            row = {"video": unit.video, "label": true, "labels": names, "scores": d.scores, "prediction": d.prediction,
                   "scored": d.scored, "abstained": d.abstained}
            if "answer" in doc:
                row["answer"] = doc["answer"]
            else:
                row.update(raw=doc["scores"], label_matching=doc.get("label_matching"))
            if out.fields:
                row.update(cols, unit=unit.id)
            fs.write({**row, "prompt_tokens": doc["prompt_tokens"], "model": model,
                      **({"label_order": doc["label_order"]} if "label_order" in doc else {})})
            fp.write(unit.video, d.prediction, probs, true, model, d.scored, d.abstained, cols)
            out.scored += 1
            out.videos.add(unit.video)
            out.by_kind[d.scored] += 1
            if d.abstained:
                out.abstained[d.abstained] += 1
            if doc.get("label_matching"):
                out.label_matching[doc["label_matching"]] += 1
            tok += int(doc["prompt_tokens"])
            dense += int(doc["dense_tokens"])
            dense_frames += int(doc["dense_frames"])
    finally:
        fs.close()
        fp.close()
    run_dir.write_labelset(label_set.name, names)
    out.summary = _summary(out, model, run_dir, tok, dense, dense_frames)
    return out


def _summary(out: Outputs, model: str, run_dir: RunDir, tok: int, dense: int, dense_frames: int) -> str:
    n = out.scored
    if n == 0:
        return "classify: no clip was scored"
    how = ", ".join(f"{out.by_kind[k]} {k}" for k in SCORED if out.by_kind.get(k))
    how = "" if out.by_kind.get("exact") == n else f" ({how})"  # said when some clip is not scored exactly
    what = f"{n} units of {len(out.videos)} clips (by {', '.join(out.fields)})" if out.fields else f"{n} clips"
    lines = [f"scored {what} with {model}{how} -> {run_dir / 'predictions.csv'}"]
    if out.abstained:
        lines.append(f"abstained on {sum(out.abstained.values())} of {n} clips (no prediction, counted as errors): "
                     + ", ".join(f"{c} {why}" for why, c in out.abstained.most_common()))
    for rule, c in out.label_matching.items():
        lines.append(f"labels matched by {rule}" + ("" if c == n else f" ({c} clips)"))
    if tok:  # not for a model that reads no prompt (the embedded expression model)
        ratio = tok / dense if dense else float("nan")
        lines.append(f"prompt tokens: {tok} in total ({tok / n:.0f} per clip); dense 5 fps frames at the same size "
                     f"would need {dense} ({dense / n:.0f} per clip, {dense_frames / n:.1f} frames): {ratio:.2f}x")
    return "\n".join(lines)
