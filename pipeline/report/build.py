"""A run's report, assembled in memory and written to the run directory: calibration, metrics, clip accounting.

Reads ``RUN/scores.jsonl`` (one clip per line: video, label, labels, scores, prediction; a run split into units
has one line per unit, named by its ``unit`` id: ``clip#subject=1``),
``RUN/failures.jsonl`` (video, stage, error, message; may be absent) and ``RUN/labelset.json``
(name, labels); :func:`write_report` writes ``metrics.json``, ``report.md`` (:mod:`.markdown`) and the PNG plots
(:mod:`.plots`). No model is called.

Accounting rule: every clip ends up in exactly one bucket, and every bucket is counted and listed by
name in ``metrics.json`` (the Markdown shows the first 50 of each): scored with a label, scored
without a label, failed (by stage; a scored row that is unusable, e.g. NaN scores, is a failure of
stage ``report``), and, when a labels file is given, labels that match no clip. A scored clip may have no
prediction (an abstention: scored ``none``, or a tie; :mod:`pipeline.eval.ranking` decides, after calibration too).
The headline metrics (``metrics_all_clips``, :mod:`pipeline.report.headline`) count every labelled clip, the
failed ones (their true labels come from the labels file, else from the run's input list as manifest.jsonl keeps
it, or from an optional ``label`` key in failures.jsonl) and
the abstentions as errors, so a run cannot look better by failing or abstaining on hard clips; ``metrics`` are
those of the scored clips (abstentions as errors).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.core.errors import ConfigError, RunDirError, excerpt
from pipeline.engine.config import read_yaml_file
from pipeline.engine.disjoint import check_disjoint
from pipeline.engine.rundir import FAILURES, LABELSET, SCORES, RunDir
from pipeline.eval.calibration import calibrate, prior_from_counts, tau_sweep
from pipeline.eval.labels import (BUILTIN_LABEL_SETS, LabelError, LabelSet, load_label_set, match_labels, read_label_counts,
                                  read_labels)
from pipeline.eval.metrics import compute_metrics, spearman
from pipeline.eval.ranking import SCORED, choose_rows, scored_kind
from pipeline.report import headline
from pipeline.report.markdown import HEADLINE, markdown_table, report_markdown
from pipeline.report.plots import write_plots
from pipeline.report.timelines import timeline_markdown, timeline_report


def _run_labels(run: RunDir, scores: list[tuple[int, dict]]) -> tuple[str, list[str]]:
    found = run.labelset()
    if found is not None:
        return found
    if scores:
        warnings.warn(f"{run / LABELSET} is missing; using the label order of the first row of {SCORES}")
        return "unknown", [str(x) for x in scores[0][1]["labels"]]
    raise RunDirError(f"{run.path}: no {LABELSET} and no scored clips, so the label set is unknown "
                      "(is it the run directory of a `dfer run` that reached classify?)")


def _parse_label_set(name: str, labels: list[str], label_set: str | Path | None, label_format: str) -> LabelSet:
    """The label set used to read label words: given, or the run's built-in one (with its aliases),
    or the official one of ``label_format``, or just the run's names."""
    if label_set is not None:
        ls = load_label_set(label_set)
    elif name in BUILTIN_LABEL_SETS:
        ls = load_label_set(name)
    elif label_format in BUILTIN_LABEL_SETS:
        ls = load_label_set(label_format)
    else:
        return LabelSet.from_names(name, labels)
    extra = [n for n in ls.names if n not in labels]
    if extra:
        raise LabelError(f"label set {ls.source} has labels {extra} that this run did not score "
                         f"(run labels: {labels})")
    return ls


