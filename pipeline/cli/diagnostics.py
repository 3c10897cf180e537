"""``dfer probe``, ``dfer conflict`` and ``dfer socialfusion train`` over :mod:`pipeline.diagnostics.commands`."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.options import config_options, load_config, quiet_option
from pipeline.errors import EXIT_FAILED_CLIPS, EXIT_OK


def _clip_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("input", metavar="INPUT", help="folder of clips, CSV list (path[,label]), one video, or a run directory")
    p.add_argument("--labels", metavar="CSV", help="task table: a 'video' column and one column per task "
                   "(default: the input CSV's 'label' column, as task 'label')")
    p.add_argument("--tasks", metavar="A,B", help="columns of --labels to use (default: all)")
    p.add_argument("--label-set", metavar="NAME", help="canonicalise the first task's values with this label set "
                   "(dfew, ferv39k, mafw or a YAML file) and use its label order")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="token pooling per image")
    p.add_argument("--frames", choices=["keyframes", "all"], default="keyframes", help="which frames of each clip")
    p.add_argument("--max-frames", type=int, default=16, help="with --frames all: at most this many, evenly spaced")
    p.add_argument("--image-size", type=int, default=224, help="face crop side handed to the image processor")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="encoder dtype")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder forward pass")
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of videos held out (split by video)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--cache", metavar="DIR", help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    p.add_argument("--force", action="store_true", help="recompute the features even if cached")
    return p


def _train_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--encoder", required=True, metavar="MODEL[@REV]", help="frozen vision encoder (VLM, CLIP/SigLIP, vision model)")
    p.add_argument("--layer", type=int, default=-1, help="encoder hidden-state index feeding the connector")
    p.add_argument("--lm", required=True, metavar="MODEL[@REV]", help="causal language model (hub id or folder)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the LM (peft)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", metavar="A,B", help="LM modules to adapt (default: peft's for the architecture)")
    p.add_argument("--tokens-per-frame", type=int, default=1)
    p.add_argument("--connector-hidden", type=int, default=256)
    p.add_argument("--default-task", help="task the classify backend scores (default: the first task)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--train-batch", type=int, default=8, help="clips per task per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sampler", choices=["instance", "sqrt", "balanced", "progressive"], default="balanced",
                   help="per-task sampler of pipeline/longtail.py")
    p.add_argument("--conflict-every", type=int, default=1, help="record per-task gradients every N steps (0: never)")
    p.add_argument("--save-every", type=int, default=0,
                   help="write a resumable checkpoint every N steps (0: none); the same command resumes from it")
    return p


def add_parsers(sub) -> None:
    common = [_clip_options(), config_options(), quiet_option()]
    probe = sub.add_parser("probe", parents=common, help="linear probes on frozen visual features (per encoder and layer)")
    probe.add_argument("--encoder", action="append", required=True, metavar="MODEL[@REV]",
                       help="vision encoder to probe (repeatable): a VLM (its vision tower), CLIP/SigLIP, a vision model")
    probe.add_argument("--layers", default="-1", help="hidden-state indices, e.g. -1 or 4,8,-1 or all (0 = patch embedding)")
    probe.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    probe.add_argument("--out", required=True, metavar="DIR", help="where probe.json / probe.md go")
    probe.set_defaults(handler=_probe)

    conflict = sub.add_parser("conflict", parents=[*common, _train_options()],
                              help="train the frozen-encoder + connector + LM model on several tasks and report "
                                   "gradient conflict between them (no model saved)")
    conflict.add_argument("--out", required=True, metavar="DIR", help="where conflict.* and training.json go")
    conflict.set_defaults(handler=_conflict)

    sf = sub.add_parser("socialfusion", help="frozen encoder + connector + LM baseline (SocialFusion)")
    sf_sub = sf.add_subparsers(dest="sf_command", required=True)
    tr = sf_sub.add_parser("train", parents=[*common, _train_options()],
                           help="train and save a model usable as classify.model.backend=socialfusion")
    tr.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder (training reports in MODEL_DIR/training)")
    tr.set_defaults(handler=_socialfusion_train)


def _options(model, args):
    from pipeline.config import validated

    return validated(model, vars(args), "the command's options")


def _probe(args) -> int:
    from pipeline.diagnostics.commands import ProbeOptions, probe
    from pipeline.diagnostics.probe import probe_table

    results, failed = probe(_options(ProbeOptions, args), load_config(args))
    print(probe_table(results))
    return EXIT_FAILED_CLIPS if failed else EXIT_OK


def _train(args, save: bool) -> int:
    from pipeline.diagnostics.commands import TrainOptions, train

    report, failed = train(_options(TrainOptions, args), load_config(args), save=save)
    for t, m in report.validation.items():
        print(f"validation {t}: UAR {100 * m['uar']:.1f}  WAR {100 * m['war']:.1f}  ({m['n']} clips)")
    if report.conflict.rows:
        print(report.conflict.markdown())
    sys.stdout.flush()
    return EXIT_FAILED_CLIPS if failed else EXIT_OK


def _conflict(args) -> int:
    return _train(args, save=False)


def _socialfusion_train(args) -> int:
    return _train(args, save=True)
