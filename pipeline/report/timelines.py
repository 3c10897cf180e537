"""The timelines of a segmented run in its report (``docs/timelines.md``): ``RUN/timelines.png`` (per recording, for
the first :data:`FIRST_N`, a band of the predicted labels and the probability curves), a table of the share of time
per label (``timeline_summary.csv``), and, with labels with times, the metrics per labelled span
(``span_predictions.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.engine.rundir import SPAN_PREDICTIONS, TIMELINE_PLOT, RunDir
from pipeline.eval.metrics import compute_metrics

FIRST_N = 12


def timeline_report(run: RunDir, out: RunDir, labels: list[str], first_n: int = FIRST_N) -> dict | None:
    """The timelines part of ``metrics.json`` (None: the run is not segmented); draws ``timelines.png`` into ``out``."""
    rows = run.timeline()
    if rows is None:
        return None
    summary = run.timeline_summary() or []
    videos = list(dict.fromkeys((r["video"], r["subject"]) for r in rows))
    shown_ = videos[:first_n]
    plot = None
    if shown_:
        plot = str(out.write_plot(TIMELINE_PLOT, _figure([[r for r in rows if (r["video"], r["subject"]) == v]
                                                           for v in shown_], shown_, labels)))
    doc = {"segments": len(rows), "scored": sum(1 for r in rows if r["prediction"]), "recordings": len(videos),
           "drawn": len(shown_), "plot": plot,
           "share": [{"video": s["video"], "subject": s["subject"], "dominant": s["dominant"], "changes": s["changes"],
                      **{lab: s.get(f"share_{lab}") for lab in labels}} for s in summary]}
    spans = _spans(run.path / SPAN_PREDICTIONS)
    if spans:
        truth = [r["label"] for r in spans]
        pred = [r["prediction"] or None for r in spans]
        doc["spans"] = {"n": len(spans), "abstained": sum(p is None for p in pred),
                        "metrics": compute_metrics(truth, pred, labels, n_boot=200)}
    return doc


def _spans(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def drawn(starts: list[float], ends: list[float]) -> list[tuple[float, float]]:
    """Where each of a recording's segments (in time order) is drawn on a band: where two consecutive segments
    overlap, each instant of the overlap goes to the one whose middle is nearest; elsewhere a segment is drawn whole,
    so contiguous segments leave no gap (a shorter last one included). The report's figure and the viewer's strips
    both draw with it."""
    mids = [(a + b) / 2 for a, b in zip(starts, ends)]
    # the border of segments i and i+1: the midpoint of their middles, kept within their overlap (none: i's end)
    borders = [min(max((m + n) / 2, s), e) for m, n, s, e in zip(mids, mids[1:], starts[1:], ends)]
    return [(max(a, s), min(b, e)) for s, e, a, b in zip(starts, ends, [starts[0], *borders], [*borders, ends[-1]])]


def _figure(groups: list[list[dict]], names: list[tuple], labels: list[str]) -> Figure:
    colours = {lab: c for lab, c in zip(labels, _palette(len(labels)))}
    fig = Figure(figsize=(11, 1.9 * len(groups) + 0.6))
    for k, (rows, (video, subject)) in enumerate(zip(groups, names)):
        ax = fig.add_subplot(len(groups), 1, k + 1)
        mids = np.array([(r["start_s"] + r["end_s"]) / 2 for r in rows])
        band = drawn([r["start_s"] for r in rows], [r["end_s"] for r in rows])
        for r, (a, b) in zip(rows, band):  # the band in the segments' colours, unscored ones hatched grey
            lab = r["prediction"]
            ax.axvspan(a, b, ymin=0.0, ymax=0.12, color=colours[lab] if lab else "0.85", hatch=None if lab else "//",
                       lw=0)
        for lab in labels:
            y = np.array([r.get(f"p_{lab}") if r.get(f"p_{lab}") is not None else np.nan for r in rows], float)
            if np.isfinite(y).any():
                ax.plot(mids, 0.15 + 0.85 * y, color=colours[lab], lw=1.2, marker=".", ms=3, label=lab)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, max(r["end_s"] for r in rows))
        ax.set_yticks([0.15, 1.0], ["p=0", "p=1"], fontsize=7)
        who = f"{video}" + (f" (person {subject})" if subject else "")
        ax.set_title(who, fontsize=8, loc="left")
        if k == len(groups) - 1:
            ax.set_xlabel("seconds")
    handles = [fig.axes[0].plot([], [], color=colours[lab], lw=4)[0] for lab in labels]
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(n)]


SHARE_ROWS = 50  # recordings in report.md's table of time shares (timeline_summary.csv has them all)


def timeline_markdown(doc: dict | None, table) -> str:
    """The report's "Timelines" section (``table``: the report's Markdown table maker)."""
    if doc is None:
        return ""
    out = [f"\n## Timelines\n\n{doc['segments']} segments of {doc['recordings']} recordings, {doc['scored']} scored "
           "(`timeline.csv`; docs/timelines.md)."]
    if doc["plot"]:
        out.append(f"The first {doc['drawn']}:\n\n![timelines]({Path(doc['plot']).name})")
    labels = [k for k in (doc["share"][0] if doc["share"] else {}) if k not in ("video", "subject", "dominant", "changes")]
    if doc["share"]:
        shown_ = doc["share"][:SHARE_ROWS]
        more = len(doc["share"]) - len(shown_)
        out.append("\nShare of the scored time per label" + (f" (the first {len(shown_)} recordings; all "
                                                               f"{len(doc['share'])} in `timeline_summary.csv`)"
                                                               if more else "") + ":\n")
        out += table(["recording", "person", *labels, "dominant", "changes"],
                     [(s["video"], s["subject"], *[f"{100 * s[lab]:.0f}%" if s[lab] is not None else "-" for lab in labels],
                       s["dominant"] or "-", s["changes"]) for s in shown_])
    if "spans" in doc:
        m = doc["spans"]["metrics"]
        out.append(f"\nLabelled spans (`span_predictions.csv`): {doc['spans']['n']}, {doc['spans']['abstained']} without "
                   f"a prediction (errors). UAR {_pct(m['uar'])}, WAR {_pct(m['war'])}.")
    return "\n".join(out) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
