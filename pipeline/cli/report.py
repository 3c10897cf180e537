"""``dfer report``, ``dfer view`` and ``dfer compare`` (model-free: report and compare import neither torch nor
transformers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.eval.calibration import METHODS
from pipeline.cli.options import INPUT, INPUT_FILE, OUT_DIR, OUT_FILE, RUN_DIR, label_options, number
from pipeline.core.errors import EXIT_OK, ConfigError, excerpt
from pipeline.core.paths import shown
from pipeline.engine.rundir import view_files_of


def _scoring_options() -> argparse.ArgumentParser:
    """True labels and calibration, as ``dfer report`` applies them (report and view)."""
    p = argparse.ArgumentParser(add_help=False, parents=[label_options()])
    p.add_argument("run_dir", metavar="RUN", action=RUN_DIR)
    p.add_argument("--calibration", default="none", choices=METHODS,
                   help="none; prior: logit adjustment with --train-counts; estimated: prior estimated from this run")
    p.add_argument("--tau", type=number(float, 0), help="temperature of the logit adjustment (default 1)")
    p.add_argument("--train-counts", metavar="FILE", action=INPUT_FILE,
                   help="JSON/YAML {label: count} of the training set (head/tail groups, prior)")
    return p


def add_parsers(sub) -> None:
    rep = sub.add_parser("report", parents=[_scoring_options()],
                         help="metrics, Markdown report and plots of a run (no model is called)")
    rep.add_argument("--tau-sweep", metavar="T1,T2,...",
                     help="also score each tau (e.g. 0,0.5,1,1.5,2) on this run's own labels; the report marks it as "
                          "test-set tuning")
    rep.add_argument("--tau-from", metavar="OTHER_RUN", action=RUN_DIR,
                     help="choose the tau of --calibration on another run (a validation split, other folds' clips): "
                          "the best UAR there among --tau-candidates; its clips must not be this run's")
    rep.add_argument("--tau-from-labels", metavar="FILE", action=INPUT,
                     help="true labels of --tau-from's clips, read with --label-format (default: its own)")
    rep.add_argument("--tau-candidates", metavar="T1,T2,...", default="0,0.25,0.5,0.75,1,1.25,1.5,1.75,2",
                     help="the taus --tau-from chooses among (default: %(default)s)")
    rep.add_argument("--allow-overlap", action="store_true",
                     help="let --tau-from name a run that shares clips with this one (recorded in the report)")
    rep.add_argument("--label-frequency", metavar="FILE", action=INPUT_FILE,
                     help="CSV label,count (e.g. how often each emotion word occurs in a web corpus): per-class F1 "
                          "against it (table, scatter plot, Spearman rank correlation)")
    rep.add_argument("--out", metavar="DIR", action=OUT_DIR, help="where to write (default: the run directory)")
    rep.set_defaults(handler=_report)

    view = sub.add_parser("view", parents=[_scoring_options()],
                          help="one self-contained HTML page of a run: clips, timelines, scores, confusion matrix")
    view.add_argument("-o", "--output", metavar="FILE.html", action=OUT_FILE, help="where to write (default: RUN/view.html)")
    view.add_argument("--one-file-max", type=number(int, 0), metavar="N",
                      help="a run of more clips writes its cards and thumbnails into a folder beside the page "
                           "(view.html -> view_files/), loaded as they are shown, so the page opens in seconds "
                           "(default: 2000)")
    view.set_defaults(handler=_view)

    cmp_ = sub.add_parser("compare", help="put several runs (ablations) side by side, or aggregate folds (--folds)")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN", action=RUN_DIR)
    cmp_.add_argument("--folds", action="store_true",
                      help="the runs are the folds of one protocol (e.g. DFEW's five): mean ± std of UAR, WAR, "
                           "macro-F1 and each class's recall")
    cmp_.add_argument("--labels", metavar="FILE", action=INPUT, help="true labels for all runs (else each run's own)")
    cmp_.add_argument("--calibration", choices=METHODS, help="recompute every run with this calibration")
    cmp_.add_argument("--tau", type=number(float, 0), help="temperature for --calibration")
    cmp_.set_defaults(handler=_compare)


def _taus(text: str | None, option: str = "--tau-sweep") -> list[float]:
    parse = number(float, 0)
    try:
        return [parse(x) for x in (text or "").split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        raise ConfigError(f"{option} expects finite numbers >= 0 separated by commas, got "
                          f"{excerpt(text, quote=True)}") from None


def _tau(args) -> float:
    """``--tau``, which ``--tau-from`` replaces (giving both is an error)."""
    if getattr(args, "tau_from", None) is not None and args.tau is not None:
        raise ConfigError("--tau and --tau-from both set the tau: keep one")
    return 1.0 if args.tau is None else args.tau


def _report(args) -> int:
    from pipeline.report import summary, write_report  # start-up time: matplotlib, for the commands that draw

    rep = write_report(
        args.run_dir, labels_file=args.labels, label_format=args.label_format, calibration=args.calibration,
        tau=_tau(args), train_counts=args.train_counts, out_dir=args.out, fold=args.fold, split=args.split,
        taus=_taus(args.tau_sweep), label_frequency=args.label_frequency, tau_from=args.tau_from,
        tau_from_labels=args.tau_from_labels, tau_candidates=_taus(args.tau_candidates, "--tau-candidates"),
        allow_overlap=args.allow_overlap,
    )
    print(summary(rep, Path(args.out or args.run_dir)))
    return EXIT_OK


def _view(args) -> int:
    from pipeline.view import write_view  # start-up time: matplotlib, for the commands that draw

    path = write_view(args.run_dir, args.output, labels_file=args.labels, label_format=args.label_format,
                      calibration=args.calibration, tau=_tau(args), train_counts=args.train_counts, fold=args.fold,
                      split=args.split, **({} if args.one_file_max is None else {"one_file_max": args.one_file_max}))
    files = view_files_of(path)
    beside = f", with its cards in {shown(files)}/ (keep them together)" if files.is_dir() else ""
    print(f"{shown(path)} ({path.stat().st_size / 1e6:.1f} MB{beside}); open it in a browser")
    return EXIT_OK


def _compare(args) -> int:
    from pipeline.report import compare_folds, compare_runs  # start-up time: matplotlib (the report package)

    kwargs = {"labels_file": args.labels, "calibration": args.calibration, "tau": args.tau}
    compare = compare_folds if args.folds else compare_runs
    print(compare(args.run_dirs, **{k: v for k, v in kwargs.items() if v is not None}))
    return EXIT_OK
