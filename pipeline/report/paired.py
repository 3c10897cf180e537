"""Two runs over the same clips, compared clip by clip (``dfer compare A B``, ``dfer sweep --baseline``).

The clips compared are those with a true label in both reports (matched by video id) and the same label in both; a
clip that failed or got no prediction in a run counts as wrong for that run, as the headline counts it. Clips
labelled in one run only, or labelled differently, are dropped and named. On the shared clips:
:func:`pipeline.eval.paired.paired_bootstrap` (B - A in UAR, WAR and macro-F1 with paired-bootstrap CIs) and
:func:`pipeline.eval.paired.mcnemar` (per-clip correctness).
"""

from __future__ import annotations

import numpy as np

from pipeline.eval.paired import mcnemar, paired_bootstrap
from pipeline.report.markdown import HEADLINE, markdown_table, pct

LIST_LIMIT = 10  # dropped clips named in the Markdown (the dict has all)
SIGNIFICANT = "*"  # marks a difference whose CI excludes zero


def paired_comparison(rep_a: dict, rep_b: dict, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The paired comparison of two reports (:func:`pipeline.report.build_report` dicts), B against A:
    ``{"shared", "dropped": {"only_a", "only_b", "label_differs"}, "bootstrap", "mcnemar"}``, or
    ``{"error": why}`` when the runs cannot be paired (other label sets, no shared labelled clip)."""
    labels_a, labels_b = rep_a["label_set"]["labels"], rep_b["label_set"]["labels"]
    if sorted(labels_a) != sorted(labels_b):
        return {"error": f"the runs score different label sets ({', '.join(labels_a)} vs {', '.join(labels_b)})"}
    truth_a, truth_b = rep_a["true_labels"], rep_b["true_labels"]
    dropped = {"only_a": sorted(set(truth_a) - set(truth_b)), "only_b": sorted(set(truth_b) - set(truth_a)),
               "label_differs": sorted(v for v in set(truth_a) & set(truth_b) if truth_a[v] != truth_b[v])}
    shared = sorted(v for v in set(truth_a) & set(truth_b) if truth_a[v] == truth_b[v])
    if not shared:
        return {"error": "no clip has the same true label in both runs", "shared": 0, "dropped": dropped}
    pos = {lab: i for i, lab in enumerate(labels_a)}
    t = np.array([pos[truth_a[v]] for v in shared])
    pa, pb = (np.array([pos.get(rep["predictions"].get(v), -1) for v in shared]) for rep in (rep_a, rep_b))
    return {"shared": len(shared), "dropped": dropped,
            "bootstrap": paired_bootstrap(t, pa, pb, len(labels_a), n_boot, seed, level),
            "mcnemar": mcnemar(pa == t, pb == t)}


def diff_text(m: dict) -> str:
    """A difference in percentage points with its CI, marked when the CI excludes zero: ``+2.68 [0.41, 4.90] *``."""
    if m["diff"] is None:
        return "n/a"
    ci = "" if m["ci"] is None else f" [{100 * m['ci'][0]:+.2f}, {100 * m['ci'][1]:+.2f}]"
    return f"{100 * m['diff']:+.2f}{ci}" + (f" {SIGNIFICANT}" if m["excludes_zero"] else "")


def _dropped_text(dropped: dict, name_a: str, name_b: str) -> list[str]:
    out = []
    for key, what in (("only_a", f"labelled in {name_a} only"), ("only_b", f"labelled in {name_b} only"),
                      ("label_differs", "with another true label in each run")):
        ids = dropped[key]
        if ids:
            more = f" and {len(ids) - LIST_LIMIT} more" if len(ids) > LIST_LIMIT else ""
            out.append(f"- {len(ids)} {what}: " + ", ".join(f"`{v}`" for v in ids[:LIST_LIMIT]) + more)
    return out


def paired_markdown(name_a: str, name_b: str, result: dict) -> list[str]:
    """Markdown lines of :func:`paired_comparison`: shared and dropped clips, the differences, McNemar's test."""
    head = [f"Paired: {name_b} against {name_a}"]
    if "error" in result:
        return [*head, "", f"No paired statistics: {result['error']}."]
    boot, mc, n_drop = result["bootstrap"], result["mcnemar"], sum(map(len, result["dropped"].values()))
    out = [*head, "", f"{result['shared']} clips have the same true label in both runs; {n_drop} dropped"
           + (":" if n_drop else "."), *_dropped_text(result["dropped"], name_a, name_b), ""]
    out += markdown_table(
        ["metric (%)", name_a, name_b,
         f"{name_b} - {name_a} (points) [{int(100 * boot['level'])} % paired-bootstrap CI, {boot['n_boot']} resamples]"],
        [[name, pct(boot["metrics"][k]["a"]), pct(boot["metrics"][k]["b"]), diff_text(boot["metrics"][k])]
         for k, name in HEADLINE])
    p = "n/a" if mc["discordant"] == 0 else f"{mc['p_exact']:.4g}"
    out += ["", f"{SIGNIFICANT}: the interval excludes zero. A clip that failed or has no prediction counts as wrong.",
            f"McNemar's test on per-clip correctness: {mc['only_a']} clips right in {name_a} only, {mc['only_b']} in "
            f"{name_b} only ({mc['both']} right in both, {mc['neither']} in neither); exact two-sided p = {p}"
            + (f", continuity-corrected chi-square {mc['chi2']:.3f} (p = {mc['p_chi2']:.4g})" if mc["chi2"] is not None
               else "") + "."]
    return out
