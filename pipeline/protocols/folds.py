"""``dfer folds``: a dataset's cross-validation protocol as one command, a client of the runner, of ``dfer finetune``
and of the report (never a second loop of any of them).

Per fold ``k`` (:mod:`.splits`: the official split files, matched to the input's clips, train and test disjoint)::

    DIR/fold<k>/                the fold's run over its test clips: a normal run directory (dfer report, compare,
                                view, inspect all take it), with dfer report's metrics.json and report.md
    DIR/fold<k>/finetune/       --finetune: dfer finetune's output on the fold's training clips (CKPT; its adapter
                                is the test run's classify.adapter)
    DIR/fold<k>/val/            --tune-tau: a run over the fold's validation clips (fine-tuning's, else the same
                                stratified share of the training clips), where the calibration's tau is chosen
    DIR/fold<k>/train_counts.json   training clips per class: the prior of the fold's report (--calibration prior)
    DIR/fold<k>/fold.json       the fold's setup and whether it finished
    DIR/folds.md, DIR/folds.json    the summary: each fold, the mean ± sd table of ``dfer compare --folds`` over the
                                fold directories, and whether the folds' run cards agree

Every run goes through one shared cache. Running the same command again resumes: a finished fold with the same setup
is kept as it is; an unfinished one goes through its steps again, each of which resumes (fine-tuning from its last
checkpoint, the runs from the cache), so a killed fold costs only what was not finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from pipeline.core.cache import Cache, default_cache_dir
from pipeline.core.errors import ConfigError, PreflightError
from pipeline.engine.config import dump_config, load_config
from pipeline.engine.inputs import discover
from pipeline.core.files import json_text, write_atomic, write_json
from pipeline.engine.rundir import RunDir
from pipeline.engine.runner import Runner, executor_for
from pipeline.eval.calibration import METHODS
from pipeline.eval.labels import load_label_set
from pipeline.finetune import finetune
from pipeline.finetune.data import split_train_val
from pipeline.protocols.splits import PROTOCOLS, FoldSplit, parse_folds, read_folds
from pipeline.report import (HEADLINE, calibration_text, card_differences, compare_folds, fold_summary, markdown_table,
                             pct, write_report)

FILES = {"table": "folds.md", "json": "folds.json"}
STATE = "fold.json"


@dataclass
class FoldRow:
    split: FoldSplit
    run_dir: Path
    resumed: bool  # finished earlier with the same setup: kept as it was
    report: dict = field(default_factory=dict)


@dataclass
class FoldsResult:
    out_dir: Path
    protocol: str
    rows: list[FoldRow]
    summary: dict
    table: str

    def text(self) -> str:
        return self.table + f"\nwrote {self.out_dir / FILES['table']} and {self.out_dir / FILES['json']}"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _Folds:
    """One ``dfer folds`` command: its settings, and the steps of one fold."""

    def __init__(self, cfg, out: Path, cache_dir, executor: str, ray_address, allow_overlap: bool, quiet: bool,
                 log: TextIO, do_finetune: bool, calibration: str, tau: float, tune_tau: bool, n_boot: int,
                 smoothing: float):
        self.cfg, self.out, self.cache_dir, self.log, self.quiet = cfg, out, cache_dir, log, quiet
        self.executor, self.ray_address, self.allow_overlap = executor, ray_address, allow_overlap
        self.do_finetune, self.calibration, self.tau, self.tune_tau, self.n_boot, self.smoothing = \
            do_finetune, calibration, tau, tune_tau, n_boot, smoothing
        self.names = load_label_set(cfg.classify.labels).names

    def say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    def _runner(self, cfg, run_dir: Path, allow_overlap: bool) -> Runner:
        return Runner(cfg, run_dir, cache_dir=self.cache_dir, quiet=self.quiet, log=self.log,
                      executor=executor_for(self.executor, cfg.run, self.ray_address), allow_overlap=allow_overlap)

    def setup(self, fold: FoldSplit) -> str:
        """What a fold's numbers depend on: a finished fold with the same setup is kept on a new call."""
        return _sha({"config": dump_config(self.cfg), "finetune": self.do_finetune, "calibration": self.calibration,
                     "smoothing": self.smoothing,
                     "tau": None if self.tune_tau else self.tau, "tune_tau": self.tune_tau, "n_boot": self.n_boot,
                     "train": {r.id: [r.label, fold.fingerprints.get(r.id)] for r in fold.train},
                     "test": {r.id: [r.label, fold.fingerprints.get(r.id)] for r in fold.test}})

    def run_fold(self, fold: FoldSplit, n_folds: int) -> FoldRow:
        fold_dir = self.out / f"fold{fold.fold}"
        state_file = fold_dir / STATE
        setup = self.setup(fold)
        state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
        if state.get("setup") == setup and state.get("done") and RunDir(fold_dir).metrics() is not None:
            self.say(f"== fold {fold.fold} ({n_folds} in all): finished earlier with the same setup; kept")
            return FoldRow(fold, fold_dir, True, RunDir(fold_dir).metrics())
        self.say(f"== fold {fold.fold} ({n_folds} in all): {len(fold.train)} training clips, {len(fold.test)} test "
                 "clips" + (" (going on where it stopped)" if state.get("setup") == setup else ""))
        RunDir(fold_dir).claim()  # a run directory (its state and counts beside the run's files)
        write_json(state_file, {"setup": setup, "done": False}, indent=None)
        counts = fold.counts(self.names)
        write_json(fold_dir / "train_counts.json", counts)
        cfg, val_ids = self.cfg, set()
        if self.do_finetune:
            self.say(f"fold {fold.fold}: fine-tuning on its training clips -> {fold_dir / 'finetune'}")
            result = finetune(f"fold {fold.fold}'s training split", None, fold_dir / "finetune", self.cfg,
                              cache_dir=self.cache_dir, quiet=self.quiet, log=self.log, refs=fold.train)
            cfg = self.cfg.model_copy(update={"classify": self.cfg.classify.model_copy(
                update={"adapter": str(fold_dir / "finetune")})})
            val_ids = {e["video"] for e in json.loads((result.out_dir / "split.json").read_text())["val"]}
        elif self.tune_tau:
            f = self.cfg.finetune
            val_ids = set(split_train_val({r.id: r.label for r in fold.train}, f.val_fraction, f.seed)[1])
        tau_from = None
        if self.tune_tau:
            if not val_ids:
                raise ConfigError(f"fold {fold.fold}: --tune-tau needs validation clips, and finetune.val_fraction="
                                  f"{self.cfg.finetune.val_fraction} leaves none")
            self.say(f"fold {fold.fold}: {len(val_ids)} validation clips, where the tau is chosen -> {fold_dir / 'val'}")
            # the validation clips are among those the adapter recorded (fine-tuning validated on them): allowed
            self._runner(cfg, fold_dir / "val", allow_overlap=True).run([r for r in fold.train if r.id in val_ids])
            tau_from = fold_dir / "val"
        self.say(f"fold {fold.fold}: the run over its test clips -> {fold_dir}")
        run = self._runner(cfg, fold_dir, self.allow_overlap).run(fold.test)
        if run.status != "complete":
            raise PreflightError(f"fold {fold.fold}: the run stopped before a stage: {run.stop_message}")
        report = write_report(fold_dir, calibration=self.calibration, tau=self.tau, train_counts=counts,
                              n_boot=self.n_boot, tau_from=tau_from, allow_overlap=self.allow_overlap,
                              smoothing=self.smoothing)
        write_json(state_file, {"setup": setup, "done": True}, indent=None)
        m = report.get("metrics") or {}
        self.say(f"fold {fold.fold}: " + "  ".join(f"{name} {pct(m.get(k))}" for k, name in HEADLINE)
                 + f"  (calibration {calibration_text(report['calibration'])})")
        return FoldRow(fold, fold_dir, False, report)


