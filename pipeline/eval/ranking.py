"""The one rule that turns a clip's raw label scores into the scores its labels are ranked by.

A backend stores, per label, ``logprob`` (log P(label tokens | prompt), summed over the label's tokens),
``n_tokens`` and, where known, ``end_logprob`` (log P(end of answer | prompt, label)); see
``pipeline/backends/base.py``. Everything that predicts a label from such raw scores goes through
:func:`ranking_scores` / :func:`predict`: the run's ``scores.jsonl`` and ``predictions.csv`` (read by
``dfer report``), ``dfer finetune``'s validation and the SocialFusion baseline's training validation. So a
model reports one UAR whichever of these computed it.

Rules (``classify.length_norm``):

- ``sum`` (default): the label's own log-probability, summed over its tokens. The only rule an
  OpenAI-compatible server lets us compute (it returns the first answer token's top-k only).
- ``mean``: the same divided by the label's token count.

``end_logprob`` is stored but never part of the ranking: a server cannot give it, and one rule everywhere
means scores from every backend are ranked alike. Ties go to the label that comes first in label-set order
(``numpy.argmax``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RULES = ("sum", "mean")


def ranking_scores(raw_row: Mapping[str, Mapping], labels: Sequence[str], rule: str = "sum") -> dict[str, float]:
    """``{label: ranking score}`` for one clip, in ``labels`` order, from each label's raw score
    ``{"logprob", "n_tokens", ...}``."""
    if rule not in RULES:
        raise ValueError(f"unknown ranking rule {rule!r}; choose one of {', '.join(RULES)}")
    scores = {lab: float(raw_row[lab]["logprob"]) for lab in labels}
    if rule == "mean":
        return {lab: s / max(int(raw_row[lab]["n_tokens"]), 1) for lab, s in scores.items()}
    return scores


def predict(raw_row: Mapping[str, Mapping], labels: Sequence[str], rule: str = "sum") -> str:
    """The label with the highest ranking score (ties: the first in ``labels``)."""
    scores = ranking_scores(raw_row, labels, rule)
    return labels[int(np.argmax([scores[lab] for lab in labels]))]