def _train_counts(train_counts: Any, labels: list[str], ls: LabelSet) -> dict[str, int] | None:
    if train_counts is None:
        return None
    where = "train_counts"
    if isinstance(train_counts, (str, Path)):
        where = f"training counts {train_counts}"
        train_counts = read_yaml_file(train_counts, "training counts", LabelError)
    if isinstance(train_counts, Mapping):
        out = {lab: 0 for lab in labels}
        for k, v in train_counts.items():
            out[ls.canonical(str(k), where)] += _count(v, f"{where}: {excerpt(str(k), 60)}")
        return out
    if not isinstance(train_counts, (list, tuple)):
        raise LabelError(f"{where}: expected a mapping label: count (or a list of counts in label order), got "
                         f"{type(train_counts).__name__}")
    counts = [_count(x, f"{where}: entry {i + 1}") for i, x in enumerate(train_counts)]
    if len(counts) != len(labels):
        raise LabelError(f"train_counts has {len(counts)} entries for {len(labels)} labels")
    return dict(zip(labels, counts))


def _count(value: Any, where: str) -> int:
    """A training count: a whole number >= 0 (``12`` or ``12.0``; not ``12.5``, ``-1``, ``nan`` or ``"12"``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0 \
        and float(value).is_integer()
    if not ok:
        raise LabelError(f"{where}: a count must be a whole number >= 0, got {excerpt(value, quote=True)}")
    return int(value)


def _clips(run: RunDir, scores_rows: list[tuple[int, dict]], fail_rows: list[tuple[int, dict]], labels: list[str],
           notes: list[str]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """The scored clips with usable scores, the failed clips (an unusable scored row is a failure of stage
    ``report``; a clip both failed and scored counts as scored) and the label failures.jsonl gives each failed clip."""
    failures: list[dict] = []
    fail_label: dict[str, str | None] = {}
    for no, r in fail_rows:
        vid = str(r.get("video"))
        if vid in fail_label:
            notes.append(f"{run / FAILURES}:{no}: '{vid}' failed twice; the first row is used")
            continue
        failures.append({"video": vid, **{k: r.get(k) for k in ("stage", "error", "message")}})
        fail_label[vid] = r.get("label")
    valid: list[dict] = []
    seen: dict[str, int] = {}
    for no, r in scores_rows:
        vid = str(r.get("unit") or r.get("video"))  # a run split into units (subjects) scores each on its own row
        where = f"{run / SCORES}:{no}"
        if vid in seen:
            notes.append(f"{where}: '{vid}' scored twice (first at line {seen[vid]}); the first row is used")
            continue
        seen[vid] = no
        sc = r.get("scores") or {}
        vals = [sc.get(lab, math.nan) for lab in labels]  # None: a label without a score (a free-text answer)
        kind = _scored(r, labels)
        bad = [lab for lab, v in zip(labels, vals) if v is not None
               and (not isinstance(v, (int, float)) or math.isnan(v) or v == math.inf)]
        ranked = [v for v in vals if v is not None and v != -math.inf]
        if bad or kind not in SCORED or (kind != "none" and not ranked):
            why = (f"missing, NaN or infinite score for {bad}" if bad else f"unknown 'scored' value {kind!r}"
                   if kind not in SCORED else "no score for any label")
            failures.append({"video": vid, "stage": "report", "error": "InvalidScores", "message": f"{where}: {why}"})
            fail_label.setdefault(vid, r.get("label"))
            continue
        valid.append({"video": vid, "label": r.get("label"), "where": where, "model": r.get("model"),
                      "scores": [-math.inf if v is None else float(v) for v in vals], "scored": kind,
                      "prediction": r.get("prediction"), "recorded": "prediction" in r, "abstained": r.get("abstained"),
                      "label_matching": r.get("label_matching"), "label_order": r.get("label_order")})
    scored_ids = {r["video"] for r in valid}
    rescued = sorted({f["video"] for f in failures if f["video"] in scored_ids})
    if rescued:
        notes.append(f"{len(rescued)} clip(s) are in failures.jsonl but also scored; counted as scored: "
                     + ", ".join(rescued[:10]))
        failures = [f for f in failures if f["video"] not in scored_ids]
    return valid, failures, fail_label


def _label_positions(valid: list[dict], pred: list[str], truth: dict[str, str], labels: list[str]) -> dict | None:
    """How often the label at each position of the prompt's label list was predicted, and was the true label, when
    the prompts listed the labels in another order than the label set's (``classify.label_order``); None otherwise."""
    orders = [r["label_order"] or labels for r in valid]
    if all(o == labels for o in orders):
        return None
    n = len(labels)
    predicted, true = np.zeros(n), np.zeros(n)
    n_true = 0
    for r, order, p in zip(valid, orders, pred):
        if sorted(order) != sorted(labels):
            raise RunDirError(f"{r['where']}: label_order {order} is not an order of the run's labels {labels}")
        where = {lab: i for i, lab in enumerate(order)}
        if p is not None:  # a clip without a prediction counts in no position
            predicted[where[p]] += 1
        if r["video"] in truth:
            true[where[truth[r["video"]]]] += 1
            n_true += 1
    kinds = {"reversed" if o == labels[::-1] else "fixed" if o == labels else "shuffled" for o in orders}
    return {"orders": sorted(kinds), "n": len(valid), "n_labelled": n_true,
            "rows": [{"position": i + 1, "predicted": predicted[i] / len(valid),
                      "true": true[i] / n_true if n_true else None} for i in range(n)]}


