"""The page's summary: headline metrics (all clips, :mod:`pipeline.report.headline`) with the calibration used, the
scored clips' figure beside them, the confusion matrix, counts (abstentions too), and what the run has not computed
yet. Every number comes from :func:`pipeline.report.build_report`."""

from __future__ import annotations

from pipeline.backends.base import model_name
from pipeline.core.jobs import unit_id
from pipeline.core.paths import shown, unshown
from pipeline.engine.rundir import RunDir
from pipeline.engine.config import load_config
from pipeline.eval.labels import LabelError, LabelSet, load_label_set
from pipeline.engine.runner import stages_to_run
from pipeline.report import headline
from pipeline.report.timelines import drawn
from pipeline.view.collect import RunData
from stages.faces import segments as seg


def run_label_set(run: RunData) -> LabelSet | None:
    """The labels the run scores: those of its report, else those its config names."""
    if run.report:
        ls = run.report["label_set"]
        return LabelSet.from_names(ls["name"], ls["labels"])
    if run.config is None:
        return None
    try:
        return load_label_set(run.config.classify.labels)
    except LabelError:
        return None


def missing_stages(run: RunData) -> list[str]:
    """Sentences that say which stages have not produced results, and why (from status.json)."""
    st = run.status
    if st is None:
        return ["status.json is missing: the run may not have finished, so some clips may lack results"]
    done = list(st.get("stages") or [])
    todo = [s for s in stages_to_run(run.config or load_config()) if s not in done]
    if not todo:
        return []
    if st.get("status") == "stopped":
        why = f"the run stopped before stage '{st.get('stopped_before')}': {st.get('message')}"
    else:
        why = f"the run ended after stage '{done[-1]}' (--until)" if done else "no stage ran"
    out = [f"Not computed: {', '.join(todo)} ({why.rstrip('.')})."]
    if "classify" in todo:
        out.append("There are no label scores yet, so no predictions or metrics; the cards show the faces, "
                   "keyframes and motion summaries that exist.")
    return out


def timelines(run: RunData) -> list[dict] | None:
    """A segmented run's timelines (``timeline.csv``): per recording (and person) its duration and segments, each with
    its times, prediction (None: not scored, with ``why``), the id of its card (None: no card, too little face), and
    where it is drawn (``from``, ``to``)."""
    rows = RunDir(run.run_dir).timeline()
    if rows is None:
        return None
    cards = {c.video for c in run.clips}
    out: dict[tuple, dict] = {}
    for r in rows:
        t = out.setdefault((r["video"], r["subject"]), {"video": r["video"], "subject": r["subject"], "duration": 0.0,
                                                        "segments": []})
        uid = unit_id(unshown(r["video"]), seg.part(r["segment"], r["start_s"], r["end_s"], r["subject"]))
        t["segments"].append({"start": r["start_s"], "end": r["end_s"], "pred": r["prediction"],
                              "id": shown(uid) if uid in cards else None,
                              "why": None if r["prediction"] else (r["reason"] or r["scored"])})
        t["duration"] = max(t["duration"], r["end_s"])
    for t in out.values():  # drawn as the report draws them (segments may overlap)
        g = t["segments"]
        for x, (a, b) in zip(g, drawn([x["start"] for x in g], [x["end"] for x in g])):
            x["from"], x["to"] = a, b
    return list(out.values())


def build_summary(run: RunData, labels: list[str]) -> dict:
    rep = run.report
    m = headline.headline(rep) if rep else None
    scored = headline.scored(rep) if rep else None
    cfg = run.config
    settings = {}
    if cfg is not None:
        ran = {fb["stage"]: f"{fb['ran']}, the fallback for {fb['asked']} (not available on the machine of the run)"
               for fb in (run.status or {}).get("fallbacks") or []}
        settings = {
            "classifier": ran.get("classify", model_name(cfg.classify.model)),
            "captioner": ran.get("context", model_name(cfg.context.model)),
            "keyframes": f"{cfg.keyframes.k}, {cfg.keyframes.strategy}",
            "prompt": ", ".join(name for name, on in (
                ("keyframes", cfg.classify.show_keyframes), ("motion summaries", cfg.classify.show_summaries),
                (f"dense frames at {cfg.classify.dense_fps} fps", cfg.classify.dense_fps is not None),
                ("shuffled order", cfg.classify.shuffle)) if on),
        }
    return {
        "run": shown(run.run_dir.resolve().name),
        "path": shown(run.run_dir.resolve()),
        "status": run.status,
        "labels": labels,
        "label_set": rep["label_set"]["name"] if rep else None,
        "settings": settings,
        "metrics": None if m is None else {k: m[k] for k in ("uar", "war", "macro_f1", "n", "ci")},
        "headline": None if m is None else headline.scope_text(rep),
        "metrics_scored": (None if scored is None or not headline.differs(rep)
                           else {k: scored[k] for k in ("uar", "war", "macro_f1", "n", "ci")}),
        "abstentions": rep["abstentions"] if rep else None,
        "metrics_uncalibrated": rep["metrics_uncalibrated"] if rep else None,
        "calibration": None if rep is None else {k: rep["calibration"].get(k) for k in ("method", "tau", "prior_source")},
        "confusion": None if scored is None else scored["confusion_matrix"],
        "counts": rep["counts"] if rep else None,
        "coverage": rep["coverage"] if rep else None,
        "labels_file": rep["labels_file"] if rep else None,
        "missing": missing_stages(run),
        "timelines": timelines(run),
        "notes": run.notes + (rep["warnings"] + (m["warnings"] if m else []) if rep else []),
    }
