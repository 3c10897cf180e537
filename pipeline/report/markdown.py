"""The text of a report: ``report.md`` (with the run card, :mod:`pipeline.engine.runcard`), the lines ``dfer report``
prints, and the number formats and Markdown tables that the comparison of runs (:mod:`.compare`) and the sweep share
with them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.core.paths import shown
from pipeline.report import headline

LIST_LIMIT = 50  # rows per list in report.md; metrics.json always lists everything
HEADLINE = (("uar", "UAR"), ("war", "WAR"), ("macro_f1", "macro-F1"))  # key in metrics.json, name in tables


def summary(rep: dict, out_dir: str | Path) -> str:
    """What ``dfer report`` prints: headline metrics, clip counts, the tau sweep if asked for, files written."""
    m, c, a = headline.headline(rep), rep["counts"], rep["abstentions"]
    spans = (rep.get("timelines") or {}).get("spans")
    lines = [f"{_headline(m)}  ({m['n']} labelled clips, calibration {rep['calibration']['method']})" if m
             else f"{_headline(spans['metrics'])}  ({spans['n']} labelled spans, each scored by its segments: "
                  "span_predictions.csv)" if spans
             else "no labelled clip: metrics not computed (pass --labels FILE)"]
    if m and headline.differs(rep):
        sc = headline.scored(rep)
        lines[0] += f"; {headline.scope_text(rep)}"
        lines.append(f"scored clips only: {_headline(sc)}  ({sc['n']} labelled, abstentions as errors)" if sc
                     else "scored clips only: no labelled clip")
    how = f" ({a['count']} abstained, {a['partial']} partial)" if a["count"] or a["partial"] else ""
    lines.append(f"scored {c['scored']}{how}, failed {c['failed']}, scored without label {c['scored_unlabeled']}, "
                 f"labels without clip {c['labels_without_clip']}")
    if "tau_sweep" in rep:
        sweep = rep["tau_sweep"]
        if sweep is None:
            lines.append("tau sweep: no labelled clip")
        else:
            lines.append(f"tau sweep ({sweep['prior']}) on this run's own labels: TEST-SET TUNING, a tau picked from it "
                         "is tuned on the test set (choose it on other clips with --tau-from RUN):")
            lines += [f"  tau {r['tau']:>5.2f}: {_headline(r)}" for r in sweep["rows"]]
    held = rep["calibration"].get("tau_from")
    if held:
        lines.append(tau_from_text(held))
    if "label_frequency" in rep:
        lf = rep["label_frequency"]
        lines.append(f"per-class F1 against label frequency: Spearman rank correlation {rho(lf['spearman'])} "
                     f"over {lf['n']} classes")
    out = Path(out_dir)
    lines.append(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")
    return "\n".join(lines)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&#])")


def md(text: object, code: bool = False) -> str:
    """Text copied from the inputs (clip ids, labels, model names, paths, messages) as Markdown must hold it: on one
    line, Markdown's and HTML's special characters backslash-escaped, so that it can neither break a table nor add
    markup or a link. ``code``: as a code span instead (fenced by more backticks than it holds; ``|`` escaped, as a
    table needs)."""
    s = re.sub(r"[\r\n]+", " ", shown(str(text)))
    if not code:
        return _MD_SPECIAL.sub(r"\\\1", s)
    fence = "`" * (max(map(len, re.findall("`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return fence + pad + s.replace("|", "\\|") + pad + fence


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
    """The calibration of a report: its method, with its tau unless it is ``none`` (and where a held-out tau was
    chosen)."""
    held = cal.get("tau_from")
    where = f", chosen on {Path(held['run']).name}" if held else ""
    return cal["method"] + (f" (tau={cal['tau']}{where})" if cal["method"] != "none" else "")


def tau_from_text(held: dict) -> str:
    """Where a held-out tau was chosen, and how."""
    return (f"tau {held['tau']:g} chosen on {held['run']} (held out: {held['n']} labelled clips, {held['prior']}): the "
            f"best {held['by']} among tau " + ", ".join(f"{r['tau']:g}" for r in held["rows"]))


_BARE_PIPE = re.compile(r"(?<!\\)\|")


def _cell(value: object) -> str:
    """A table cell: on one line, and every ``|`` not already escaped (by :func:`md`) escaped, so that no value (a
    run folder's or a model's name) can split a row."""
    return _BARE_PIPE.sub(r"\\|", re.sub(r"[\r\n]+", " ", str(value)))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table (cells written with ``str``, kept to their column: :func:`_cell`)."""
    return ["| " + " | ".join(map(_cell, header)) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(_cell, r)) + " |" for r in rows)]


