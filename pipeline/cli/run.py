"""``dfer run``, ``dfer config show``, ``dfer inspect`` and ``dfer export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.cli.options import INPUT, OUT_DIR, OUT_FILE, RUN_DIR, config_options, execution_options, load_config, quiet_option
from pipeline.core.errors import EXIT_FAILED_CLIPS, EXIT_NOTHING_SCORED, EXIT_OK, EXIT_STOPPED, ConfigError, ExportError
from pipeline.core.paths import shown
from pipeline.engine.config import dump_config
from pipeline.engine.rundir import FAILURES, PREDICTIONS, RunDir
from pipeline.engine.runner import executor_for, run_pipeline
from pipeline.tools.clip_figure import inspect_clip
from pipeline.tools.export import export_frames
from pipeline.tools.export_dataset import DATASET_INFO, FORMATS, export_dataset
from stages import STAGE_ORDER
from stages.faces.segments import parse_segments


def add_parsers(sub) -> None:
    run = sub.add_parser("run", parents=[config_options(), quiet_option(), execution_options()],
                         help="run the pipeline over a folder, a CSV list or one video")
    run.add_argument("input", action=INPUT, help="folder of clips (recursive), CSV list file (path[,label]) or one video file")
    run.add_argument("--out", required=True, metavar="RUN", action=OUT_DIR, help="run directory to write")
    run.add_argument("--until", choices=STAGE_ORDER, help="stop after this stage")
    run.add_argument("--force", choices=STAGE_ORDER, help="recompute this stage and everything downstream")
    run.add_argument("--segments", metavar="LENGTH[:STRIDE]|shots",
                     help="timelines: score each segment of each clip (4s, 4s:2s, shots) instead of the whole clip, into "
                          "RUN/timeline.csv and RUN/timeline_summary.csv (sets faces.segments; docs/timelines.md)")
    run.add_argument("--shard", metavar="i/N", help="process only shard i of N (deterministic by video id)")
    run.add_argument("--strict", action="store_true",
                     help="stop at the first failure (exit 3), and before a model stage whose model cannot be had here "
                          "instead of falling back to the embedded model")
    run.add_argument("--report", action="store_true",
                     help="then write the report of the run as `dfer report RUN` does (metrics.json, report.md, plots)")
    run.add_argument("--rehash", action="store_true",
                     help="read every video to fingerprint it, ignoring the fingerprints remembered in the cache "
                          "(for files changed without a change of size or modification time)")
    run.add_argument("--retry-failed", action="store_true",
                     help="try again the clips that failed in an earlier run with the same file and settings (no face "
                          "found, not a video, cannot be decoded); otherwise the cache remembers those failures")
    run.set_defaults(handler=_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", parents=[config_options()], help="print the resolved config, defaults included")
    show.set_defaults(handler=_config_show)

    insp = sub.add_parser("inspect", help="draw one clip's keyframes, face boxes and motion curve as a PNG")
    insp.add_argument("run_dir", metavar="RUN", action=RUN_DIR)
    insp.add_argument("video", metavar="VIDEO",
                      help="the clip: its id or its path as RUN/manifest.jsonl lists them (the path as the input or "
                           "the list file gave it), the same file by another path, or a unique part of its id")
    insp.add_argument("-o", "--output", metavar="PNG", action=OUT_FILE, help="where to write (default: RUN/inspect/<video>.png)")
    insp.set_defaults(handler=_inspect)

    exp = sub.add_parser("export", help="write a run's per-frame data as a table (--frames), or its classify prompts "
                                        "and true labels as a fine-tuning dataset (--format llamafactory|sharegpt)")
    exp.add_argument("run_dir", metavar="RUN", action=RUN_DIR)
    what = exp.add_mutually_exclusive_group(required=True)
    what.add_argument("--frames", action="store_true",
                      help="one row per face per frame: box, landmarks, flags, shot, subject, expression probabilities")
    what.add_argument("--format", choices=sorted(FORMATS),
                      help="the labelled clips' prompts (keyframes as images, with the summaries) and true labels, "
                           "with the images and LLaMA-Factory's dataset_info.json (llamafactory: role/content "
                           "messages; sharegpt: from/value conversations)")
    exp.add_argument("-o", "--output", metavar="PATH",  # a file or a folder: checked by the export it goes to
                     help="--frames: a .csv or .parquet file (default: RUN/frames.csv); --format: a new or empty folder, "
                          "or one an earlier dfer export wrote (default: RUN/<format>)")
    exp.add_argument("--name", help="--format: the dataset's name in dataset_info.json and its file's (default: "
                                    "dfer_ and the run folder's name)")
    exp.set_defaults(handler=_export)


def _run(args) -> int:
    if args.segments is not None:  # after --set: the flag wins; quoted so that YAML reads it as text
        try:
            parse_segments(args.segments)
        except ValueError as exc:
            raise ConfigError(f"--segments {args.segments}: {exc}") from None
        args.overrides.append(f"faces.segments={json.dumps(args.segments)}")
    cfg = load_config(args)
    executor = executor_for(args.executor, cfg.run, args.ray_address)
    result = run_pipeline(
        args.input, args.out, cfg, cache_dir=args.cache, until=args.until, force=args.force,
        shard=args.shard, strict=args.strict, quiet=args.quiet, executor=executor, rehash=args.rehash,
        retry_failed=args.retry_failed, allow_overlap=args.allow_overlap,
        protect=(args.config,),
    )
    run_dir = RunDir(result.run_dir)
    nothing = " and none scored: the run is not complete" if result.status == "failed" else ""
    print(f"{result.n_clips} clips, {result.n_failed} failed{nothing}; run directory: {shown(run_dir.path)}", file=sys.stderr)
    if result.n_failed:
        print(f"failures are listed in {shown(run_dir / FAILURES)}", file=sys.stderr)
    if result.status == "failed":
        print(f"dfer: {result.stop_message}", file=sys.stderr)
        if args.report:
            print("dfer: no report: no clip was scored", file=sys.stderr)
        return EXIT_NOTHING_SCORED
    if result.status == "stopped":
        print(f"dfer: stopped before a model stage: {result.stop_message}", file=sys.stderr)
        if args.strict:
            return EXIT_STOPPED
    if args.report:
        _report(result)
    return EXIT_FAILED_CLIPS if result.n_failed else EXIT_OK


def _report(result) -> None:
    """``dfer run --report``: the report of a run that scored clips (what ``dfer report RUN`` writes and prints)."""
    from pipeline.report import summary, write_report  # start-up time: matplotlib, only with --report

    if not (RunDir(result.run_dir) / PREDICTIONS).is_file():
        print("dfer: no report: the run did not reach classify, so there are no scores to report", file=sys.stderr)
        return
    print(summary(write_report(result.run_dir), result.run_dir))


def _config_show(args) -> int:
    sys.stdout.write(dump_config(load_config(args)))
    return EXIT_OK


def _export(args) -> int:
    if args.format:
        return _export_dataset(args)
    if args.name is not None:
        raise ExportError("--name names a dataset: use it with --format")
    out, rows, clips, notes = export_frames(args.run_dir, args.output)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{rows} rows of {clips} clips -> {out}")
    return EXIT_OK


def _export_dataset(args) -> int:
    done = export_dataset(args.run_dir, args.format, args.output, args.name)
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    if done.unlabelled:
        print(f"{done.unlabelled} clip(s) without a true label left out", file=sys.stderr)
    if done.other_people:
        print(f"{done.other_people} other person(s) of clips split by person left out (a clip's label names its "
              "subject)", file=sys.stderr)
    labels = ", ".join(f"{lab} {n}" for lab, n in done.per_label.items())
    print(f"{done.samples} samples ({labels or 'none'}), {done.images} images -> {shown(done.folder)} "
          f"(dataset {done.name!r} in {shown(done.folder / DATASET_INFO)})")
    return EXIT_OK


def _inspect(args) -> int:
    print(shown(inspect_clip(args.run_dir, args.video, Path(args.output) if args.output else None)))
    return EXIT_OK