DEFAULT_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
TUNED_BY = HEADLINE[0]  # the metric a held-out tau is chosen by: (key, name)


def _clip_fingerprints(run: RunDir) -> tuple[dict[str, str | None], str]:
    """``{video: fingerprint}`` of a run's clips from its manifest, else ``{video: video}`` from its scores (a run
    written by hand): what tells two runs' clips apart, and by what."""
    try:
        return {r.video: r.fingerprint for r in run.manifest()}, "file content"
    except RunDirError:
        return {str(r.get("video")): str(r.get("video")) for _, r in run.scores()}, "video id (no manifest.jsonl)"


def choose_tau(run: RunDir, other: str | Path, calibration: str, train_counts: Any, taus: Sequence[float],
               label_set: str | Path | None, labels_file: str | Path | None, label_format: str,
               allow_overlap: bool, smoothing: float = 0.0) -> dict:
    """The tau of ``calibration`` chosen on another run (held out: its clips must not be this run's, by content
    fingerprint, unless ``allow_overlap``): the candidate with the best UAR on its labelled clips (true labels from
    ``labels_file``, else its own), with its training prior (``prior``) or its own estimated prior (``estimated``).
    Returns ``{"run", "by", "tau", "n", "prior", "rows", "overlap"}``."""
    if calibration == "none":
        raise ConfigError("--tau-from chooses the tau of a calibration: pass --calibration prior (with --train-counts) "
                          "or --calibration estimated")
    held = RunDir(other)
    mine, by = _clip_fingerprints(run)
    theirs, by_other = _clip_fingerprints(held)
    pairs = check_disjoint(theirs, mine, f"the clips of {held.path} (where tau is chosen, compared by {by_other})",
                           str(run.path), allow_overlap)
    rep = build_report(held.path, labels_file=labels_file, label_format=label_format, calibration="none",
                       train_counts=train_counts if calibration == "prior" else None, label_set=label_set, n_boot=0,
                       taus=list(taus), smoothing=smoothing)
    sweep = rep.get("tau_sweep")
    if not sweep:
        raise ConfigError(f"--tau-from {held.path}: no scored clip there has a true label, so no tau can be chosen on it "
                          "(pass --tau-from-labels FILE, or run it over a list file with a 'label' column)")
    key = TUNED_BY[0]
    best = max(sweep["rows"], key=lambda r: (-1 if r[key] is None or math.isnan(r[key]) else r[key]))
    return {"run": str(held.path), "by": TUNED_BY[1], "tau": best["tau"], "n": rep["counts"]["scored_labelled"],
            "prior": "training prior" if calibration == "prior" else "prior estimated from its own clips",
            "rows": sweep["rows"], "overlap": [t for t, _ in pairs]}


