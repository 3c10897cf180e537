"""``dfer finetune`` over :func:`pipeline.finetune.finetune` (several GPUs: ``accelerate launch -m pipeline.cli
finetune ...``). Re-running the same command with the same ``--out`` resumes, also after an interruption."""

from __future__ import annotations

from pipeline.cli.options import INPUT, OUT_DIR, config_options, load_config, quiet_option
from pipeline.core.errors import EXIT_OK
from pipeline.eval.labels import LABEL_FORMATS
from pipeline.training.tracking import TRACKERS


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "finetune", parents=[config_options(), quiet_option()],
        help="train LoRA adapters for the classify model on labelled clips (tail-aware sampling, resumable)",
        description="Train LoRA adapters on the classify model with the exact prompts and label tokens classify "
                    "scores; upstream artifacts come from (and go to) the cache. Re-running with the same --out "
                    "resumes. Use the result with --set classify.adapter=CKPT.",
    )
    p.add_argument("train_input", metavar="TRAIN_INPUT", action=INPUT, help="folder of clips, CSV list file (path[,label]) or one video")
    p.add_argument("--labels", metavar="FILE", action=INPUT,
                   help="training labels (CSV video,label or an official split file; default: the 'label' column "
                        "of a CSV TRAIN_INPUT)")
    p.add_argument("--label-format", default="csv", choices=LABEL_FORMATS, help="format of --labels")
    p.add_argument("--val-labels", metavar="FILE", action=INPUT,
                   help="labels of the validation clips (held out of training); default: finetune.val_fraction of "
                        "each class")
    p.add_argument("--val-label-format", choices=LABEL_FORMATS, help="format of --val-labels (default: --label-format)")
    p.add_argument("--out", required=True, metavar="CKPT", action=OUT_DIR, help="output folder (adapter, checkpoints, metrics)")
    p.add_argument("--cache", "--cache-dir", metavar="DIR", action=OUT_DIR, help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    p.add_argument("--report-to", action="append", choices=TRACKERS, metavar="TRACKER",
                   help=f"log the training to an experiment tracker (repeatable): {', '.join(TRACKERS)}; sets "
                        "finetune.report_to (tensorboard: CKPT/tracking/tensorboard)")
    p.set_defaults(handler=_finetune)


def _finetune(args) -> int:
    from pipeline.finetune import finetune  # start-up time: torch, for this command only

    if args.report_to:
        args.overrides = [*args.overrides, f"finetune.report_to=[{', '.join(dict.fromkeys(args.report_to))}]"]
    finetune(
        args.train_input, args.labels, args.out, load_config(args), label_format=args.label_format,
        val_labels=args.val_labels, val_label_format=args.val_label_format, cache_dir=args.cache, quiet=args.quiet,
    )
    return EXIT_OK
