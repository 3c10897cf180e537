"""``dfer compare``: several run directories side by side (ablations), or as the folds of one protocol (``--folds``,
e.g. DFEW's five). No model is called.

Every number is ``dfer report``'s: a run's ``metrics.json`` when it has one (written by this version) and nothing is
to be recomputed, else :func:`pipeline.report.build.build_report` on the run (``kwargs``: true labels,
calibration), without writing anything. The headline is that of :mod:`pipeline.report.headline`: all labelled clips,
failed and abstained ones counted as errors.

- :func:`compare_runs`: the headline metrics with their bootstrap CIs beside those of the scored clips, the clips
  scored, abstained, partial and failed, the model each stage ran, each class's recall, and how far each run's
  predictions collapse onto head classes, one column per run; each later run paired with the first on the clips they
  share (:mod:`.paired`: paired-bootstrap CIs of the differences, McNemar's test); then the ``config.yaml`` keys
  that differ. A warning comes first when the runs' cards (``runcard.json``: versions, model revisions, devices,
  dtypes) differ, or a run has none.
- :func:`fold_summary` / :func:`compare_folds`: mean and sample standard deviation (ddof=1) over the folds of the
  headline UAR, WAR, macro-F1 and each class's recall. The folds must share one label set. A class with no test
  example in a fold has no recall there: its mean and std are over the folds that have it, and the table says how
  many.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.core.errors import LabelError, RunDirError
from pipeline.eval.metrics import mean_std
from pipeline.report import headline
from pipeline.report.build import build_report
from pipeline.engine.runcard import RESOLVED_HERE, comparable
from pipeline.report.markdown import HEADLINE, calibration_text, card_value, markdown_table, pct, pct_ci
from pipeline.report.paired import paired_comparison, paired_markdown
from pipeline.engine.rundir import RunDir

COLLAPSE_ROWS = (
    ("total variation, true vs predicted", "total_variation", "{:.4f}".format),
    ("KL(true ‖ predicted), 0.5 pseudo-count", "kl_true_pred", "{:.4f}".format),
    ("Jensen-Shannon distance", "js_distance", "{:.4f}".format),
    ("head-class share, true (%)", "head_share_true", pct),
    ("head-class share, predicted (%)", "head_share_pred", pct),
    ("tail clips predicted as head (%)", "tail_to_head_share", pct),
)


def load_reports(run_dirs: Sequence[str | Path], **kwargs: Any) -> tuple[list[str], list[dict]]:
    """Column names (the folders' names, or their paths when two share a name) and each run's report."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("compare needs at least one run directory")
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise RunDirError(f"not a directory: {', '.join(missing)}")
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    reps = []
    for d in dirs:
        saved = RunDir(d).metrics() if not kwargs else None
        reps.append(saved if headline.is_current(saved) else build_report(d, **kwargs))
    return names, reps


def _class_labels(reps: list[dict]) -> list[str]:
    """Every label of every run, in the order they first appear."""
    return list(dict.fromkeys(lab for rep in reps for lab in rep["label_set"]["labels"]))


def _recall_cell(rep: dict, label: str) -> str:
    """A class's recall in one run: a percentage, ``n/a`` (no test example), or ``-`` (not in its label set)."""
    rows = {r["label"]: r for r in (headline.headline(rep) or {}).get("per_class", [])}
    if label not in rep["label_set"]["labels"]:
        return "-"
    return pct(rows[label]["recall"]) if label in rows else "n/a"


def _collapse_rows(reps: list[dict]) -> list[list[str]]:
    cols = [(headline.headline(rep) or {}).get("collapse") or {} for rep in reps]
    rows = [[title, *("n/a" if c.get(key) is None else fmt(c[key]) for c in cols)] for title, key, fmt in COLLAPSE_ROWS]
    return rows + [["classes never predicted",
                    *(", ".join(map(str, c.get("classes_never_predicted", []))) or "none" for c in cols)]]


def _models_table(names: list[str], reps: list[dict]) -> list[str]:
    """The model each model stage ran in each run (the fallback named where a stage fell back), from status.json."""
    stages = list(dict.fromkeys(s for rep in reps for s in rep.get("stage_models") or {}))
    if not stages:
        return []
    fell = [{fb["stage"]: fb for fb in rep.get("fallbacks") or []} for rep in reps]

    def cell(rep: dict, fb: dict, stage: str) -> str:
        ran = (rep.get("stage_models") or {}).get(stage)
        if ran is None:
            return "-"
        return f"{ran} (fallback for {fb[stage]['asked']})" if stage in fb else ran

    return ["", "Models that ran:", ""] + markdown_table(
        ["stage", *names], [[stage, *(cell(rep, fb, stage) for rep, fb in zip(reps, fell))] for stage in stages])


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    return {key: v for k, sub in d.items() for key, v in _flatten(sub, f"{prefix}.{k}" if prefix else str(k)).items()}


def _config_diff(names: list[str], dirs: list[Path]) -> list[str]:
    configs = {name: _flatten(cfg) for name, cfg in zip(names, (RunDir(d).config() for d in dirs)) if cfg is not None}
    if len(configs) < 2:
        return ["", "Only one run has a config.yaml; no config diff."] if configs else []
    keys = sorted({k for c in configs.values() for k in c})
    diff = [k for k in keys if len({(k in c, json.dumps(c.get(k), default=str, sort_keys=True))
                                    for c in configs.values()}) > 1]
    out = ["", f"Config keys that differ ({len(diff)}):" if diff else "Configs are identical."]
    if diff:
        cols = list(configs)
        out += [""] + markdown_table(["key", *cols], [[k, *("(absent)" if k not in configs[c] else f"`{configs[c][k]}`"
                                                            for c in cols)] for k in diff])
    return out


def card_differences(names: list[str], cards: list[dict | None], expected: Sequence[str] = ()) -> list[str]:
    """Markdown warning lines: the runs without a card, the unfinished ones, and a table of every card entry
    (versions, commits, resolved models, devices, dtypes) whose value differs between the runs; [] when they agree.
    ``expected``: names of entries that differ on purpose (e.g. ``adapter``: the folds' own adapters), left out."""
    out = []
    missing = [n for n, c in zip(names, cards) if c is None]
    if missing:
        out.append(f"**Warning:** no run card for {', '.join(missing)} (written before dfer recorded them): what ran "
                   "there (versions, model revision, device) is unknown.")
    unfinished = [n for n, c in zip(names, cards) if c is not None and not c.get("complete")]
    if unfinished:
        out.append(f"**Warning:** the run(s) {', '.join(unfinished)} did not finish: their cards hold the devices as set.")
    flat = {n: {k: v for k, v in comparable(c).items() if not set(k.split(".")) & set(expected)}
            for n, c in zip(names, cards) if c is not None}
    keys = sorted({k for f in flat.values() for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()
                                      if k in f or k.rsplit(".", 1)[-1] not in RESOLVED_HERE}) > 1]
    if len(flat) > 1 and differ:
        out += [f"**Warning: the runs' cards differ in {len(differ)} entries** (another library, model revision, "
                "device or dtype can change the numbers):", ""]
        out += markdown_table(["run card entry", *flat], [[k, *(card_value(f.get(k)) for f in flat.values())] for k in differ])
    return out


