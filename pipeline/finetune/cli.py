"""``dfer finetune``: argument parsing and exit codes over :func:`pipeline.finetune.finetune`.

Wire it into ``pipeline/cli.py`` with ``finetune_cli.add_parser(sub)`` in ``build_parser`` and
``"finetune": finetune_cli.run`` in ``main``'s handlers; ``python -m pipeline.finetune`` runs it on its own.
Exit codes as ``dfer run``: 0 done, 2 bad usage/config/labels/input (nothing trained), 130 interrupted
(re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="train LoRA adapters for the classify model on labelled clips (tail-aware sampling, resumable)",
        description="Train LoRA adapters on the classify model with the exact prompts and label tokens classify "
                    "scores; upstream artifacts come from (and go to) the cache. Re-running with the same --out "
                    "resumes. Use the result with --set classify.adapter=CKPT.",
    )
    p.add_argument("train_input", metavar="TRAIN_INPUT", help="folder of clips, CSV list file (path[,label]) or one video")
    p.add_argument("--labels", metavar="FILE",
                   help="training labels (CSV video,label or an official split file; default: the 'label' column "
                        "of a CSV TRAIN_INPUT)")
    p.add_argument("--label-format", default="csv", choices=["csv", "dfew", "ferv39k", "mafw"], help="format of --labels")
    p.add_argument("--val-labels", metavar="FILE",
                   help="labels of the validation clips (held out of training); default: finetune.val_fraction of "
                        "each class")
    p.add_argument("--val-label-format", choices=["csv", "dfew", "ferv39k", "mafw"], help="format of --val-labels "
                   "(default: --label-format)")
    p.add_argument("--out", required=True, metavar="CKPT", help="output folder (adapter, checkpoints, metrics)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (sections per stage, plus finetune)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set finetune.sampling=sqrt")
    p.add_argument("--cache", metavar="DIR", help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--stop-after-steps", type=int, metavar="N", help=argparse.SUPPRESS)  # tests: stop as if killed
    return p


def run(args) -> int:
    from pipeline.cache import CacheError
    from pipeline.config import ConfigError, load_config
    from pipeline.finetune.adapter import AdapterError
    from pipeline.finetune.config import FinetuneError
    from pipeline.inputs import InputError
    from pipeline.labels import LabelError
    from pipeline.modelstage import PreflightError
    from pipeline.prompts import TemplateError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.quiet:
            cfg.run.progress = False
        from pipeline.finetune.loop import finetune

        result = finetune(
            args.train_input, args.labels, args.out, cfg, label_format=args.label_format, val_labels=args.val_labels,
            val_label_format=args.val_label_format, cache_dir=args.cache, quiet=args.quiet,
            stop_after_steps=args.stop_after_steps,
        )
    except (ConfigError, FinetuneError, LabelError, InputError, PreflightError, TemplateError, AdapterError,
            CacheError, FileNotFoundError) as exc:
        print(f"dfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"dfer: interrupted; run the same command again to resume from {args.out}/checkpoints", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped:
        print(f"dfer: stopped after {result.global_step} steps as asked; run again to resume", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    parser = add_parser(sub)
    parser.prog = "python -m pipeline.finetune"
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))
