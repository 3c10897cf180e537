"""``dfer sweep``: every combination of a grid of config values, each run into its own run directory over one shared
cache, then one table and one plot of the metrics against the swept values.

A client of the runner and of the report, never a copy of either: each combination is a ``dfer run`` (so only what
a value changes is recomputed, and re-running the sweep recomputes nothing) followed by ``dfer report`` on its run
directory (so the table's numbers are the report's). What it writes::

    DIR/<name>/     one run directory per combination (name: the swept values, e.g. ``dense_fps=5``), with
                    ``dfer report``'s metrics.json, report.md and plots
    DIR/sweep.md    one row per combination: its values, status, clips scored, abstained (no prediction), partial and
                    failed, the headline UAR, WAR and macro-F1 with their bootstrap CIs (all labelled clips, failed
                    and abstained ones counted as errors: pipeline/report/headline.py), the models that ran (the
                    fallback named where a stage fell back), and which stages it computed (the rest from the cache)
    DIR/sweep.png   each metric against each swept key, CI bands, one line per combination of the other keys
                    (categorical x when a value is not a number, e.g. ``null``)
    DIR/sweep.json  the same numbers, for scripts

With ``--baseline NAME`` (a combination's name), every other combination is paired with it on the clips both have a
true label for (:mod:`pipeline.report.paired`): the table adds each difference with its paired-bootstrap CI, marked
``*`` where the CI excludes zero, and McNemar's p-value.

Values are parsed as YAML, like ``--set`` (``null``, ``true``, ``[1, 2]``). Every combination's config, every
stage's checks and the labels file are checked before anything runs; a combination that cannot work is named then.
A combination whose run stops (model weights not here) or errors, or whose clips fail, shows in the table.
"""

from __future__ import annotations

import io
import itertools
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence, TextIO

from matplotlib.figure import Figure

from pipeline.engine.config import load_config, parse_override
from pipeline.core.errors import ConfigError, DferError
from pipeline.engine.inputs import discover
from pipeline.eval.labels import load_label_set, read_labels
from pipeline.report import HEADLINE, headline, markdown_table, pct_ci, write_report
from pipeline.report.paired import SIGNIFICANT, diff_text, paired_comparison
from pipeline.engine.rundir import SWEEP_FILES, RunDir
from pipeline.engine.runner import RunResult, Runner, executor_for
from pipeline.core.files import json_text, save_figure, write_atomic

FILES = SWEEP_FILES


@dataclass(frozen=True)
class Axis:
    """One ``--grid KEY=V1,V2,...``: the key, its values as written and as parsed, and its short name."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]
    short: str

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


@dataclass
class Combination:
    name: str
    texts: dict[str, str]  # key -> value as written
    cfg: Any


@dataclass
class SweepRow:
    combination: Combination
    run_dir: Path
    status: str  # complete | stopped | error
    message: str | None = None
    result: RunResult | None = None
    report: dict | None = None

    def computed(self) -> dict[str, int]:
        """Clips each stage computed (the rest came from the cache), stages that computed nothing left out."""
        return {r.stage: r.computed for r in (self.result.reports if self.result else []) if r.computed}


@dataclass
class SweepResult:
    out_dir: Path
    axes: list[Axis]
    rows: list[SweepRow]
    baseline: str | None = None
    n_boot: int = 1000

    @cached_property
    def against_baseline(self) -> dict[str, dict]:
        """Each combination's paired comparison with the baseline (:func:`pipeline.report.paired.paired_comparison`;
        none for the baseline itself, or a combination without a report)."""
        base = next((r for r in self.rows if r.combination.name == self.baseline), None)
        if base is None or base.report is None:
            return {}
        return {row.combination.name: paired_comparison(base.report, row.report, self.n_boot)
                for row in self.rows if row is not base and row.report is not None}

    @property
    def any_failed(self) -> bool:
        """A combination errored, or some of its clips failed."""
        return any(r.status == "error" or (r.result is not None and r.result.n_failed) for r in self.rows)

    def summary(self) -> str:
        ok = sum(r.status == "complete" for r in self.rows)
        return (f"{len(self.rows)} combinations ({ok} complete); wrote "
                + ", ".join(str(self.out_dir / f) for f in FILES.values()))


def split_values(text: str) -> list[str]:
    """``V1,V2,...`` split at the commas outside brackets, braces and quotes (``[1, 2]`` and ``'a,b'`` stay whole)."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    return parts + [cur.strip()]