def compare_runs(run_dirs: Sequence[str | Path], **kwargs: Any) -> str:
    """Markdown: the runs' headline metrics, per-class recall and collapse measures side by side, then the
    ``config.yaml`` keys that differ (see the module docstring)."""
    names, reps = load_reports(run_dirs, **kwargs)
    rows, scored_rows = [], []
    for name, rep in zip(names, reps):
        m, sc, c, a = headline.headline(rep) or {}, headline.scored(rep) or {}, rep["counts"], rep["abstentions"]
        rows.append([name, calibration_text(rep["calibration"]), m.get("n", 0), c["scored"], a["count"], a["partial"],
                     c["failed"], *(pct_ci(m.get(k), m.get("ci", {}).get(k)) for k, _ in HEADLINE)])
        scored_rows.append([name, sc.get("n", 0), *(pct_ci(sc.get(k), sc.get("ci", {}).get(k)) for k, _ in HEADLINE)])
    out = ["Headline: all labelled clips, failed and abstained clips counted as errors:", ""]
    out += markdown_table(["run", "calibration", "labelled clips", "scored", "abstained", "partial", "failed",
                           *(f"{name} (%)" for _, name in HEADLINE)], rows)
    out += ["", "Scored clips only (failed clips left out, abstentions counted as errors):", ""]
    out += markdown_table(["run", "labelled clips", *(f"{name} (%)" for _, name in HEADLINE)], scored_rows)
    out += _models_table(names, reps)
    if any(headline.headline(rep) for rep in reps):
        out += ["", "Recall per class (%, all clips; n/a: no test example of the class, -: not in the run's label set):",
                ""]
        out += markdown_table(["class", *names],
                              [[lab, *(_recall_cell(rep, lab) for rep in reps)] for lab in _class_labels(reps)])
        out += ["", "Collapse onto head classes:", ""]
        out += markdown_table(["measure", *names], _collapse_rows(reps))
    for name, rep in list(zip(names, reps))[1:]:
        result = paired_comparison(reps[0], rep, kwargs.get("n_boot", 1000), kwargs.get("seed", 0))
        out += ["", *paired_markdown(names[0], name, result)]
    out += _config_diff(names, [Path(d) for d in run_dirs])
    warn = card_differences(names, [RunDir(d).runcard() for d in run_dirs])
    return "\n".join([*warn, *([""] if warn else []), *out]) + "\n"


