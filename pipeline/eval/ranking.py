"""The one rule that turns a clip's classify output into its prediction, or into an abstention.

Everything that predicts a label goes through :func:`decide` (a classify artifact) or :func:`choose` (a row of
ranking scores, e.g. after calibration): the run's ``scores.jsonl`` and ``predictions.csv``, ``dfer report`` (and so
``dfer compare``, ``dfer sweep`` and ``dfer view``), ``dfer finetune``'s validation and the SocialFusion baseline's
validation (:func:`predict`). So a model reports one UAR whichever of these computed it.

**Raw scores.** A backend stores, per label, ``logprob`` (log P(label tokens | prompt), summed over the label's
tokens), ``n_tokens``, ``exact`` and, where known, ``end_logprob``; see ``pipeline/backends/base.py``. ``exact`` is
False where the value is only an upper bound: an OpenAI-compatible server returned its top-k tokens and none of
them was the label's.

**How a clip was scored** (``scored``, a column of ``predictions.csv`` and ``scores.jsonl``):

- ``exact``: every label has its own score (or, with ``classify.answer=generate``, the answer named a label);
- ``partial``: some labels fell outside the server's top-k; their scores are upper bounds. Ranking uses the bounds
  as values: the prediction is still the model's first choice, since any label in the top-k is more likely than
  every label outside it;
- ``none``: no label was scored (none in the top-k, or a free-text answer that names no label).

**Abstentions.** A ``none`` clip has no prediction, and neither has a clip whose best score is shared by two or more
labels (an exact tie): the tie is not broken by label order, or at all, since any rule would invent an answer the
model did not give. An abstention is counted as an error in every metric (``dfer report``: beside the abstention
rate), never as the first label of the label set.

**Ranking scores** (``classify.length_norm``): ``sum`` (default), the label's own log-probability summed over its
tokens, the only rule an OpenAI-compatible server lets us compute (it gives the first answer token only); ``mean``,
the same divided by the label's token count. ``end_logprob`` is stored but never ranks: a server cannot give it.
With ``classify.answer=generate`` the named label scores 0 (log 1) and the others have no score (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

RULES = ("sum", "mean")
SCORED = ("exact", "partial", "none")
ABSTAIN_NONE = "no label scored"
ABSTAIN_TIE = "tie"
ABSTAIN_UNPARSED = "answer names no label"


@dataclass(frozen=True)
class Decision:
    """One clip's outcome: its ranking scores (None: the label has no score), how it was scored, its prediction, and
    why it has none (``abstained``)."""

    scores: dict[str, float | None]
    scored: str
    prediction: str | None
    abstained: str | None = None


def scored_kind(raw_row: Mapping[str, Mapping], labels: Sequence[str]) -> str:
    """``exact``, ``partial`` or ``none``: how many of the labels have their own score (``exact`` flag) rather than
    an upper bound. A row without ``exact`` flags (written before they existed) counts as exact."""
    flags = [bool(raw_row[lab].get("exact", True)) for lab in labels]
    return "exact" if all(flags) else "partial" if any(flags) else "none"


def ranking_scores(raw_row: Mapping[str, Mapping], labels: Sequence[str], rule: str = "sum") -> dict[str, float]:
    """``{label: ranking score}`` for one clip, in ``labels`` order, from each label's raw score
    ``{"logprob", "n_tokens", ...}``."""
    if rule not in RULES:
        raise ValueError(f"unknown ranking rule {rule!r}; choose one of {', '.join(RULES)}")
    scores = {lab: float(raw_row[lab]["logprob"]) for lab in labels}
    if rule == "mean":
        return {lab: s / max(int(raw_row[lab]["n_tokens"]), 1) for lab, s in scores.items()}
    return scores


def choose(values: Sequence[float | None], labels: Sequence[str], scored: str) -> tuple[str | None, str | None]:
    """(prediction, why there is none) from one clip's ranking scores in ``labels`` order (None: no score): no
    prediction for a ``none`` clip, for a clip with no score at all, or when the best score is shared (a tie)."""
    if scored not in SCORED:
        raise ValueError(f"unknown scoring kind {scored!r}; one of {', '.join(SCORED)}")
    if scored == "none":
        return None, ABSTAIN_NONE
    known = [(v, lab) for v, lab in zip(values, labels) if v is not None]
    if not known:
        return None, ABSTAIN_NONE
    best = max(v for v, _ in known)
    top = [lab for v, lab in known if v == best]
    return (top[0], None) if len(top) == 1 else (None, ABSTAIN_TIE)


def choose_rows(matrix, labels: Sequence[str], scored: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """:func:`choose` for each row of an N x C matrix of ranking scores (``-inf``: no score), e.g. after calibration."""
    out = []
    for row, kind in zip(matrix, scored):
        values = [None if v == float("-inf") else float(v) for v in row]
        out.append(choose(values, labels, kind))
    return out


def decide(doc: Mapping[str, Any], labels: Sequence[str], rule: str = "sum",
           parse: Callable[[str], str | None] | None = None) -> Decision:
    """The :class:`Decision` for one classify artifact (``scores.json``: ``{"scores": {label: raw}}``, or with
    ``classify.answer=generate`` ``{"answer": text}``, which ``parse`` maps to a label or None)."""
    if doc.get("answer") is not None:
        if parse is None:
            raise ValueError("a free-text answer needs a parser (pipeline.eval.answers)")
        named = parse(str(doc["answer"]))
        scores: dict[str, float | None] = {lab: (0.0 if lab == named else None) for lab in labels}
        if named is None:
            return Decision(scores, "none", None, ABSTAIN_UNPARSED)
        return Decision(scores, "exact", named)
    raw = doc["scores"]
    kind = scored_kind(raw, labels)
    ranked = ranking_scores(raw, labels, rule)
    pred, why = choose([ranked[lab] for lab in labels], labels, kind)
    return Decision(dict(ranked), kind, pred, why)


def predict(raw_row: Mapping[str, Mapping], labels: Sequence[str], rule: str = "sum") -> str | None:
    """The label ranked first (:func:`decide` on raw label scores), or None for an abstention."""
    return decide({"scores": raw_row}, labels, rule).prediction