def _headline(m: dict, template: str = "{} {}", sep: str = "  ") -> str:
    """UAR, WAR and macro-F1 of ``m`` in percent, e.g. ``UAR 51.20  WAR 60.00  macro-F1 48.31``."""
    return sep.join(template.format(name, pct(m[k])) for k, name in HEADLINE)


def rho(x: float | None) -> str:
    """A rank correlation with its sign and three decimals (``n/a`` for None)."""
    return "n/a" if x is None else f"{x:+.3f}"


def _listing(title: str, items: list, fmt=str) -> list[str]:
    if not items:
        return []
    lines = [f"\n## {title} ({len(items)})\n", *(f"- {fmt(x)}" for x in items[:LIST_LIMIT])]
    if len(items) > LIST_LIMIT:
        lines.append(f"- ... and {len(items) - LIST_LIMIT} more (all listed in metrics.json)")
    return lines


def freq_order(m: dict) -> tuple[list[int], str]:
    """Class positions sorted by training count (or test support), most frequent first."""
    rows = m["per_class"]
    use_train = rows[0]["train_count"] is not None
    key = "train_count" if use_train else "support"
    return sorted(range(len(rows)), key=lambda i: (-rows[i][key], i)), ("training count" if use_train else "test support")


def _models_markdown(rep: dict) -> list[str]:
    """Which model scored the clips, and the stages that fell back to the embedded model."""
    models = ", ".join(f"{md(name)} ({n} clips)" for name, n in rep["models"].items())
    fallbacks = [f"**Fallback:** stage {md(fb['stage'], code=True)} ran the embedded model {md(fb['ran'])} in place "
                 f"of {md(fb['asked'])}, "
                 "which could not be had on the machine of the run.\n" for fb in rep["fallbacks"]]
    return ([f"Scored by: {models}.\n"] if models else []) + fallbacks + headline.models_markdown(rep, md)


def _metrics_markdown(m: dict, uncalibrated: dict | None) -> list[str]:
    """The overall metrics with their CIs, each class, head/medium/tail and the collapse onto head classes."""
    ci, g, col = m["ci"], m["groups"], m["collapse"]
    out = [f"\n## Scored clips ({m['n']} labelled, abstentions as errors)\n",
           *markdown_table(["metric", "value", f"{int(100 * ci['level'])} % CI ({ci['n_boot']} bootstrap resamples)"],
                           [(f"{name} (%)", pct(m[k]), ci_text(ci[k])) for k, name in HEADLINE])]
    if uncalibrated:
        out.append(f"\nWithout calibration: {_headline(uncalibrated, '{}={} %', ', ')}.")
    order, basis = freq_order(m)
    group_of = {lab: name for name, d in g["by_group"].items() for lab in d["labels"]}
    per_class = [(md(r["label"]), group_of.get(r["label"], "-"), "-" if r["train_count"] is None else r["train_count"],
                  r["support"], r["predicted"], *(pct(r[k]) for k in ("precision", "recall", "f1")))
                 for r in (m["per_class"][i] for i in order)]
    out += [f"\n## Per class (sorted by {basis})\n",
            *markdown_table(["label", "group", "train", "support", "predicted", "precision", "recall", "F1"], per_class),
            "\n## Head / medium / tail\n", f"Groups from {g['source'].replace('_', ' ')}: {g['rule']}.\n",
            *markdown_table(["group", "labels", "clips", "UAR (%)", "macro-F1 (%)", "accuracy (%)"],
                            [(name, ", ".join(map(md, d["labels"])), d["n"], pct(d["uar"]), pct(d["macro_f1"]),
                              pct(d["accuracy"])) for name, d in g["by_group"].items()]),
            "\n## Collapse onto head classes\n",
            f"- total variation between predicted and true label distributions: {col['total_variation']:.4f}",
            f"- KL(true || predicted), 0.5 pseudo-count: {col['kl_true_pred']:.4f}",
            "- Jensen-Shannon distance (base 2): " + ("n/a" if col["js_distance"] is None else f"{col['js_distance']:.4f}"),
            f"- head-class share: true {pct(col['head_share_true'])} %, predicted {pct(col['head_share_pred'])} %",
            f"- tail clips predicted as a head class: {pct(col['tail_to_head_share'])} % of {col['n_tail_clips']}",
            f"- classes never predicted: {', '.join(map(md, col['classes_never_predicted'])) or 'none'}"]
    if m["classes_without_examples"]:
        out.append(f"- classes with no test example (left out of UAR/macro-F1): "
                   f"{', '.join(map(md, m['classes_without_examples']))}")
    return out


