"""Labels with times: labelled spans of a recording scored by the timeline's segments (``docs/timelines.md``).

A list file with ``start_s`` and ``end_s`` columns gives one labelled span per row (several rows per video; a row
with both cells empty labels the whole video). Each span is scored by the segments that overlap it: the segment's
probabilities are weighted by the seconds it shares with the span, summed, and the span's prediction is the label
with the largest sum (:func:`score_span`). Segments without a prediction (too little face, an abstention, a
failure) do not vote; a span that no scored segment overlaps, or whose best sum is shared by two labels, has no
prediction (an abstention, counted as an error like every abstention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Span:
    start: float
    end: float | None  # None: to the end of the video
    label: str
    where: str | None = None  # file:line of the list file row

    def overlap(self, start: float, end: float) -> float:
        """Seconds ``[start, end)`` shares with this span."""
        stop = end if self.end is None else min(end, self.end)
        return max(0.0, stop - max(start, self.start))


NO_SEGMENT = "no scored segment overlaps it"
TIE = "tie"


def span_label(spans: Sequence[Span], start: float, end: float) -> str | None:
    """The label of the span that overlaps ``[start, end)`` most (None: none overlaps; the first of equals)."""
    best, label = 0.0, None
    for s in spans:
        o = s.overlap(start, end)
        if o > best:
            best, label = o, s.label
    return label


def score_span(span: Span, segments: Sequence[dict], labels: Sequence[str]) -> tuple[str | None, list[float] | None,
                                                                                      int, str | None]:
    """(prediction, probabilities, segments that voted, why no prediction) of one labelled span, from timeline rows
    (``start_s``, ``end_s``, ``prediction``, ``p_<label>``): overlap-weighted mean of the scored segments'
    probabilities, arg-max."""
    sums = [0.0] * len(labels)
    weight, n = 0.0, 0
    for r in segments:
        if r.get("prediction") is None:
            continue
        o = span.overlap(float(r["start_s"]), float(r["end_s"]))
        if o <= 0:
            continue
        n += 1
        weight += o
        for i, lab in enumerate(labels):
            sums[i] += o * float(r.get(f"p_{lab}") or 0.0)
    if n == 0:
        return None, None, 0, NO_SEGMENT
    probs = [v / weight for v in sums]
    best = max(probs)
    if probs.count(best) > 1:
        return None, probs, n, TIE
    return labels[probs.index(best)], probs, n, None
