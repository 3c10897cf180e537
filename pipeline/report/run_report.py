"""Report for a run directory: calibration, metrics, Markdown summary and plots. No model is called.

Reads ``RUN/scores.jsonl`` (one clip per line: video, label, labels, scores, prediction),
``RUN/failures.jsonl`` (video, stage, error, message; may be absent) and ``RUN/labelset.json``
(name, labels), and writes ``metrics.json``, ``report.md`` and three PNG plots (a fourth with
``label_frequency``: per-class F1 against how often each label word occurs, e.g. in a web corpus).

Accounting rule: every clip ends up in exactly one bucket, and every bucket is counted and listed by
name in ``metrics.json`` (the Markdown shows the first 50 of each): scored with a label, scored
without a label, failed (by stage; a scored row that is unusable, e.g. NaN scores, is a failure of
stage ``report``), and, when a labels file is given, labels that match no clip. The headline metrics
are computed on scored, labelled clips; ``coverage`` adds the labelled failed clips counted as wrong
(their true labels come from the labels file, or from an optional ``label`` key in failures.jsonl),
so a run cannot look better by failing on hard clips.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml
from matplotlib.figure import Figure

from pipeline.eval.calibration import calibrate, prior_from_counts, tau_sweep
from pipeline.eval.labels import (BUILTIN_LABEL_SETS, LabelError, LabelSet, load_label_set, match_labels, read_label_counts,
                             read_labels)
from pipeline.eval.metrics import GROUP_NAMES, compute_metrics, spearman
from pipeline.core.errors import ConfigError, RunDirError
from pipeline.engine.rundir import FAILURES, FREQUENCY_PLOT, LABELSET, PLOTS, SCORES, RunDir

LIST_LIMIT = 50  # rows per list in report.md; metrics.json always lists everything
HEADLINE = (("uar", "UAR"), ("war", "WAR"), ("macro_f1", "macro-F1"))  # key in metrics.json, name in tables


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
    if isinstance(train_counts, (str, Path)):
        try:
            train_counts = yaml.safe_load(Path(train_counts).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise LabelError(f"training counts {train_counts}: cannot be read as JSON/YAML ({exc})") from None
    if isinstance(train_counts, Mapping):
        out = {lab: 0 for lab in labels}
        for k, v in train_counts.items():
            out[ls.canonical(str(k), "train_counts")] += int(v)
        return out
    counts = [int(x) for x in train_counts]
    if len(counts) != len(labels):
        raise LabelError(f"train_counts has {len(counts)} entries for {len(labels)} labels")
    return dict(zip(labels, counts))


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
        vid = str(r.get("video"))
        where = f"{run / SCORES}:{no}"
        if vid in seen:
            notes.append(f"{where}: '{vid}' scored twice (first at line {seen[vid]}); the first row is used")
            continue
        seen[vid] = no
        sc = r.get("scores") or {}
        vals = [sc.get(lab) for lab in labels]
        bad = [lab for lab, v in zip(labels, vals)
               if not isinstance(v, (int, float)) or math.isnan(v) or v == math.inf]
        if bad or max(vals) == -math.inf:
            failures.append({"video": vid, "stage": "report", "error": "InvalidScores",
                             "message": f"{where}: missing, NaN or infinite score for {bad or 'every label'}"})
            fail_label.setdefault(vid, r.get("label"))
            continue
        valid.append({"video": vid, "label": r.get("label"), "scores": vals, "prediction": r.get("prediction"),
                      "where": where, "model": r.get("model")})
    scored_ids = {r["video"] for r in valid}
    rescued = sorted({f["video"] for f in failures if f["video"] in scored_ids})
    if rescued:
        notes.append(f"{len(rescued)} clip(s) are in failures.jsonl but also scored; counted as scored: "
                     + ", ".join(rescued[:10]))
        failures = [f for f in failures if f["video"] not in scored_ids]
    return valid, failures, fail_label


def build_report(run_dir: str | Path, labels_file: str | Path | None = None, label_format: str = "csv",
                 calibration: str = "none", tau: float = 1.0, train_counts: Any = None,
                 label_set: str | Path | None = None, fold: int | None = None, split: str | None = "test",
                 n_boot: int = 1000, seed: int = 0, smoothing: float = 0.0,
                 taus: Sequence[float] = (), label_frequency: str | Path | None = None) -> dict:
    """Everything ``metrics.json`` holds, computed in memory (see the module docstring).

    ``label_frequency``: a CSV ``label,count`` (:func:`pipeline.eval.labels.read_label_counts`); adds each class's F1
    against its count and their Spearman rank correlation (``label_frequency`` in the result).

    ``taus``: also score the logit adjustment at each temperature (``tau_sweep``: UAR/WAR/macro-F1 per tau, with
    the training prior when ``train_counts`` is given, else the prior estimated from the run).

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

    raw = np.array([r["scores"] for r in valid], dtype=float).reshape(len(valid), len(labels))
    tc = _train_counts(train_counts, labels, ls)
    if valid:
        try:
            adjusted, cal_info = calibrate(raw, calibration, tau, tc, labels, smoothing)
        except ValueError as exc:
            raise ConfigError(f"calibration {calibration!r}: {exc}") from None
    else:
        adjusted, cal_info = raw, {"method": calibration, "tau": tau, "prior": None}
    pred, raw_pred = ([labels[i] for i in np.argmax(x, axis=1)] if valid else [] for x in (adjusted, raw))
    differs = [r["video"] for r, p in zip(valid, raw_pred) if r["prediction"] is not None and r["prediction"] != p]
    if differs:
        notes.append(f"{len(differs)} clip(s) whose recorded prediction is not the argmax of their raw scores "
                     f"(the argmax is used): {', '.join(differs[:10])}")

    labelled = [i for i, r in enumerate(valid) if r["video"] in truth]
    unlabeled = [r["video"] for r in valid if r["video"] not in truth]
    failed_labelled = [f["video"] for f in failures if f["video"] in truth]
    y_true = [truth[valid[i]["video"]] for i in labelled]
    metrics = metrics_raw = coverage_metrics = None
    if labelled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same notes are returned inside the dict
            metrics = compute_metrics(y_true, [pred[i] for i in labelled], labels, tc, n_boot, seed)
            if calibration != "none":
                m = compute_metrics(y_true, [raw_pred[i] for i in labelled], labels, tc, 0, seed)
                metrics_raw = {k: m[k] for k, _ in HEADLINE}
            if failed_labelled:
                m = compute_metrics(y_true + [truth[v] for v in failed_labelled],
                                    [pred[i] for i in labelled] + [None] * len(failed_labelled),
                                    labels, tc, n_boot, seed)
                coverage_metrics = {k: m[k] for k in ("uar", "war", "macro_f1", "ci")}
    elif valid or failures:
        notes.append("no scored clip has a true label: metrics are not computed")
    n_lab = len(labelled) + len(failed_labelled)
    sweep = None
    if taus and labelled:
        prior = prior_from_counts(tc, labels) if tc else None
        sweep = {"prior": "training prior" if prior is not None else "prior estimated from this run",
                 "rows": tau_sweep(raw[labelled], y_true, prior, list(taus), labels)}
    return {
        "run_dir": str(run.path),
        "label_set": {"name": name, "labels": labels},
        "models": dict(Counter(str(r["model"]) for r in valid if r["model"])),
        "fallbacks": list((run.status() or {}).get("fallbacks") or []),
        "labels_file": None if labels_file is None else {"path": str(labels_file), "format": label_format},
        "calibration": cal_info,
        "train_counts": tc,
        "counts": {
            "scored": len(valid), "scored_labelled": len(labelled), "scored_unlabeled": len(unlabeled),
            "failed": len(failures), "failed_by_stage": dict(Counter(str(f["stage"]) for f in failures)),
            "failed_labelled": len(failed_labelled), "labels_without_clip": len(labels_without_clip),
        },
        "coverage": {"labelled_clips": n_lab, "labelled_scored": len(labelled),
                     "fraction": len(labelled) / n_lab if n_lab else None,
                     "failures_as_wrong": coverage_metrics},
        "metrics": metrics,
        "metrics_uncalibrated": metrics_raw,
        "predictions": {r["video"]: p for r, p in zip(valid, pred)},
        "true_labels": {v: truth[v] for v in clip_ids if v in truth},
        "unlabeled_clips": unlabeled,
        "failed_clips": failures,
        "labels_without_clip": labels_without_clip,
        "warnings": notes,
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


def summary(rep: dict, out_dir: str | Path) -> str:
    """What ``dfer report`` prints: headline metrics, clip counts, the tau sweep if asked for, files written."""
    m, c = rep.get("metrics"), rep["counts"]
    lines = [f"{_headline(m)}  ({c['scored_labelled']} labelled clips, calibration {rep['calibration']['method']})"
             if m else "no labelled clip: metrics not computed (pass --labels FILE)",
             f"scored {c['scored']}, failed {c['failed']}, scored without label {c['scored_unlabeled']}, "
             f"labels without clip {c['labels_without_clip']}"]
    if "tau_sweep" in rep:
        sweep = rep["tau_sweep"]
        if sweep is None:
            lines.append("tau sweep: no labelled clip")
        else:
            lines.append(f"tau sweep ({sweep['prior']}):")
            lines += [f"  tau {r['tau']:>5.2f}: {_headline(r)}" for r in sweep["rows"]]
    if "label_frequency" in rep:
        lf = rep["label_frequency"]
        lines.append(f"per-class F1 against label frequency: Spearman rank correlation {_rho(lf['spearman'])} "
                     f"over {lf['n']} classes")
    out = Path(out_dir)
    lines.append(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Markdown


def pct(x: float | None) -> str:
    """A share as a percentage with two decimals (``n/a`` for None)."""
    return "n/a" if x is None else f"{100 * x:.2f}"


def ci_text(ci: list[float] | None) -> str:
    """A confidence interval ``[lo, hi]`` in percent (empty when there is none)."""
    return "" if not ci else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def pct_ci(x: float | None, ci: list[float] | None) -> str:
    """A share in percent followed by its confidence interval, if any."""
    return f"{pct(x)} {ci_text(ci)}".strip()


def calibration_text(cal: dict) -> str:
    """The calibration of a report: its method, with its tau unless it is ``none``."""
    return cal["method"] + (f" (tau={cal['tau']})" if cal["method"] != "none" else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table (cells written with ``str``)."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def _headline(m: dict, template: str = "{} {}", sep: str = "  ") -> str:
    """UAR, WAR and macro-F1 of ``m`` in percent, e.g. ``UAR 51.20  WAR 60.00  macro-F1 48.31``."""
    return sep.join(template.format(name, pct(m[k])) for k, name in HEADLINE)


def _rho(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _listing(title: str, items: list, fmt=str) -> list[str]:
    if not items:
        return []
    lines = [f"\n## {title} ({len(items)})\n", *(f"- {fmt(x)}" for x in items[:LIST_LIMIT])]
    if len(items) > LIST_LIMIT:
        lines.append(f"- ... and {len(items) - LIST_LIMIT} more (all listed in metrics.json)")
    return lines


def _freq_order(m: dict) -> tuple[list[int], str]:
    """Class positions sorted by training count (or test support), most frequent first."""
    rows = m["per_class"]
    use_train = rows[0]["train_count"] is not None
    key = "train_count" if use_train else "support"
    return sorted(range(len(rows)), key=lambda i: (-rows[i][key], i)), ("training count" if use_train else "test support")


def _models_markdown(rep: dict) -> list[str]:
    """Which model scored the clips, and the stages that fell back to the embedded model."""
    models = ", ".join(f"{name} ({n} clips)" for name, n in rep["models"].items())
    fallbacks = [f"**Fallback:** stage `{fb['stage']}` ran the embedded model {fb['ran']} in place of {fb['asked']}, "
                 "which could not be had on the machine of the run.\n" for fb in rep["fallbacks"]]
    return ([f"Scored by: {models}.\n"] if models else []) + fallbacks


def _metrics_markdown(m: dict, uncalibrated: dict | None) -> list[str]:
    """The overall metrics with their CIs, each class, head/medium/tail and the collapse onto head classes."""
    ci, g, col = m["ci"], m["groups"], m["collapse"]
    out = [f"\n## Overall ({m['n']} scored, labelled clips)\n",
           *markdown_table(["metric", "value", f"{int(100 * ci['level'])} % CI ({ci['n_boot']} bootstrap resamples)"],
                           [(f"{name} (%)", pct(m[k]), ci_text(ci[k])) for k, name in HEADLINE])]
    if uncalibrated:
        out.append(f"\nWithout calibration: {_headline(uncalibrated, '{}={} %', ', ')}.")
    order, basis = _freq_order(m)
    group_of = {lab: name for name, d in g["by_group"].items() for lab in d["labels"]}
    per_class = [(r["label"], group_of.get(r["label"], "-"), "-" if r["train_count"] is None else r["train_count"],
                  r["support"], r["predicted"], *(pct(r[k]) for k in ("precision", "recall", "f1")))
                 for r in (m["per_class"][i] for i in order)]
    out += [f"\n## Per class (sorted by {basis})\n",
            *markdown_table(["label", "group", "train", "support", "predicted", "precision", "recall", "F1"], per_class),
            "\n## Head / medium / tail\n", f"Groups from {g['source'].replace('_', ' ')}: {g['rule']}.\n",
            *markdown_table(["group", "labels", "clips", "UAR (%)", "macro-F1 (%)", "accuracy (%)"],
                            [(name, ", ".join(map(str, d["labels"])), d["n"], pct(d["uar"]), pct(d["macro_f1"]),
                              pct(d["accuracy"])) for name, d in g["by_group"].items()]),
            "\n## Collapse onto head classes\n",
            f"- total variation between predicted and true label distributions: {col['total_variation']:.4f}",
            f"- KL(true || predicted), 0.5 pseudo-count: {col['kl_true_pred']:.4f}",
            "- Jensen-Shannon distance (base 2): " + ("n/a" if col["js_distance"] is None else f"{col['js_distance']:.4f}"),
            f"- head-class share: true {pct(col['head_share_true'])} %, predicted {pct(col['head_share_pred'])} %",
            f"- tail clips predicted as a head class: {pct(col['tail_to_head_share'])} % of {col['n_tail_clips']}",
            f"- classes never predicted: {', '.join(map(str, col['classes_never_predicted'])) or 'none'}"]
    if m["classes_without_examples"]:
        out.append(f"- classes with no test example (left out of UAR/macro-F1): "
                   f"{', '.join(map(str, m['classes_without_examples']))}")
    return out


def _markdown(rep: dict, plots: dict[str, str]) -> str:
    c, cov, m, src = rep["counts"], rep["coverage"], rep["metrics"], rep["labels_file"]
    by_stage = ", ".join(f"{k}: {v}" for k, v in c["failed_by_stage"].items()) or "-"
    out = [f"# Report: {Path(rep['run_dir']).name}\n",
           f"Label set: {rep['label_set']['name']} ({len(rep['label_set']['labels'])} labels). "
           f"Calibration: {calibration_text(rep['calibration'])}. True labels from: "
           + (f"`{src['path']}` ({src['format']})" if src else "scores.jsonl") + ".\n",
           *_models_markdown(rep),
           "## Clips\n",
           *markdown_table(["bucket", "clips"], [
               ("scored", c["scored"]), ("scored, with label", c["scored_labelled"]),
               ("scored, without label", c["scored_unlabeled"]), ("failed", f"{c['failed']} ({by_stage})"),
               ("failed, with label", c["failed_labelled"]), ("labels without clip", c["labels_without_clip"])])]
    if cov["labelled_clips"]:
        line = f"\nCoverage: {cov['labelled_scored']} of {cov['labelled_clips']} labelled clips scored."
        if cov["failures_as_wrong"]:
            line += f" Failures counted as wrong: {_headline(cov['failures_as_wrong'], '{}={} %', ', ')}."
        elif not c["failed"]:
            line += " No clip failed."
        if c["failed"] > c["failed_labelled"]:
            line += (f" {c['failed'] - c['failed_labelled']} failed clip(s) have no known label "
                     "(pass a labels file to count them as wrong).")
        out.append(line)
    out += (_metrics_markdown(m, rep["metrics_uncalibrated"]) if m is not None
            else ["\nNo scored clip has a true label, so no metrics were computed."])
    if "label_frequency" in rep and m is not None:
        lf = rep["label_frequency"]
        out += ["\n## Per-class F1 against label frequency\n",
                f"Counts from `{lf['path']}`. Spearman rank correlation between count and F1: {_rho(lf['spearman'])} "
                f"over {lf['n']} classes" + (f" (left out: {', '.join(lf['left_out'])})" if lf["left_out"] else "")
                + ".\n",
                *markdown_table(["label", "count", "F1 (%)"], [
                    (r["label"], "-" if r["count"] is None else f"{r['count']:g}", pct(r["f1"]))
                    for r in sorted(lf["rows"], key=lambda r: -(r["count"] or 0))])]
    if plots:
        out += ["\n## Plots\n", *(f"![{k}]({v})" for k, v in plots.items())]
    out += _listing("Warnings", rep["warnings"] + (m["warnings"] if m else []))
    out += _listing("Failed clips", rep["failed_clips"],
                    lambda f: f"`{f['video']}` ({f['stage']}, {f['error']}): {f['message']}")
    out += _listing("Scored clips without a label", rep["unlabeled_clips"], lambda v: f"`{v}`")
    out += _listing("Labels without a clip", rep["labels_without_clip"], lambda v: f"`{v}`")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Plots (object-oriented matplotlib with the Agg canvas; no pyplot state, no GUI)


def _plots(rep: dict, out_dir: Path) -> dict[str, str]:
    m = rep["metrics"]
    if m is None:
        return {}
    order, basis = _freq_order(m)
    names = [m["labels"][i] for i in order]
    n = len(names)
    cm = np.array(m["confusion_matrix"]["matrix"])[np.ix_(order, order)]
    support = np.array([m["per_class"][i]["support"] for i in order])
    norm = cm / np.maximum(support, 1)[:, None]
    size = max(5.0, 0.6 * n + 2)
    figures = {"confusion": Figure(figsize=(size, size)), "recall": Figure(figsize=(size + 1, 4)),
               "distribution": Figure(figsize=(size + 1, 4))}

    ax = figures["confusion"].add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (rows normalised; classes by {basis})")
    figures["confusion"].colorbar(im, ax=ax, fraction=0.046)

    group_of = {lab: g for g, d in m["groups"]["by_group"].items() for lab in d["labels"]}
    colors = dict(zip(GROUP_NAMES, ("tab:blue", "tab:orange", "tab:red")))
    ax = figures["recall"].add_subplot()
    recall = [m["per_class"][i]["recall"] for i in order]
    ax.bar(range(n), [0 if r is None else r for r in recall], color=[colors.get(group_of.get(x), "gray") for x in names])
    for i, (r, s) in enumerate(zip(recall, support)):
        ax.text(i, (r or 0) + 0.01, "n/a" if r is None else f"n={s}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    ax.set_title(f"Per-class recall (classes by {basis}; blue head, orange medium, red tail)")

    col = m["collapse"]
    ax = figures["distribution"].add_subplot()
    x = np.arange(n)
    ax.bar(x - 0.2, [col["true_distribution"][k] for k in names], 0.4, label="true")
    ax.bar(x + 0.2, [col["pred_distribution"][k] for k in names], 0.4, label="predicted")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_ylabel("share of clips")
    ax.set_title(f"True vs predicted label distribution (TV = {col['total_variation']:.3f})")
    ax.legend()
    for key, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out_dir / PLOTS[key], dpi=100)
    plots = dict(PLOTS)
    lf = rep.get("label_frequency")
    if lf and lf["n"]:
        _frequency_plot(lf, out_dir / FREQUENCY_PLOT)
        plots["f1_vs_frequency"] = FREQUENCY_PLOT
    return plots


def _frequency_plot(lf: dict, path: Path) -> None:
    """Per-class F1 (y) against the label's count (x, log scale), each point labelled, Spearman's rho in the title."""
    used = [r for r in lf["rows"] if r["label"] not in lf["left_out"]]
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    x, y = [r["count"] for r in used], [r["f1"] for r in used]
    ax.scatter(x, y)
    for r in used:
        ax.annotate(str(r["label"]), (r["count"], r["f1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"label frequency ({Path(lf['path']).name}, log scale)")
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1 against label frequency (Spearman rho = {_rho(lf['spearman'])}, {lf['n']} classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, **kwargs: Any) -> dict:
    """Build the report (``kwargs``: those of :func:`build_report`) and write ``metrics.json``, ``report.md`` and the
    PNG plots into ``out_dir`` (default: the run directory)."""
    rep = build_report(run_dir, **kwargs)
    out = RunDir(out_dir if out_dir is not None else run_dir)
    out.create()
    rep["plots"] = _plots(rep, out.path)
    out.write_metrics(rep)
    out.write_report(_markdown(rep, rep["plots"]))
    return rep
