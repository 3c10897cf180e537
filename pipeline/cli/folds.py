"""``dfer folds`` over :func:`pipeline.protocols.folds.run_folds`."""

from __future__ import annotations

from pipeline.cli.options import (INPUT, OUT_DIR, config_options, execution_options, number, quiet_libraries,
                                  quiet_option)
from pipeline.core.errors import EXIT_OK
from pipeline.eval.calibration import METHODS


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "folds", parents=[config_options(), execution_options(), quiet_option()],
        help="a dataset's cross-validation protocol (DFEW, MAFW) as one command: per fold, optional fine-tuning on "
             "its training clips, the run over its test clips, the report; then mean ± sd over the folds",
        description="Reads the official split files (--splits), matches them to the clips of INPUT and checks that no "
                    "fold tests on its training clips; then per fold: dfer finetune on its training clips (--finetune), "
                    "dfer run over its test clips into OUT/fold<k>/ (with that adapter), dfer report with the fold's "
                    "training counts as the prior; then OUT/folds.md with dfer compare --folds' table. One cache; "
                    "running the same command again resumes. Example: dfer folds DFEW/Clip/original --splits "
                    "DFEW/EmoLabel_DataSplit --protocol dfew --out folds/msce --preset msce",
    )
    p.add_argument("input", action=INPUT, help="folder of the dataset's clips (recursive), or a CSV list file")
    p.add_argument("--splits", required=True, metavar="PATH", action=INPUT,
                   help="the split files: DFEW's EmoLabel_DataSplit folder (or the dataset root), MAFW's 'Train & Test "
                        "Set' folder (or its single/no_caption folder)")
    p.add_argument("--protocol", required=True, choices=["dfew", "mafw"], help="the dataset whose folds these are")
    p.add_argument("--out", required=True, metavar="DIR", action=OUT_DIR, help="one run directory per fold, and the summary")
    p.add_argument("--folds", default="1-5", metavar="1-5", help="the folds to run: 1-5, 2, 1,3 (default: %(default)s)")
    p.add_argument("--finetune", action="store_true",
                   help="fine-tune LoRA adapters on each fold's training clips first (the finetune.* settings) and "
                        "run its test clips with them")
    p.add_argument("--calibration", default="prior", choices=METHODS,
                   help="how each fold's report calibrates: prior (default; the fold's training counts), estimated "
                        "(from its test clips' own scores), none")
    p.add_argument("--tau", type=number(float, 0), default=1.0, help="the calibration's tau (default: %(default)s)")
    p.add_argument("--prior-smoothing", type=number(float, 0), default=0.0, metavar="N",
                   help="a pseudo-count added to each class's training count (needed when a class has no training "
                        "clip in some fold)")
    p.add_argument("--tune-tau", action="store_true",
                   help="instead of --tau, choose each fold's tau on its validation clips (fine-tuning's, else "
                        "finetune.val_fraction of its training clips), run for that")
    p.set_defaults(handler=_folds)


def _folds(args) -> int:
    from pipeline.protocols.folds import run_folds  # start-up time: torch and matplotlib, for this command only

    if args.quiet:
        quiet_libraries()
    result = run_folds(
        args.input, args.splits, args.out, protocol=args.protocol, folds=args.folds, do_finetune=args.finetune,
        preset=args.preset, config_file=args.config, overrides=args.overrides, calibration=args.calibration,
        tau=args.tau, tune_tau=args.tune_tau, cache_dir=args.cache, executor=args.executor,
        ray_address=args.ray_address, allow_overlap=args.allow_overlap, quiet=args.quiet,
        smoothing=args.prior_smoothing,
    )
    print(result.text())
    return EXIT_OK
