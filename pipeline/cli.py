"""``dfer`` command line: a thin layer over library functions (argument parsing and exit codes only).

Exit codes: 0 success (or a run that stopped before a model stage because its weights are not
available; the message says how to point at a local model; ``--strict`` turns that into 3);
1 some clips failed; 2 bad usage, config or input; 3 a strict run stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED_CLIPS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (sections per stage)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set keyframes.k=8",
    )


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """True labels and calibration, as `dfer report` applies them (shared by report and view)."""
    p.add_argument("--labels", metavar="FILE", help="true labels: CSV video,label or an official split file/folder")
    p.add_argument("--label-format", default="csv", choices=["csv", "dfew", "ferv39k", "mafw"], help="format of --labels")
    p.add_argument("--fold", type=int, help="DFEW fold (1-5) when --labels is the DFEW split folder")
    p.add_argument("--split", default="test", choices=["train", "test"], help="DFEW split when --labels is a folder")
    p.add_argument("--calibration", default="none", choices=["none", "prior", "estimated"],
                   help="none; prior: logit adjustment with --train-counts; estimated: prior estimated from this run")
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the logit adjustment")
    p.add_argument("--train-counts", metavar="FILE", help="JSON/YAML {label: count} of the training set (head/tail groups, prior)")


def build_parser() -> argparse.ArgumentParser:
    from stages import STAGE_ORDER

    parser = argparse.ArgumentParser(prog="dfer", description="Emotion recognition in face videos with VLMs, as a cached staged pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline over a folder, a CSV list or one video")
    run.add_argument("input", help="folder of clips (recursive), CSV list file (path[,label]) or one video file")
    run.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    _add_config_args(run)
    run.add_argument("--until", choices=STAGE_ORDER, help="stop after this stage")
    run.add_argument("--force", choices=STAGE_ORDER, help="recompute this stage and everything downstream")
    run.add_argument("--shard", metavar="i/N", help="process only shard i of N (deterministic by video id)")
    run.add_argument("--cache", metavar="DIR", help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    run.add_argument("--strict", action="store_true", help="stop at the first failure (exit 3)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="where per-clip work and model stages run: local processes, or a Ray cluster (run.ray_* settings)")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="--executor ray: the cluster's head, HOST:6379 (default: $RAY_ADDRESS, else a local Ray instance)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars (for logs)")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config, defaults included")
    _add_config_args(show)

    insp = sub.add_parser("inspect", help="draw one clip's keyframes, face boxes and motion curve as a PNG")
    insp.add_argument("run_dir", metavar="RUN")
    insp.add_argument("video", metavar="VIDEO", help="video id as listed in RUN/manifest.jsonl (or a unique part of it)")
    insp.add_argument("-o", "--output", metavar="PNG", help="where to write (default: RUN/inspect/<video>.png)")
    rep = sub.add_parser("report", help="metrics, Markdown report and plots of a run (no model is called)")
    rep.add_argument("run_dir", metavar="RUN")
    _add_scoring_args(rep)
    rep.add_argument("--tau-sweep", metavar="T1,T2,...", help="also print UAR/WAR for each tau (e.g. 0,0.5,1,1.5,2)")
    rep.add_argument("--out", metavar="DIR", help="where to write (default: the run directory)")

    view = sub.add_parser("view", help="one self-contained HTML page of a run: clips, timelines, scores, confusion matrix")
    view.add_argument("run_dir", metavar="RUN")
    view.add_argument("-o", "--output", metavar="FILE.html", help="where to write (default: RUN/view.html)")
    _add_scoring_args(view)

    cmp_ = sub.add_parser("compare", help="put several runs (ablations) side by side")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN")
    cmp_.add_argument("--labels", metavar="FILE", help="true labels for all runs (else each run's own)")
    cmp_.add_argument("--calibration", choices=["none", "prior", "estimated"], help="recompute every run with this calibration")
    cmp_.add_argument("--tau", type=float, help="temperature for --calibration")

    from pipeline.diagnostics import cli as diagnostics_cli
    from pipeline.finetune import cli as finetune_cli

    finetune_cli.add_parser(sub)
    diagnostics_cli.add_parser(sub)
    return parser


def _cmd_report(args) -> int:
    from pipeline.report import write_report

    rep = write_report(
        args.run_dir, labels_file=args.labels, label_format=args.label_format, calibration=args.calibration,
        tau=args.tau, train_counts=args.train_counts, out_dir=args.out, fold=args.fold, split=args.split,
    )
    out = Path(args.out or args.run_dir)
    m = rep.get("metrics")
    if m:
        print(f"UAR {100 * m['uar']:.2f}  WAR {100 * m['war']:.2f}  macro-F1 {100 * m['macro_f1']:.2f}  "
              f"({rep['counts']['scored_labelled']} labelled clips, calibration {rep['calibration']['method']})")
    else:
        print("no labelled clip: metrics not computed (pass --labels FILE)")
    c = rep["counts"]
    print(f"scored {c['scored']}, failed {c['failed']}, scored without label {c['scored_unlabeled']}, "
          f"labels without clip {c['labels_without_clip']}")
    if args.tau_sweep:
        _print_tau_sweep(args, rep)
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")
    return EXIT_OK


def _cmd_view(args) -> int:
    from pipeline.view import write_view

    path = write_view(args.run_dir, args.output, labels_file=args.labels, label_format=args.label_format,
                      calibration=args.calibration, tau=args.tau, train_counts=args.train_counts, fold=args.fold,
                      split=args.split)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return EXIT_OK


def _print_tau_sweep(args, rep) -> None:
    import json

    import numpy as np

    from pipeline.calibration import prior_from_counts, tau_sweep
    from pipeline.labels import load_label_set, match_labels, read_labels

    taus = [float(x) for x in args.tau_sweep.split(",") if x.strip()]
    labels = rep["label_set"]["labels"]
    rows = [json.loads(line) for line in open(Path(args.run_dir) / "scores.jsonl", encoding="utf-8") if line.strip()]
    if args.labels:
        try:
            ls = load_label_set(rep["label_set"]["name"])
        except Exception:  # noqa: BLE001 - a user label set: fall back to the run's names
            ls = None
        truth = match_labels(read_labels(args.labels, args.label_format, ls, args.fold, args.split), [r["video"] for r in rows]).matched
    else:
        truth = {r["video"]: r["label"] for r in rows if r.get("label") is not None}
    labelled = [r for r in rows if truth.get(r["video"]) in labels]
    if not labelled:
        print("tau sweep: no labelled clip")
        return
    scores = np.array([[r["scores"][lab] for lab in labels] for r in labelled])
    prior = prior_from_counts(rep["train_counts"], labels) if rep.get("train_counts") else None
    print("tau sweep (" + ("training prior" if prior is not None else "prior estimated from this run") + "):")
    for row in tau_sweep(scores, [truth[r["video"]] for r in labelled], prior, taus, labels):
        print(f"  tau {row['tau']:>5.2f}: UAR {100 * row['uar']:.2f}  WAR {100 * row['war']:.2f}  macro-F1 {100 * row['macro_f1']:.2f}")


def _cmd_compare(args) -> int:
    from pipeline.report import compare_runs

    kwargs = {}
    if args.labels:
        kwargs["labels_file"] = args.labels
    if args.calibration:
        kwargs["calibration"] = args.calibration
    if args.tau is not None:
        kwargs["tau"] = args.tau
    print(compare_runs(args.run_dirs, **kwargs))
    return EXIT_OK


def _cmd_run(args) -> int:
    from pipeline.config import load_config
    from pipeline.runner import StrictFailure, run_pipeline

    cfg = load_config(args.config, args.overrides)
    if args.quiet:
        cfg.run.progress = False
        quiet_libraries()
    executor = None
    if args.executor == "ray":
        from pipeline.executor_ray import RayExecutor

        executor = RayExecutor.from_config(cfg.run, address=args.ray_address)
    elif args.ray_address:
        print("dfer: error: --ray-address needs --executor ray", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = run_pipeline(
            args.input, args.out, cfg, cache_dir=args.cache, until=args.until, force=args.force,
            shard=args.shard, strict=args.strict, quiet=args.quiet, executor=executor,
        )
    except StrictFailure as exc:
        print(f"dfer: stopped (--strict): {exc}", file=sys.stderr)
        return EXIT_STOPPED
    print(f"{result.n_clips} clips, {result.n_failed} failed; run directory: {result.run_dir}", file=sys.stderr)
    if result.n_failed:
        print(f"failures are listed in {result.run_dir / 'failures.jsonl'}", file=sys.stderr)
    if result.status == "stopped":
        print(f"dfer: stopped before a model stage: {result.stop_message}", file=sys.stderr)
        if args.strict:
            return EXIT_STOPPED
    return EXIT_FAILED_CLIPS if result.n_failed else EXIT_OK


def quiet_libraries() -> None:
    """No download/loading progress bars from the Hugging Face libraries in quiet mode."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _cmd_config(args) -> int:
    from pipeline.config import dump_config, load_config

    sys.stdout.write(dump_config(load_config(args.config, args.overrides)))
    return EXIT_OK