def _manifest_labels(run: RunDir) -> dict[str, str]:
    """``{video: label}`` as the run's input list gave them (manifest.jsonl), or {} for a run directory without one."""
    try:
        return {r.video: r.label for r in run.manifest() if r.label}
    except RunDirError:
        return {}


def _scored(row: dict, labels: list[str]) -> str:
    """How a scores.jsonl row was scored: its ``scored`` key, or (rows written before it existed) what its raw
    scores' exact flags say, or ``exact``."""
    if "scored" in row:
        return row["scored"]
    raw = row.get("raw")
    try:
        return scored_kind(raw, labels) if isinstance(raw, dict) else "exact"
    except (KeyError, AttributeError, TypeError):
        return "exact"


def build_report(run_dir: str | Path, labels_file: str | Path | None = None, label_format: str = "csv",
                 calibration: str = "none", tau: float = 1.0, train_counts: Any = None,
                 label_set: str | Path | None = None, fold: int | None = None, split: str | None = "test",
                 n_boot: int = 1000, seed: int = 0, smoothing: float = 0.0,
                 taus: Sequence[float] = (), label_frequency: str | Path | None = None,
                 tau_from: str | Path | None = None, tau_from_labels: str | Path | None = None,
                 tau_candidates: Sequence[float] = DEFAULT_TAUS, allow_overlap: bool = False) -> dict:
    """Everything ``metrics.json`` holds, computed in memory (see the module docstring).

    ``label_frequency``: a CSV ``label,count`` (:func:`pipeline.eval.labels.read_label_counts`); adds each class's F1
    against its count and their Spearman rank correlation (``label_frequency`` in the result).

    ``taus``: also score the logit adjustment at each temperature (``tau_sweep``: UAR/WAR/macro-F1 per tau, with
    the training prior when ``train_counts`` is given, else the prior estimated from the run).

    ``tau_from``: another run (held out: a validation split, another fold's clips) on which the tau of
    ``calibration`` is chosen (:func:`choose_tau`, among ``tau_candidates``), instead of ``tau``; ``tau_from_labels``:
    its true labels (else its own). ``taus`` scores every tau on this run's own labels, which the report marks as
    test-set tuning.

    ``labels_file`` (read with ``label_format``; ``fold``/``split`` for a DFEW folder) replaces the
    ``label`` field of scores.jsonl. ``train_counts``: dict label -> count, list in label order, or a
    JSON/YAML file with such a dict; used for head/medium/tail groups and by calibration 'prior'.
    """
    run = RunDir(run_dir)
    scores_rows = run.scores()
    fail_rows = run.failures()
    name, labels = _run_labels(run, scores_rows)
    ls = _parse_label_set(name, labels, label_set, label_format)
    frequency = read_label_counts(label_frequency, ls) if label_frequency is not None else None

    notes: list[str] = []
    overlap = (run.status() or {}).get("training_overlap")
    if overlap:
        notes.append(f"{len(overlap['clips'])} clip(s) of this run are among the training or validation clips of the "
                     f"adapter {overlap['adapter']} (allowed with --allow-overlap): "
                     + ", ".join(overlap["clips"][:10]))
    valid, failures, fail_label = _clips(run, scores_rows, fail_rows, labels, notes)
    clip_ids = [r["video"] for r in valid] + [f["video"] for f in failures]

    # True labels, for scored and failed clips alike.
    labels_without_clip: list[str] = []
    if labels_file is not None:
        with warnings.catch_warnings(record=True) as caught:  # keep reader/matcher warnings in the report
            warnings.simplefilter("always")
            matched, _, labels_without_clip = match_labels(read_labels(labels_file, label_format, ls, fold, split),
                                                           clip_ids)
        notes.extend(str(w.message) for w in caught)
        truth = dict(matched)
    else:
        scored_ids = {r["video"] for r in valid}
        truth = {r["video"]: ls.canonical(r["label"], r["where"]) for r in valid if r["label"] is not None}
        truth.update({v: ls.canonical(lab, "failures.jsonl") for v, lab in fail_label.items()
                      if lab is not None and v not in scored_ids})
        listed = _manifest_labels(run)  # the input list's labels of the clips that failed before classify
        for v in fail_label:
            if v not in truth and listed.get(v):
                try:
                    truth[v] = ls.canonical(listed[v], f"{run / 'manifest.jsonl'}")
                except LabelError as exc:
                    notes.append(str(exc))

    raw = np.array([r["scores"] for r in valid], dtype=float).reshape(len(valid), len(labels))
    kinds = [r["scored"] for r in valid]
    ranked = [i for i, k in enumerate(kinds) if k != "none"]  # a clip scored "none" abstains whatever calibration does
    tc = _train_counts(train_counts, labels, ls)
    held_out = None
    if tau_from is not None:
        held_out = choose_tau(run, tau_from, calibration, tc, tau_candidates, label_set, tau_from_labels,
                              label_format, allow_overlap, smoothing)
        tau = held_out["tau"]
        if held_out["overlap"]:
            notes.append(f"the tau was chosen on {tau_from}, which shares {len(held_out['overlap'])} clip(s) with this "
                         "run (allowed with --allow-overlap): " + ", ".join(held_out["overlap"][:10]))
    adjusted, cal_info = raw.copy(), {"method": calibration, "tau": tau, "prior": None}
    if ranked:
        try:
            adjusted[ranked], cal_info = calibrate(raw[ranked], calibration, tau, tc, labels, smoothing)
        except ValueError as exc:
            raise ConfigError(f"calibration {calibration!r}: {exc}") from None
    if held_out is not None:
        cal_info["tau_from"] = held_out
    chosen, raw_chosen = (choose_rows(x, labels, kinds) for x in (adjusted, raw))
    pred = [p for p, _ in chosen]
    why = [(r["abstained"] or w) if r["scored"] == "none" else w for r, (_, w) in zip(valid, chosen)]  # as recorded
    raw_pred = [p for p, _ in raw_chosen]
    differs = [r["video"] for r, p in zip(valid, raw_pred) if r["recorded"] and r["prediction"] != p]
    if differs:
        notes.append(f"{len(differs)} clip(s) whose recorded prediction is not the one their raw scores give "
                     f"(the one the scores give is used): {', '.join(differs[:10])}")

    labelled = [i for i, r in enumerate(valid) if r["video"] in truth]
    unlabeled = [r["video"] for r in valid if r["video"] not in truth]
    failed_labelled = [f["video"] for f in failures if f["video"] in truth]
    y_true = [truth[valid[i]["video"]] for i in labelled]
    metrics = metrics_raw = coverage_metrics = metrics_all = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same notes are returned inside the dict
        if labelled:
            metrics = compute_metrics(y_true, [pred[i] for i in labelled], labels, tc, n_boot, seed)
            if calibration != "none":
                m = compute_metrics(y_true, [raw_pred[i] for i in labelled], labels, tc, 0, seed)
                metrics_raw = {k: m[k] for k, _ in HEADLINE}
        if failed_labelled:  # the headline: failed clips count as errors too
            metrics_all = compute_metrics(y_true + [truth[v] for v in failed_labelled],
                                          [pred[i] for i in labelled] + [None] * len(failed_labelled),
                                          labels, tc, n_boot, seed)
            coverage_metrics = {k: metrics_all[k] for k in ("uar", "war", "macro_f1", "ci")}
        else:
            metrics_all = metrics
    if not labelled and (valid or failures):
        notes.append("no scored clip has a true label: metrics of the scored clips are not computed"
                     + (" (the headline counts the failed ones)" if failed_labelled else ""))
    n_lab = len(labelled) + len(failed_labelled)
    sweep = None
    if taus and labelled:
        try:
            prior = prior_from_counts(tc, labels, smoothing) if tc else None
        except ValueError as exc:
            raise ConfigError(f"--tau-sweep with the training prior: {exc}") from None
        sweep = {"prior": "training prior" if prior is not None else "prior estimated from this run",
                 "scope": "scored clips, abstentions as errors",
                 "rows": tau_sweep(raw[labelled], y_true, prior, list(taus), labels, [kinds[i] for i in labelled]),
                 "test_set_tuning": True}
    return {
        "run_dir": str(run.path),
        "label_set": {"name": name, "labels": labels},
        "models": dict(Counter(str(r["model"]) for r in valid if r["model"])),
        "fallbacks": list((run.status() or {}).get("fallbacks") or []),
        "runcard": run.runcard(),
        "stage_models": dict((run.status() or {}).get("models") or {}),
        "label_matching": dict(Counter(str(r["label_matching"]) for r in valid if r["label_matching"])),
        "labels_file": None if labels_file is None else {"path": str(labels_file), "format": label_format},
        "calibration": cal_info,
        "train_counts": tc,
        "counts": {
            "scored": len(valid), "scored_labelled": len(labelled), "scored_unlabeled": len(unlabeled),
            "failed": len(failures), "failed_by_stage": dict(Counter(str(f["stage"]) for f in failures)),
            "failed_labelled": len(failed_labelled), "labels_without_clip": len(labels_without_clip),
            **{f"scored_{k}": kinds.count(k) for k in SCORED},
        },
        "headline": headline.HEADLINE_SCOPE,
        "scopes": headline.SCOPES,
        "abstentions": headline.abstentions(valid, labelled, why),
        "coverage": {"labelled_clips": n_lab, "labelled_scored": len(labelled),
                     "fraction": len(labelled) / n_lab if n_lab else None,
                     "failures_as_wrong": coverage_metrics},
        "metrics_all_clips": metrics_all,
        "metrics": metrics,
        "metrics_uncalibrated": metrics_raw,
        "predictions": {r["video"]: p for r, p in zip(valid, pred)},
        "abstained_clips": {r["video"]: w for r, w in zip(valid, why) if w},
        "true_labels": {v: truth[v] for v in clip_ids if v in truth},
        "unlabeled_clips": unlabeled,
        "failed_clips": failures,
        "labels_without_clip": labels_without_clip,
        "warnings": notes,
        **({"label_positions": positions} if (positions := _label_positions(valid, pred, truth, labels)) else {}),
        **({"tau_sweep": sweep} if taus else {}),
        **({"label_frequency": _f1_by_frequency(label_frequency, frequency, metrics, notes)}
           if frequency is not None else {}),
    }