def fold_summary(run_dirs: Sequence[str | Path], **kwargs: Any) -> dict:
    """The folds' metrics and their mean ± std: ``{"folds": [{run, n, uar, war, macro_f1, recall: {label: r}}],
    "mean_std": {metric: {mean, std, n}}, "recall": {label: {mean, std, n}}, "labels", "n_folds"}``.

    :class:`LabelError` when the folds do not share one label set; :class:`RunDirError` for a fold without metrics.
    """
    names, reps = load_reports(run_dirs, **kwargs)
    sets = {name: rep["label_set"]["labels"] for name, rep in zip(names, reps)}
    first = names[0]
    odd = [n for n in names if sorted(sets[n]) != sorted(sets[first])]
    if odd:
        raise LabelError("folds of one protocol must share one label set: " + "; ".join(
            f"{n} has {rep['label_set']['name']} ({', '.join(sets[n])})" for n, rep in zip(names, reps)
            if n in odd or n == first))
    empty = [n for n, rep in zip(names, reps) if not headline.headline(rep)]
    if empty:
        raise RunDirError(f"no metrics for {', '.join(empty)}: no clip has a true label (pass --labels FILE)")
    labels = sets[first]
    folds = [{"run": name, "n": m["n"], **{k: m[k] for k, _ in HEADLINE},
              "abstained": rep["abstentions"]["labelled"], "failed": rep["counts"]["failed_labelled"],
              "recall": {r["label"]: r["recall"] for r in m["per_class"]}}
             for name, rep, m in zip(names, reps, (headline.headline(rep) for rep in reps))]
    return {"labels": labels, "n_folds": len(folds), "folds": folds,
            "mean_std": {k: mean_std([f[k] for f in folds]) for k, _ in HEADLINE},
            "recall": {lab: mean_std([f["recall"][lab] for f in folds]) for lab in labels}}


def _mean_std_text(s: dict) -> str:
    return "n/a" if s["mean"] is None else f"{pct(s['mean'])} ± {pct(s['std'])}"


def compare_folds(run_dirs: Sequence[str | Path], **kwargs: Any) -> str:
    """Markdown of :func:`fold_summary`: one row per fold and the mean ± std, then each class's recall."""
    s = fold_summary(run_dirs, **kwargs)
    n = s["n_folds"]
    rows = [[f["run"], f["n"], f["failed"], f["abstained"], *(pct(f[k]) for k, _ in HEADLINE)] for f in s["folds"]]
    rows.append([f"**mean ± std** ({n} folds)", sum(f["n"] for f in s["folds"]), sum(f["failed"] for f in s["folds"]),
                 sum(f["abstained"] for f in s["folds"]), *(_mean_std_text(s["mean_std"][k]) for k, _ in HEADLINE)])
    out = [f"Folds: {n}; mean ± sample standard deviation (ddof=1) over the folds. Headline metrics: all labelled "
           "clips of each fold, failed and abstained clips counted as errors.", ""]
    out += markdown_table(["fold", "labelled clips", "failed", "abstained", *(f"{name} (%)" for _, name in HEADLINE)],
                          rows)
    out += ["", "Recall per class (%; n/a: no test example in that fold):", ""]
    out += markdown_table(["class", *(f["run"] for f in s["folds"]), "mean ± std"], [
        [lab, *(pct(f["recall"][lab]) for f in s["folds"]),
         _mean_std_text(st) + ("" if st["n"] == n else f" (over {st['n']} of {n} folds)")]
        for lab, st in s["recall"].items()])
    return "\n".join(out) + "\n"
