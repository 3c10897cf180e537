"""The headline of a run's metrics, and how abstentions and failed clips count (docs/scoring.md).

Two scopes, each over the clips whose true label is known:

- **all clips** (the headline, ``metrics_all_clips`` in ``metrics.json``): every clip in scope, scored or not; a
  failed clip (no face, not a video, ...) and an abstention (a clip scored ``none``, or a tie: no prediction, see
  :mod:`pipeline.eval.ranking`) count as errors;
- **scored clips** (``metrics``): the clips classify scored, abstentions counted as errors.

Beside them: the abstention rate (abstentions / scored clips, by reason) and how many clips were ``partial``.
``dfer report``, ``report.md``, ``dfer compare`` (and ``--folds``), ``sweep.md`` and ``dfer view`` all take the
headline from :func:`headline`, the scored-clips figure from :func:`scored`.
"""

from __future__ import annotations

from typing import Any, Callable

HEADLINE_SCOPE = "all clips"
SCOPES = {"metrics_all_clips": "the headline: every clip in scope with a known true label; failed clips and "
                               "abstentions (clips without a prediction) count as errors",
          "metrics": "the scored clips with a known true label; abstentions count as errors"}
"""What each metrics entry of ``metrics.json`` covers (written there as ``scopes``)."""
KEYS = (("uar", "UAR"), ("war", "WAR"), ("macro_f1", "macro-F1"))


def headline(rep: dict) -> dict | None:
    """The headline metrics of a report (all clips), or None when no clip in scope has a true label."""
    return rep.get("metrics_all_clips")


def scored(rep: dict) -> dict | None:
    """The metrics over the scored clips (abstentions as errors)."""
    return rep.get("metrics")


def is_current(rep: dict | None) -> bool:
    """Whether a saved ``metrics.json`` has the headline (written by this version of ``dfer report``)."""
    return rep is not None and "metrics_all_clips" in rep and "abstentions" in rep


def abstentions(valid: list[dict], labelled: list[int], why: list[str | None]) -> dict:
    """``{"count", "labelled", "rate", "by_reason", "partial"}`` over the scored clips ``valid`` (``why``: each one's
    reason for having no prediction, or None)."""
    n = len(valid)
    by_reason: dict[str, int] = {}
    for w in why:
        if w:
            by_reason[w] = by_reason.get(w, 0) + 1
    count = sum(by_reason.values())
    return {"count": count, "labelled": sum(1 for i in labelled if why[i]), "rate": count / n if n else None,
            "by_reason": by_reason, "partial": sum(1 for r in valid if r["scored"] == "partial")}


def scope_text(rep: dict) -> str:
    """How many labelled clips the headline covers, and how many of them failed or abstained."""
    c, a = rep["counts"], rep["abstentions"]
    n = c["scored_labelled"] + c["failed_labelled"]
    return (f"all {n} labelled clips: {c['failed_labelled']} failed and {a['labelled']} abstained, counted as "
            "errors")


def line(m: dict, template: str = "{} {}", sep: str = "  ") -> str:
    """UAR, WAR and macro-F1 of ``m`` in percent, e.g. ``UAR 51.20  WAR 60.00  macro-F1 48.31``."""
    return sep.join(template.format(name, "n/a" if m.get(k) is None else f"{100 * m[k]:.2f}") for k, name in KEYS)


def differs(rep: dict) -> bool:
    """Whether the two scopes can differ: some labelled clip failed or abstained."""
    c, a = rep["counts"], rep["abstentions"]
    return bool(c["failed_labelled"] or a["labelled"])


def markdown(rep: dict, table) -> list[str]:
    """The headline section of ``report.md`` (``table``: the report's Markdown table maker)."""
    head, sc = headline(rep), scored(rep)
    if head is None:
        return []
    c, a = rep["counts"], rep["abstentions"]

    def cell(m: dict | None, k: str) -> str:
        if m is None or m.get(k) is None:
            return "n/a"
        ci = (m.get("ci") or {}).get(k)
        return f"{100 * m[k]:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")

    out = [f"\n## Headline: {HEADLINE_SCOPE}\n",
           *table(["metric (%)", f"all clips ({head['n']} labelled)", f"scored clips ({sc['n'] if sc else 0} labelled)"],
                  [(name, cell(head, k), cell(sc, k)) for k, name in KEYS]),
           f"\nThe headline counts every labelled clip in scope: the {c['failed_labelled']} failed and the "
           f"{a['labelled']} abstained ones as errors. The scored-clips figure leaves the failed clips out and counts "
           "abstentions as errors too (95 % bootstrap CIs)."]
    rate = "n/a" if a["rate"] is None else f"{100 * a['rate']:.2f} %"
    reasons = ", ".join(f"{n} {why}" for why, n in a["by_reason"].items())
    out.append(f"\nAbstentions (no prediction): {a['count']} of {c['scored']} scored clips ({rate})"
               + (f": {reasons}" if reasons else "") + f". Partial clips (some labels outside a server's top-k, their "
               f"scores upper bounds): {a['partial']}.")
    if c["failed"] > c["failed_labelled"]:
        out.append(f"{c['failed'] - c['failed_labelled']} failed clip(s) have no known label and are not in scope "
                   "(pass a labels file to count them).")
    return out


def models_markdown(rep: dict, esc: Callable[[object], str]) -> list[str]:
    """The model each model stage ran (status.json), and how a server's answer tokens were matched to labels; ``esc``
    escapes what is copied from the inputs (model names) for Markdown."""
    out = []
    ran: dict[str, Any] = rep.get("stage_models") or {}
    if ran:
        out.append("Models that ran: " + "; ".join(f"{esc(stage)}: {esc(name)}" for stage, name in ran.items()) + ".\n")
    for rule, n in (rep.get("label_matching") or {}).items():
        out.append(f"Labels matched by {esc(rule)} ({n} clips).\n")
    return out