def card_value(v) -> str:
    """A run card value as Markdown code (``-`` for None)."""
    return "-" if v is None else f"`{v}`" if not isinstance(v, (dict, list)) else f"`{json.dumps(v, sort_keys=True)}`"


def _resolved(setting, resolved) -> str:
    """``setting`` and, when it differs, what it resolved to."""
    if resolved is None or resolved == setting:
        return card_value(setting)
    return f"{card_value(setting)} -> {card_value(resolved)}"


def card_markdown(card: dict | None) -> list[str]:
    """The ``## Run card`` section of ``report.md``."""
    out = ["\n## Run card\n"]
    if card is None:
        return out + ["No runcard.json: the run was written before dfer recorded run cards (or not by `dfer run`)."]
    d = card["dfer"]
    commit = (f", commit `{d['commit']}`" + (" with local changes" if d["dirty"] else "")) if d.get("commit") else ""
    libs = ", ".join(f"{k} {v}" for k, v in card["libraries"].items() if v is not None)
    out += [f"dfer {d.get('version')}{commit}; Python {card['python']}; {libs}.",
            f"Machine: {card['machine']['platform']}, {card['machine']['cpus']} CPUs"
            + (f", GPUs: {', '.join(card['machine']['gpus']) or 'none'}" if "gpus" in card["machine"] else "") + "."]
    if not card.get("complete"):
        out.append("The run did not finish: devices and dtypes are as set, not resolved.")
    elif any(m.get("resolved_device", "") is None for m in card["models"].values()):
        out.append("Devices and dtypes are as set: no stage of this run loaded a model in its own process (all found in "
                   "the cache, or computed by worker processes or a Ray cluster), so they were not resolved here.")
    if card["models"]:
        rows = []
        for stage, m in card["models"].items():
            resolved = m.get("resolved_revision", m.get("server_version"))
            adapter = m.get("adapter")
            rows.append([stage, f"{card_value(m['model'])} ({m['backend']})",
                         _resolved(m.get("revision"), resolved) if resolved is not None or m.get("revision")
                         else card_value(m["identity"]),
                         _resolved(m["dtype"], m.get("resolved_dtype")), _resolved(m["device"], m.get("resolved_device")),
                         "-" if adapter is None else f"{card_value(adapter['path'])} {card_value(adapter['hash'])}"])
        out += ["", *markdown_table(["stage", "model", "revision -> resolved (hub commit, local fingerprint)", "dtype",
                                     "device", "adapter"], rows)]
    if card["devices"]:
        out.append("\nOther devices: " + ", ".join(f"{stage} {_resolved(v['setting'], v['resolved'])}"
                                                   for stage, v in card["devices"].items()) + ".")
    return out