def parse_grid(specs: Sequence[str]) -> list[Axis]:
    """The axes of ``--grid KEY=V1,V2,...`` options (values parsed as YAML, as ``--set`` parses them)."""
    if not specs:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,...")
    raw = []
    for spec in specs:
        key, _, values = spec.partition("=")
        key = key.strip()
        texts = split_values(values) if values.strip() else []
        if not key or not texts or not all(texts):
            raise ConfigError(f"--grid expects KEY=V1,V2,... (values separated by commas), got {spec!r}")
        if key in [k for k, _ in raw]:
            raise ConfigError(f"--grid {key}: the key is given twice; put all its values in one --grid")
        if len(set(texts)) < len(texts):
            raise ConfigError(f"--grid {spec}: a value is listed twice")
        raw.append((key, texts))
    lasts = [k.rsplit(".", 1)[-1] for k, _ in raw]
    return [Axis(key, tuple(texts), tuple(parse_override(f"{key}={t}")[1] for t in texts),
                 last if lasts.count(last) == 1 else key)
            for (key, texts), last in zip(raw, lasts)]


def _dir_name(axes: list[Axis], texts: dict[str, str]) -> str:
    return ",".join(f"{a.short}={re.sub(r'[^A-Za-z0-9._+-]', '_', texts[a.key])}" for a in axes)


def plan_sweep(axes: list[Axis], preset: str | None = None, config_file: str | Path | None = None,
               overrides: Sequence[str] = ()) -> list[Combination]:
    """Every combination, its run directory's name and its config (defaults < preset < file < --set < grid); a
    :class:`ConfigError` naming every combination whose config is not valid, before anything runs."""
    clash = sorted({parse_override(o)[0] for o in overrides} & {a.key for a in axes})
    if clash:
        raise ConfigError(f"{', '.join(clash)}: given by both --set and --grid; keep one")
    combos, errors, seen = [], [], set()
    for picks in itertools.product(*(a.texts for a in axes)):
        texts = {a.key: t for a, t in zip(axes, picks)}
        name = base = _dir_name(axes, texts)
        n = 2
        while name in seen:  # two values that only differ in characters a folder name cannot hold
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        try:
            cfg = load_config(config_file, [*overrides, *(f"{k}={t}" for k, t in texts.items())], preset=preset)
        except ConfigError as exc:
            errors.append(f"{name}: {exc}")
            continue
        combos.append(Combination(name, texts, cfg))
    if errors:
        raise ConfigError(f"{len(errors)} of {len(errors) + len(combos)} sweep combinations are not valid "
                          "configs (nothing was run):\n" + "\n".join(errors))
    return combos


def _check(combos: list[Combination], refs, out: Path, cache_dir, labels_file, label_format, fold, split,
           allow_overlap: bool, protect: tuple = ()) -> None:
    """The sweep folder, every combination's run directory and stage checks, and the labels file, before any run:
    errors name the combination."""
    RunDir(out).check_claim()  # a folder of the user's is refused, as `dfer run` refuses it
    errors = []
    for c in combos:
        try:
            Runner(c.cfg, out / c.name, cache_dir=cache_dir, log=io.StringIO(), allow_overlap=allow_overlap,
                   protect=protect).check(refs)
        except DferError as exc:
            errors.append(f"{c.name}: {exc}")
    if labels_file is not None:
        for name in dict.fromkeys(c.cfg.classify.labels for c in combos):
            read_labels(labels_file, label_format, load_label_set(name), fold, split)
    if errors:
        raise ConfigError(f"{len(errors)} of {len(combos)} sweep combinations cannot run (nothing was run):\n"
                          + "\n".join(errors))


def check_baseline(baseline: str | None, combos: list[Combination]) -> None:
    """``--baseline`` must name one of the combinations (:class:`ConfigError` listing them)."""
    names = [c.name for c in combos]
    if baseline is not None and baseline not in names:
        raise ConfigError(f"--baseline {baseline}: not a combination of this sweep; its combinations are "
                          + ", ".join(names))


