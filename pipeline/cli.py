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
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars (for logs)")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config, defaults included")
    _add_config_args(show)

    insp = sub.add_parser("inspect", help="draw one clip's keyframes, face boxes and motion curve as a PNG")
    insp.add_argument("run_dir", metavar="RUN")
    insp.add_argument("video", metavar="VIDEO", help="video id as listed in RUN/manifest.jsonl (or a unique part of it)")
    insp.add_argument("-o", "--output", metavar="PNG", help="where to write (default: RUN/inspect/<video>.png)")
    return parser


def _cmd_run(args) -> int:
    from pipeline.config import load_config
    from pipeline.runner import StrictFailure, run_pipeline

    cfg = load_config(args.config, args.overrides)
    if args.quiet:
        cfg.run.progress = False
        _quiet_libraries()
    try:
        result = run_pipeline(
            args.input, args.out, cfg, cache_dir=args.cache, until=args.until, force=args.force,
            shard=args.shard, strict=args.strict, quiet=args.quiet,
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


def _quiet_libraries() -> None:
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
    from pipeline.inputs import InputError
    from pipeline.labels import LabelError
    from pipeline.modelstage import PreflightError
    from pipeline.prompts import TemplateError
    from pipeline.runner import UnknownStageError

    args = build_parser().parse_args(argv)
    handlers = {"run": _cmd_run, "config": _cmd_config, "inspect": _cmd_inspect}
    try:
        return handlers[args.command](args)
    except (
        ConfigError, InputError, UnknownStageError, CacheError, PreflightError, TemplateError, LabelError,
        FileNotFoundError, LookupError,
    ) as exc:
        print(f"dfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dfer: interrupted; finished artifacts are kept in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