def run_folds(input_path: str | Path, splits: str | Path, out_dir: str | Path, *, protocol: str = "dfew",
              folds: str = "1-5", do_finetune: bool = False, preset: str | None = None,
              config_file: str | Path | None = None, overrides: Sequence[str] = (), calibration: str = "prior",
              tau: float = 1.0, tune_tau: bool = False, cache_dir: str | Path | None = None, executor: str = "local",
              ray_address: str | None = None, allow_overlap: bool = False, quiet: bool = False,
              log: TextIO | None = None, n_boot: int = 1000, smoothing: float = 0.0) -> FoldsResult:
    """Run ``folds`` of ``protocol`` over the clips of ``input_path`` with the split files under ``splits`` into
    ``out_dir`` (see the module docstring). The config is defaults < preset < file < the protocol's label set <
    ``overrides``. Everything that can be checked is checked before anything runs: the split files, every fold's
    clips and their disjointness, the stages' checks."""
    log = log or sys.stderr
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol}: unknown; protocols: {', '.join(PROTOCOLS)}")
    if calibration not in METHODS:
        raise ConfigError(f"--calibration {calibration}: unknown; allowed: {', '.join(METHODS)}")
    proto = PROTOCOLS[protocol]
    fold_list = parse_folds(folds, proto)
    cfg = load_config(config_file, [f"classify.labels={proto.label_set}", *overrides], preset=preset)
    if do_finetune and cfg.classify.adapter is not None:
        raise ConfigError(f"--finetune trains each fold's adapter from classify.model; classify.adapter is set "
                          f"({cfg.classify.adapter}): unset it")
    if tune_tau and calibration == "none":
        raise ConfigError("--tune-tau chooses the tau of a calibration: --calibration none has none")
    refs = discover(input_path)
    cache_root = Cache(cache_dir if cache_dir is not None else default_cache_dir()).root
    fold_splits = read_folds(refs, splits, proto, fold_list, load_label_set(cfg.classify.labels), cache_root,
                             allow_overlap)
    if calibration == "prior" and smoothing <= 0:
        names = load_label_set(cfg.classify.labels).names
        empty = {f.fold: [n for n, c in f.counts(names).items() if c == 0] for f in fold_splits}
        empty = {k: v for k, v in empty.items() if v}
        if empty:
            raise ConfigError("--calibration prior takes each fold's training counts as the prior, but some classes "
                              "have no training clip: " + "; ".join(f"fold {k}: {', '.join(v)}" for k, v in empty.items())
                              + ". Pass --prior-smoothing 1 (a pseudo-count per class), or another calibration")
    out = Path(out_dir)
    RunDir(out).check_claim()  # a folder of the user's is refused, as `dfer run` refuses it
    blocked = Runner(cfg, out / "fold-check", cache_dir=cache_dir, log=io.StringIO(),
                     allow_overlap=allow_overlap).check([r for f in fold_splits for r in f.test])
    if blocked is not None:
        raise PreflightError(f"the folds' runs would stop before stage '{blocked[0]}': {blocked[1]}")
    folds_run = _Folds(cfg, out, cache_dir, executor, ray_address, allow_overlap, quiet, log, do_finetune,
                       calibration, tau, tune_tau, n_boot, smoothing)
    RunDir(out).claim()
    rows = [folds_run.run_fold(f, len(fold_splits)) for f in fold_splits]
    dirs = [r.run_dir for r in rows]
    summary = fold_summary(dirs)
    table = compare_folds(dirs)
    result = FoldsResult(out, protocol, rows, summary, table)
    write_atomic(out / FILES["table"], folds_markdown(result, folds_run, input_path, splits))
    write_atomic(out / FILES["json"], json_text(folds_json(result, folds_run), indent=1))
    return result


