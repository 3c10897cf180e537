"""``dfer probe``, ``dfer conflict`` and ``dfer socialfusion train`` over :mod:`pipeline.diagnostics.commands`:
each command's options are its options model's fields (:func:`pipeline.cli.options.model_options`)."""

from __future__ import annotations

import sys
from functools import partial

from pipeline.cli.options import config_options, load_config, model_options, quiet_option
from pipeline.core.errors import EXIT_FAILED_CLIPS, EXIT_OK
from pipeline.diagnostics.commands import ProbeOptions, TrainOptions, probe, train
from pipeline.diagnostics.probe import probe_table
from pipeline.engine.config import validated


def add_parsers(sub) -> None:
    common = [config_options(), quiet_option()]
    probe = sub.add_parser("probe", parents=[model_options(ProbeOptions, ("input",), ("quiet",)), *common],
                           help="linear probes on frozen visual features (per encoder and layer)")
    probe.set_defaults(handler=_probe)
    train = [model_options(TrainOptions, ("input",), ("quiet",)), *common]
    conflict = sub.add_parser("conflict", parents=train, help="train the frozen-encoder + connector + LM model on "
                              "several tasks and report gradient conflict between them (no model saved)")
    conflict.set_defaults(handler=partial(_train, save=False))
    sf = sub.add_parser("socialfusion", help="frozen encoder + connector + LM baseline (SocialFusion)")
    sf_sub = sf.add_subparsers(dest="sf_command", required=True)
    tr = sf_sub.add_parser("train", parents=train, help="train and save a model usable as classify.model.backend=socialfusion")
    tr.set_defaults(handler=partial(_train, save=True))


def _options(model, args):
    """The command's options model; an option not given (None: a repeatable option never given) takes its default."""
    return validated(model, {k: v for k, v in vars(args).items() if v is not None}, "the command's options")


def _probe(args) -> int:
    results, failed = probe(_options(ProbeOptions, args), load_config(args))
    print(probe_table(results))
    return EXIT_FAILED_CLIPS if failed else EXIT_OK


def _train(args, save: bool) -> int:
    report, failed = train(_options(TrainOptions, args), load_config(args), save=save)
    for t, m in report.validation.items():
        print(f"validation {t}: UAR {100 * m['uar']:.1f}  WAR {100 * m['war']:.1f}  ({m['n']} clips)")
    if report.conflict.rows:
        print(report.conflict.markdown())
    sys.stdout.flush()
    return EXIT_FAILED_CLIPS if failed else EXIT_OK