def _cmd_inspect(args) -> int:
    from pipeline.inspect import inspect_clip

    path = inspect_clip(Path(args.run_dir), args.video, Path(args.output) if args.output else None)
    print(path)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from pipeline.cache import CacheError
    from pipeline.config import ConfigError
    from pipeline.executor_ray import ClusterError
    from pipeline.inputs import InputError
    from pipeline.labels import LabelError
    from pipeline.modelstage import PreflightError
    from pipeline.prompts import TemplateError
    from pipeline.runner import UnknownStageError

    args = build_parser().parse_args(argv)
    if args.command in ("report", "compare", "view"):
        handlers_value_errors = True
    else:
        handlers_value_errors = False
    from pipeline.diagnostics import cli as diagnostics_cli
    from pipeline.finetune import cli as finetune_cli

    handlers = {"run": _cmd_run, "config": _cmd_config, "inspect": _cmd_inspect, "report": _cmd_report, "compare": _cmd_compare,
                "view": _cmd_view,
                "finetune": finetune_cli.run}
    handlers.update({name: diagnostics_cli.run for name in diagnostics_cli.COMMANDS})
    try:
        return handlers[args.command](args)
    except (
        ConfigError, InputError, UnknownStageError, CacheError, PreflightError, TemplateError, LabelError,
        FileNotFoundError, LookupError, ClusterError,
    ) as exc:
        print(f"dfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        if not handlers_value_errors:
            raise
        print(f"dfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dfer: interrupted; finished artifacts are kept in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