def run_sweep(input_path: str | Path, out_dir: str | Path, grid: Sequence[str], *, preset: str | None = None,
              config_file: str | Path | None = None, overrides: Sequence[str] = (),
              labels_file: str | Path | None = None, label_format: str = "csv", fold: int | None = None,
              split: str | None = "test", cache_dir: str | Path | None = None, executor: str = "local",
              ray_address: str | None = None, quiet: bool = False, log: TextIO | None = None,
              n_boot: int = 1000, baseline: str | None = None, allow_overlap: bool = False) -> SweepResult:
    """Run every combination of ``grid`` (``KEY=V1,V2,...`` strings) over ``input_path`` into ``out_dir/<name>/``
    with one shared cache, report each run (``labels_file``... as ``dfer report`` takes them) and write the table,
    the plot and the JSON (see the module docstring); ``baseline``: the combination the others are paired with."""
    log = log or sys.stderr
    axes = parse_grid(grid)
    combos = plan_sweep(axes, preset, config_file, overrides)
    check_baseline(baseline, combos)
    refs = discover(input_path)
    out = Path(out_dir)
    protect = (input_path, config_file, labels_file)  # read by the sweep: never a file its runs write or remove
    _check(combos, refs, out, cache_dir, labels_file, label_format, fold, split, allow_overlap, protect)
    RunDir(out).claim()
    rows = []
    for i, c in enumerate(combos, 1):
        print(f"== sweep {i}/{len(combos)}: {c.name}", file=log, flush=True)
        row = SweepRow(c, out / c.name, "error")
        try:
            runner = Runner(c.cfg, row.run_dir, cache_dir=cache_dir, quiet=quiet, log=log, protect=protect,
                            executor=executor_for(executor, c.cfg.run, ray_address), allow_overlap=allow_overlap)
            row.result = runner.run(refs)
        except DferError as exc:  # this combination only (e.g. a model that fails to load); the others go on
            row.message = str(exc)
        else:
            row.status, row.message = row.result.status, row.result.stop_message
        if row.status == "complete":
            try:
                row.report = write_report(row.run_dir, labels_file=labels_file, label_format=label_format, fold=fold,
                                          split=split, n_boot=n_boot)
            except DferError as exc:
                row.message = f"dfer report: {exc}"
        rows.append(row)
    result = SweepResult(out, axes, rows, baseline, n_boot)
    write_atomic(out / FILES["table"], sweep_markdown(result))
    write_atomic(out / FILES["json"], json_text(sweep_json(result), indent=1))
    save_figure(sweep_figure(result), out / FILES["plot"], dpi=100)
    return result


def _metrics(row: SweepRow) -> dict:
    """The headline metrics of a combination's report (all clips), or {}."""
    return headline.headline(row.report or {}) or {}


def _models(row: SweepRow) -> dict[str, str]:
    """The model each model stage of the combination ran, ``fallback for`` the one asked for where it fell back."""
    rep = row.report or {}
    fell = {fb["stage"]: fb["asked"] for fb in rep.get("fallbacks") or []}
    return {stage: name + (f" (fallback for {fell[stage]})" if stage in fell else "")
            for stage, name in (rep.get("stage_models") or {}).items()}


def sweep_json(result: SweepResult) -> dict:
    out = []
    paired = result.against_baseline
    for row in result.rows:
        m, counts = _metrics(row), (row.report or {}).get("counts") or {}
        ab = (row.report or {}).get("abstentions") or {}
        sc = headline.scored(row.report or {}) or {}
        out.append({"name": row.combination.name, "values": row.combination.texts, "run_dir": str(row.run_dir),
                    "status": row.status, "message": row.message, "clips": row.result.n_clips if row.result else None,
                    "scored": counts.get("scored"), "abstained": ab.get("count"), "partial": ab.get("partial"),
                    "failed": counts.get("failed", row.result.n_failed if row.result else None), "computed": row.computed(),
                    "headline": headline.HEADLINE_SCOPE, "labelled": m.get("n"), "models": _models(row),
                    **{k: m.get(k) for k, _ in HEADLINE}, "ci": {k: (m.get("ci") or {}).get(k) for k, _ in HEADLINE},
                    "scored_clips": {k: sc.get(k) for k, _ in HEADLINE},
                    **({"vs_baseline": paired[row.combination.name]} if row.combination.name in paired else {})})
    return {"grid": [{"key": a.key, "values": list(a.texts)} for a in result.axes], "baseline": result.baseline,
            "rows": out}


def _baseline_cells(result: SweepResult, row: SweepRow, d: dict) -> list[str]:
    """The differences to the baseline and McNemar's p of one row (``baseline`` in the baseline's own row)."""
    if row.combination.name == result.baseline:
        return ["baseline"] * len(HEADLINE) + ["-"]
    vs = d.get("vs_baseline")
    if vs is None or "error" in vs:
        return ["-"] * (len(HEADLINE) + 1)
    mc = vs["mcnemar"]
    return [*(diff_text(vs["bootstrap"]["metrics"][k]) for k, _ in HEADLINE),
            "n/a" if not mc["discordant"] else f"{mc['p_exact']:.3g}"]


