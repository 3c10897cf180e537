"""``dfer``: the command line. It parses arguments, calls one library function per command, and maps errors
to exit codes in :func:`main`, once (the codes and their meaning: :mod:`pipeline.core.errors`).

Each command module (``run``, ``sweep``, ``report``, ``finetune``, ``folds``, ``diagnostics``, ``cache``) adds its subcommands with
``add_parsers(subparsers)`` and sets ``handler`` on each; options shared by several commands are declared
once in :mod:`pipeline.cli.options`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pipeline
import stages

from pipeline.cli import cache, diagnostics, finetune, folds, report, run, sweep
from pipeline.cli.options import check_paths
from pipeline.core.errors import EXIT_INTERRUPTED, DferError, DiskFullError, is_disk_full

COMMAND_MODULES = (run, sweep, report, finetune, folds, diagnostics, cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfer", description="Emotion recognition in face videos with VLMs, as a cached staged pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


_OWN_CODE = tuple(str(Path(m.__file__).parent) for m in (pipeline, stages))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """dfer's own warnings as one line (``dfer: warning: ...``); other libraries' as Python shows them."""
    if str(filename).startswith(_OWN_CODE):
        print(f"dfer: warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        check_paths(args)  # every path option of the wrong kind, before the command runs
        return args.handler(args)
    except DferError as exc:
        print(f"dfer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk filled up outside a clip's artifact (manifest, fingerprints, report)
        if not is_disk_full(exc):
            raise
        print(f"dfer: error: stopped: the disk is full: {exc}; free space and run the same command again: what is "
              "finished stays in the cache", file=sys.stderr)
        return DiskFullError.exit_code
    except KeyboardInterrupt:
        print("dfer: interrupted; finished artifacts and checkpoints are kept: run the same command again to go on",
              file=sys.stderr)
        return EXIT_INTERRUPTED
