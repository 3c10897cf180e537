"""``dfer sweep`` over :func:`pipeline.tools.sweep.run_sweep`."""

from __future__ import annotations

import sys

from pipeline.cli.options import INPUT, OUT_DIR, config_options, execution_options, label_options, quiet_libraries, quiet_option
from pipeline.core.errors import EXIT_FAILED_CLIPS, EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "sweep", parents=[config_options(), execution_options(), label_options(), quiet_option()],
        help="run every combination of a grid of config values (one run directory each, one shared cache), "
             "then a table and a plot of UAR/WAR/macro-F1 against the swept values",
        description="Runs every combination of the --grid values as `dfer run` into OUT/<name>/ over one shared "
                    "cache (only what a value changes is recomputed), reports each run as `dfer report` does, and "
                    "writes OUT/sweep.md, OUT/sweep.png and OUT/sweep.json. Example (the paper's macro-F1 against "
                    "frame rate): dfer sweep clips/ --out sweeps/fps --preset msce --grid classify.dense_fps=1,2,5,10",
    )
    p.add_argument("input", action=INPUT, help="folder of clips (recursive), CSV list file (path[,label]) or one video file")
    p.add_argument("--out", required=True, metavar="DIR", action=OUT_DIR, help="sweep folder: one run directory per combination")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a config key and its values (parsed as YAML, like --set: null, true, 5); repeat for "
                        "more keys (every combination runs)")
    p.add_argument("--baseline", metavar="NAME",
                   help="a combination's name (its run directory, e.g. label_order=fixed): pair every other "
                        "combination with it on the shared clips and mark the differences whose 95%% CI excludes zero")
    p.set_defaults(handler=_sweep)


def _sweep(args) -> int:
    from pipeline.tools.sweep import run_sweep  # start-up time: matplotlib (the report), for this command only

    if args.quiet:
        quiet_libraries()
    result = run_sweep(
        args.input, args.out, args.grid, preset=args.preset, config_file=args.config, overrides=args.overrides,
        labels_file=args.labels, label_format=args.label_format, fold=args.fold, split=args.split,
        cache_dir=args.cache, executor=args.executor, ray_address=args.ray_address, quiet=args.quiet,
        baseline=args.baseline, allow_overlap=args.allow_overlap,
    )
    print(result.summary())
    sys.stdout.flush()
    return EXIT_FAILED_CLIPS if result.any_failed else EXIT_OK