def _f1_by_frequency(path: str | Path, counts: dict[str, float], metrics: dict | None, notes: list[str]) -> dict:
    """Each class's count and F1, and the Spearman rank correlation over the classes that have both."""
    rows = [{"label": r["label"], "count": counts.get(r["label"]), "f1": r["f1"]}
            for r in (metrics["per_class"] if metrics else [])]
    used = [r for r in rows if r["count"] is not None and r["f1"] is not None]
    left_out = [r["label"] for r in rows if r not in used]
    if left_out:
        notes.append(f"label frequency: left out of the correlation (no count in {path}, or no test example): "
                     + ", ".join(left_out))
    return {"path": str(path), "rows": rows, "left_out": left_out, "n": len(used),
            "spearman": spearman([r["count"] for r in used], [r["f1"] for r in used])}


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, **kwargs: Any) -> dict:
    """Build the report (``kwargs``: those of :func:`build_report`) and write ``metrics.json``, ``report.md`` and the
    PNG plots into ``out_dir`` (default: the run directory)."""
    rep = build_report(run_dir, **kwargs)
    out = RunDir(out_dir if out_dir is not None else run_dir)
    out.create()
    rep["plots"] = write_plots(rep, out.path)
    timelines = timeline_report(RunDir(run_dir), out, rep["label_set"]["labels"])
    if timelines is not None:  # a segmented run (docs/timelines.md)
        rep["timelines"] = timelines
    out.write_metrics(rep)
    out.write_report(report_markdown(rep, rep["plots"]) + timeline_markdown(timelines, markdown_table))
    return rep