def _tau_cell(rep: dict) -> str:
    cal = rep.get("calibration") or {}
    if cal.get("method") in (None, "none"):
        return "-"
    return f"{cal['tau']:g}" + (" (validation)" if cal.get("tau_from") else "")


def folds_json(result: FoldsResult, settings: _Folds) -> dict:
    return {"protocol": result.protocol, "finetune": settings.do_finetune, "calibration": settings.calibration,
            "tune_tau": settings.tune_tau,
            "folds": [{"fold": r.split.fold, "run_dir": str(r.run_dir), "train": len(r.split.train),
                       "test": len(r.split.test), "ids_without_clip": r.split.missing, "overlap": r.split.overlap,
                       "calibration": r.report.get("calibration"), "kept_from_earlier": r.resumed} for r in result.rows],
            "summary": result.summary}


def folds_markdown(result: FoldsResult, settings: _Folds, input_path, splits) -> str:
    """``folds.md``: the protocol and its settings, each fold, the ``dfer compare --folds`` table, the run cards."""
    how = "fine-tuned on each fold's training clips (dfer finetune)" if settings.do_finetune else "zero-shot"
    cal = settings.calibration
    tau = ("chosen per fold on its validation clips (--tune-tau)" if settings.tune_tau else f"{settings.tau:g}")
    lines = [f"# Folds: {result.protocol}, {len(result.rows)} folds, {how}\n",
             f"Clips from `{input_path}`, folds from the split files under `{splits}`. Calibration: {cal}"
             + (" with each fold's training counts as the prior"
                + (f" (+{settings.smoothing:g} per class)" if settings.smoothing else "") + f", tau {tau}"
                if cal == "prior" else
                f", tau {tau}" if cal != "none" else "") + ". One run directory per fold (its test clips), one cache.\n",
             *markdown_table(["fold", "training clips", "test clips", "split ids without a clip (train/test)", "tau",
                              "report"],
                             [[r.split.fold, len(r.split.train), len(r.split.test),
                               f"{r.split.missing['train']}/{r.split.missing['test']}", _tau_cell(r.report),
                               f"[{r.run_dir.name}/report.md]({r.run_dir.name}/report.md)"
                               + (" (kept from an earlier call)" if r.resumed else "")] for r in result.rows]),
             "\n## Mean ± sd over the folds (`dfer compare --folds`)\n", result.table]
    overlaps = [r for r in result.rows if r.split.overlap]
    if overlaps:
        lines += ["## Overlap of training and test clips (allowed with --allow-overlap)\n",
                  *(f"- fold {r.split.fold}: {len(r.split.overlap)} clip(s): {', '.join(r.split.overlap[:10])}"
                    for r in overlaps), ""]
    warn = card_differences([r.run_dir.name for r in result.rows], [RunDir(r.run_dir).runcard() for r in result.rows],
                            expected=("adapter",))
    lines += ["## Run cards\n", *(warn or ["The folds' run cards agree (versions, models, devices, dtypes; each fold "
                                           "has its own adapter)." if settings.do_finetune else
                                           "The folds' run cards agree (versions, models, devices, dtypes)."])]
    return "\n".join(lines) + "\n"