def report_markdown(rep: dict, plots: dict[str, str]) -> str:
    c, cov, m, src = rep["counts"], rep["coverage"], rep["metrics"], rep["labels_file"]
    by_stage = ", ".join(f"{md(k)}: {v}" for k, v in c["failed_by_stage"].items()) or "-"
    out = [f"# Report: {md(Path(rep['run_dir']).name)}\n",
           f"Label set: {md(rep['label_set']['name'])} ({len(rep['label_set']['labels'])} labels). "
           f"Calibration: {calibration_text(rep['calibration'])}. True labels from: "
           + (f"{md(src['path'], code=True)} ({src['format']})" if src else "scores.jsonl") + ".\n",
           *_models_markdown(rep),
           *headline.markdown(rep, markdown_table),
           "\n## Clips\n",
           *markdown_table(["bucket", "clips"], [
               ("scored", c["scored"]), ("scored, with label", c["scored_labelled"]),
               ("scored, no prediction (abstained)", rep["abstentions"]["count"]),
               ("scored exact / partial / none", f"{c['scored_exact']} / {c['scored_partial']} / {c['scored_none']}"),
               ("scored, without label", c["scored_unlabeled"]), ("failed", f"{c['failed']} ({by_stage})"),
               ("failed, with label", c["failed_labelled"]), ("labels without clip", c["labels_without_clip"])])]
    if cov["labelled_clips"]:
        line = f"\nCoverage: {cov['labelled_scored']} of {cov['labelled_clips']} labelled clips scored."
        if not c["failed"]:
            line += " No clip failed."
        if c["failed"] > c["failed_labelled"]:
            line += (f" {c['failed'] - c['failed_labelled']} failed clip(s) have no known label "
                     "(pass a labels file to count them as wrong).")
        out.append(line)
    if m is not None:
        out += _metrics_markdown(m, rep["metrics_uncalibrated"])
    elif (rep.get("timelines") or {}).get("spans"):
        out.append("\nThe units of this segmented run are segments, which carry no label of their own: the metrics are "
                   "per labelled span, each span scored by the segments that overlap it (Timelines, below; "
                   "docs/timelines.md).")
    else:
        out.append("\nNo scored clip has a true label, so no metrics of the scored clips were computed.")
    if "label_frequency" in rep and m is not None:
        lf = rep["label_frequency"]
        out += ["\n## Per-class F1 against label frequency\n",
                f"Counts from {md(lf['path'], code=True)}. Spearman rank correlation between count and F1: "
                f"{rho(lf['spearman'])} over {lf['n']} classes"
                + (f" (left out: {', '.join(map(md, lf['left_out']))})" if lf["left_out"] else "")
                + ".\n",
                *markdown_table(["label", "count", "F1 (%)"], [
                    (md(r["label"]), "-" if r["count"] is None else f"{r['count']:g}", pct(r["f1"]))
                    for r in sorted(lf["rows"], key=lambda r: -(r["count"] or 0))])]
    if rep["calibration"].get("tau_from"):
        held = rep["calibration"]["tau_from"]
        out += ["\n## Calibration tau, chosen on held-out clips\n", tau_from_text(held) + ".\n",
                *markdown_table(["tau", *(f"{name} (%) there" for _, name in HEADLINE)],
                                [(f"{r['tau']:g}" + (" (chosen)" if r["tau"] == held["tau"] else ""),
                                  *(pct(r[k]) for k, _ in HEADLINE)) for r in held["rows"]])]
    if rep.get("tau_sweep"):
        sweep = rep["tau_sweep"]
        out += ["\n## Tau sweep on this run's own labels: test-set tuning\n",
                "**Test-set tuning:** every tau below is scored on the true labels of the clips this report evaluates. "
                "A tau picked from this table is tuned on the test set, and the metrics it gives are optimistic; "
                "choose tau on other clips with `dfer report RUN --tau-from OTHER_RUN` (a validation split, or the "
                f"training folds) instead. Prior: {sweep['prior']}.\n",
                *markdown_table(["tau", *(f"{name} (%)" for _, name in HEADLINE)],
                                [(f"{r['tau']:g}", *(pct(r[k]) for k, _ in HEADLINE)) for r in sweep["rows"]])]
    if "label_positions" in rep:
        lp = rep["label_positions"]
        out += ["\n## Position of the label in the prompt's list\n",
                f"The prompts listed the labels in another order than the label set's ({', '.join(lp['orders'])}; "
                "classify.label_order). Share of the clips whose prediction was the label at each position, beside the "
                f"share whose true label was there ({lp['n']} scored clips, {lp['n_labelled']} labelled); a position "
                "predicted more often than it holds the truth is favoured by its place in the list.\n",
                *markdown_table(["position", "predicted (%)", "true label (%)"],
                                [(r["position"], pct(r["predicted"]), pct(r["true"])) for r in lp["rows"]])]
    if plots:
        out += ["\n## Plots\n", *(f"![{k}]({v})" for k, v in plots.items())]
    out += card_markdown(rep.get("runcard"))
    out += _listing("Warnings", rep["warnings"] + (m["warnings"] if m else []), md)
    out += _listing("Failed clips", rep["failed_clips"],
                    lambda f: f"{md(f['video'], code=True)} ({md(f['stage'])}, {md(f['error'])}): {md(f['message'])}")
    out += _listing("Abstentions (scored, no prediction)", [(v, w) for v, w in rep["abstained_clips"].items()],
                    lambda x: f"{md(x[0], code=True)}: {md(x[1])}")
    out += _listing("Scored clips without a label", rep["unlabeled_clips"], lambda v: md(v, code=True))
    out += _listing("Labels without a clip", rep["labels_without_clip"], lambda v: md(v, code=True))
    return "\n".join(out) + "\n"
