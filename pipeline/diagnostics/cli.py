"""``dfer probe``, ``dfer conflict`` and ``dfer socialfusion train``: argument parsing and exit codes only.

Wire into ``pipeline/cli.py`` with ``add_parser(sub)`` in ``build_parser`` and ``run`` as the handler of every
name in :data:`COMMANDS`. ``run`` handles its own usage errors (message on stderr, exit code 2).

INPUT is what ``dfer run`` takes (folder, CSV list, one video) or an existing run directory (its
``manifest.jsonl`` and cache are reused). The faces (and keyframes) stages run first, cached as usual, into
``OUT/pipeline``; an encoder that is not a vision model, a layer out of range or a task column with one value
stops the command before any of that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("probe", "conflict", "socialfusion")
EXIT_OK, EXIT_FAILED_CLIPS, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--config", metavar="FILE", help="pipeline YAML config (faces/keyframes sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--force", action="store_true", help="recompute the features even if cached")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _train_args(p: argparse.ArgumentParser) -> None:
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


def add_parser(subparsers) -> None:
    """Add ``probe``, ``conflict`` and ``socialfusion`` to ``dfer``'s subparsers."""
    probe = subparsers.add_parser("probe", help="linear probes on frozen visual features (per encoder and layer)")
    _common(probe)
    probe.add_argument("--encoder", action="append", required=True, metavar="MODEL[@REV]",
                       help="vision encoder to probe (repeatable): a VLM (its vision tower), CLIP/SigLIP, a vision model")
    probe.add_argument("--layers", default="-1", help="hidden-state indices, e.g. -1 or 4,8,-1 or all (0 = patch embedding)")
    probe.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    probe.add_argument("--out", required=True, metavar="DIR", help="where probe.json / probe.md go")

    conflict = subparsers.add_parser("conflict", help="train the frozen-encoder + connector + LM model on several tasks "
                                     "and report gradient conflict between them (no model saved)")
    _common(conflict)
    _train_args(conflict)
    conflict.add_argument("--out", required=True, metavar="DIR", help="where conflict.* and training.json go")

    sf = subparsers.add_parser("socialfusion", help="frozen encoder + connector + LM baseline (SocialFusion)")
    sf_sub = sf.add_subparsers(dest="sf_command", required=True)
    tr = sf_sub.add_parser("train", help="train and save a model usable as classify.model.backend=socialfusion")
    _common(tr)
    _train_args(tr)
    tr.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder (training reports in MODEL_DIR/training)")


# ------------------------------------------------------------------------------------------------ helpers


def _split_rev(text: str) -> tuple[str, str | None]:
    if "@" in text and not Path(text).expanduser().exists():
        model, rev = text.rsplit("@", 1)
        return model, rev or None
    return text, None


def _feature_config(args, encoder: str, layers: list[int]):
    from pipeline.diagnostics.features import FeatureConfig

    model, rev = _split_rev(encoder)
    return FeatureConfig(encoder=model, revision=rev, layers=layers, pooling=args.pooling, frames=args.frames,
                         max_frames=args.max_frames, image_size=args.image_size, dtype=args.dtype, device=args.device,
                         batch_size=args.batch_size)


def _task_list(args) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None


def _upstream(args, out: Path):
    """Clips with their faces/keyframes artifacts (running those stages, cached) and the cache."""
    from pipeline.config import load_config
    from pipeline.diagnostics.features import clips_from_run
    from pipeline.runner import run_pipeline

    src = Path(args.input).expanduser()
    if src.is_dir() and (src / "manifest.jsonl").is_file():
        return clips_from_run(src)
    cfg = load_config(args.config, args.overrides)
    if args.quiet:
        cfg.run.progress = False
    until = "keyframes" if args.frames == "keyframes" else "faces"
    result = run_pipeline(src, out / "pipeline", cfg, cache_dir=args.cache, until=until, quiet=args.quiet)
    if result.n_failed:
        print(f"{result.n_failed} clip(s) failed in the pipeline; see {result.run_dir / 'failures.jsonl'}", file=sys.stderr)
    return clips_from_run(out / "pipeline")


def _tasks_for(args, clips, table):
    """``{task: {video: label}}`` matched to the clips, and the label order of each task."""
    from pipeline.diagnostics.probe import TaskError, check_tasks, match_tasks

    if table is None:
        labelled = {c.video: c.label for c in clips if c.label}
        if not labelled:
            raise TaskError("no labels: the input has no 'label' column; pass --labels CSV with a 'video' column and "
                            "one column per task")
        tasks = {"label": labelled}
        check_tasks(tasks, where="the input's 'label' column")
    else:
        tasks = match_tasks(table, [c.video for c in clips])
    order = {}
    if args.label_set:
        from pipeline.labels import load_label_set

        ls = load_label_set(args.label_set)
        first = next(iter(tasks))
        tasks[first] = {v: ls.canonical(lab, f"task '{first}', clip {v}") for v, lab in tasks[first].items()}
        order[first] = ls.names
    return tasks, order


def _read_table(args):
    from pipeline.diagnostics.probe import read_task_table

    return read_task_table(args.labels, _task_list(args)) if args.labels else None


# ------------------------------------------------------------------------------------------------ commands