def sweep_markdown(result: SweepResult) -> str:
    """``sweep.md``: one row per combination (see the module docstring)."""
    data = sweep_json(result)
    head = ["run", *(a.key for a in result.axes), "status", "scored", "abstained", "partial", "failed",
            *(f"{title} (%) [95% CI]" for _, title in HEADLINE), "models that ran", "computed (the rest from the cache)"]
    if result.baseline:
        head += [*(f"Δ {title} vs baseline (points) [95% CI]" for _, title in HEADLINE), "McNemar p"]
    rows, notes = [], []
    for row, d in zip(result.rows, data["rows"]):
        status = row.status
        if row.message:
            notes.append(f"- `{row.combination.name}` ({row.status}): {row.message}")
            status += f" [{len(notes)}]"
        rows.append([f"[{d['name']}]({d['name']}/report.md)" if row.report else d["name"],
                     *(f"`{d['values'][a.key]}`" for a in result.axes), status,
                     *("-" if d[k] is None else d[k] for k in ("scored", "abstained", "partial", "failed")),
                     *(pct_ci(d[k], d["ci"][k]) if d[k] is not None else "-" for k, _ in HEADLINE),
                     "; ".join(f"{stage}: {name}" for stage, name in d["models"].items()) or "-",
                     ", ".join(f"{s} {n}" for s, n in d["computed"].items()) or ("nothing" if row.result else "-"),
                     *(_baseline_cells(result, row, d) if result.baseline else [])])
        vs = d.get("vs_baseline") or {}
        if "error" in vs:
            notes.append(f"- `{row.combination.name}`: no paired comparison with the baseline: {vs['error']}")
    lines = [f"# Sweep over {', '.join(a.key for a in result.axes)}\n",
             f"{len(result.rows)} combinations, one run directory each, one shared cache. Metrics are `dfer report`'s "
             "headline on each run directory: all labelled clips, failed and abstained ones (no prediction) counted "
             "as errors (its report.md has the rest, the scored clips' figures too).\n", *markdown_table(head, rows)]
    if result.baseline:
        lines.append(f"\nDifferences to the baseline `{result.baseline}`, paired over the clips both runs have a true "
                     f"label for (a failed or abstained clip counts as wrong); {SIGNIFICANT}: the paired-bootstrap 95 % "
                     "CI of the difference excludes zero. McNemar p: exact two-sided test on per-clip correctness.")
    if notes:
        lines += ["\n## Notes\n", *notes]
    lines.append(f"\n![metrics against the swept values]({FILES['plot']})")
    return "\n".join(lines) + "\n"


def sweep_figure(result: SweepResult) -> Figure:
    """``sweep.png``: each metric (columns) against each swept key (rows): one line per combination of the other keys, with its
    bootstrap CI as a band; numeric values on a numeric axis, others (``null``, words) as categories."""
    axes = result.axes
    fig = Figure(figsize=(4.4 * len(HEADLINE), 3.4 * len(axes)))
    for r, axis in enumerate(axes):
        others = [a for a in axes if a is not axis]
        x_of = {t: (v if axis.numeric else i) for i, (t, v) in enumerate(zip(axis.texts, axis.values))}
        lines: dict[tuple, list[SweepRow]] = {}
        for row in result.rows:
            lines.setdefault(tuple(row.combination.texts[o.key] for o in others), []).append(row)
        for j, (key, title) in enumerate(HEADLINE):
            ax = fig.add_subplot(len(axes), len(HEADLINE), r * len(HEADLINE) + j + 1)
            for group, rows in lines.items():
                pts = sorted((x_of[row.combination.texts[axis.key]], _metrics(row)[key], _metrics(row)["ci"][key])
                             for row in rows if _metrics(row).get(key) is not None)
                if not pts:
                    continue
                label = ", ".join(f"{o.short}={t}" for o, t in zip(others, group)) or None
                (line,) = ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=label)
                band = [p for p in pts if p[2]]
                if band:
                    ax.fill_between([p[0] for p in band], [100 * p[2][0] for p in band], [100 * p[2][1] for p in band],
                                    color=line.get_color(), alpha=0.2)
            ax.set_xticks([x_of[t] for t in axis.texts], list(axis.texts))
            ax.set_xlabel(axis.key)
            ax.set_ylabel(f"{title} (%)")
            if others and j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle("Sweep: metrics with 95% bootstrap CIs" + ("" if any(_metrics(r) for r in result.rows)
                                                            else " (no run has metrics: no labelled clip)"))
    fig.tight_layout()
    return fig