def _cmd_probe(args) -> int:
    from pipeline.diagnostics.features import (
        DiagnosticsError, check_encoder, clip_level, extract_features, parse_layers, resolve_layers,
    )
    from pipeline.diagnostics.probe import probe_table, run_probes, write_probe_report

    if not 0 < args.val_fraction < 1:
        raise DiagnosticsError(f"--val-fraction must be in (0, 1) for a probe, got {args.val_fraction}")
    out = Path(args.out)
    # cheap checks first: encoders, layers, task columns (nothing is loaded, run or extracted yet)
    layer_sets = {}
    for enc in args.encoder:
        model, rev = _split_rev(enc)
        info = check_encoder(model, rev)
        layer_sets[enc] = resolve_layers(parse_layers(args.layers, info), info)
    table = _read_table(args)
    clips, cache = _upstream(args, out)
    tasks, order = _tasks_for(args, clips, table)
    wanted = sorted({v for t in tasks.values() for v in t})
    use = [c for c in clips if c.video in wanted]
    feats, info_rows, failed = {}, [], 0
    for enc in args.encoder:
        res = extract_features(use, _feature_config(args, enc, layer_sets[enc]), cache, force=args.force, log=sys.stderr)
        failed += len(res.failed)
        for vid, msg in res.failed.items():
            print(f"features: {vid}: {msg}", file=sys.stderr)
        ok = [c.video for c in use if c.video in res.keys]
        feats[enc] = {layer: dict(zip(ok, clip_level(cache, res, layer, ok))) for layer in res.layers}
        info_rows.append({"encoder": enc, "identity": res.identity, "layers": res.layers, "cached": res.cached,
                          "computed": res.computed, "failed": res.failed})
    results = run_probes(feats, tasks, val_fraction=args.val_fraction, seed=args.seed, C=args.C, n_boot=args.n_boot,
                         label_order=order)
    jp, mp = write_probe_report(results, out, {"encoders": info_rows, "pooling": args.pooling, "frames": args.frames,
                                               "image_size": args.image_size})
    print(probe_table(results))
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return EXIT_FAILED_CLIPS if failed else EXIT_OK


def _cmd_train(args, save: bool) -> int:
    from pipeline.diagnostics.features import check_encoder, extract_features, frame_level, resolve_layers
    from pipeline.diagnostics.socialfusion import (
        Example, LoraSettings, SocialFusionModel, TrainSettings, check_lm, train, write_training_report,
    )

    out = Path(args.out)
    enc_model, enc_rev = _split_rev(args.encoder)
    lm_model, lm_rev = _split_rev(args.lm)
    info = check_encoder(enc_model, enc_rev)
    layer = resolve_layers([args.layer], info)[0]
    check_lm(lm_model, lm_rev)
    table = _read_table(args)
    from pipeline.config import load_config

    settings = TrainSettings(steps=args.steps, batch_size=args.train_batch, lr=args.lr, sampler=args.sampler,
                             conflict_every=args.conflict_every, val_fraction=args.val_fraction, seed=args.seed,
                             n_boot=args.n_boot, length_norm=load_config(args.config, args.overrides).classify.length_norm)
    clips, cache = _upstream(args, out / "training" if save else out)
    tasks, order = _tasks_for(args, clips, table)
    wanted = sorted({v for t in tasks.values() for v in t})
    use = [c for c in clips if c.video in wanted]
    res = extract_features(use, _feature_config(args, args.encoder, [layer]), cache, force=args.force, log=sys.stderr)
    ok = [c.video for c in use if c.video in res.keys]
    frames = frame_level(cache, res, layer, ok)
    examples = [Example(v, f, {t: tasks[t][v] for t in tasks if v in tasks[t]}) for v, f in zip(ok, frames) if len(f)]
    labels = {t: list(order.get(t) or sorted(set(values.values()))) for t, values in tasks.items()}
    lora = None
    if args.lora:
        targets = [t.strip() for t in args.lora_targets.split(",")] if args.lora_targets else None
        lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, target_modules=targets)
    model = SocialFusionModel.create(
        encoder=enc_model, encoder_revision=enc_rev, feature_dim=int(frames[0].shape[1]), lm=lm_model,
        lm_revision=lm_rev, tasks=labels, layer=layer, pooling=args.pooling, image_size=args.image_size,
        frames=args.frames, max_frames=args.max_frames, tokens_per_frame=args.tokens_per_frame,
        connector_hidden=args.connector_hidden, lora=lora, default_task=args.default_task, seed=args.seed,
        device=_train_device(args.device),
    )
    report = train(model, examples, settings, log_to=sys.stderr)
    report_dir = out / "training" if save else out
    paths = write_training_report(report, report_dir)
    if save:
        model.save(out)
        print(f"saved the model to {out} (use it with --set classify.model.backend=socialfusion "
              f"--set classify.model.model={out} --set classify.image_size={args.image_size})", file=sys.stderr)
    for t, m in report.validation.items():
        print(f"validation {t}: UAR {100 * m['uar']:.1f}  WAR {100 * m['war']:.1f}  ({m['n']} clips)")
    if report.conflict.rows:
        print(report.conflict.markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return EXIT_FAILED_CLIPS if res.failed else EXIT_OK


def _train_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    """Handler for every command in :data:`COMMANDS`; usage/input errors print one line and return 2."""
    from pipeline.config import ConfigError
    from pipeline.diagnostics.features import DiagnosticsError
    from pipeline.inputs import InputError
    from pipeline.labels import LabelError
    from pydantic import ValidationError

    from pipeline.runner import StrictFailure

    if getattr(args, "quiet", False):
        from pipeline.cli import quiet_libraries

        quiet_libraries()
    try:
        if args.command == "probe":
            return _cmd_probe(args)
        if args.command == "conflict":
            return _cmd_train(args, save=False)
        if args.command == "socialfusion" and args.sf_command == "train":
            return _cmd_train(args, save=True)
        raise DiagnosticsError(f"unknown command {args.command!r}")
    except (DiagnosticsError, ConfigError, InputError, LabelError, StrictFailure, ValidationError) as exc:
        print(f"dfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pipeline.diagnostics.cli probe ...``) until ``dfer`` wires it in."""
    parser = argparse.ArgumentParser(prog="dfer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
