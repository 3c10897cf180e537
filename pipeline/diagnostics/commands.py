"""``dfer probe``, ``dfer conflict`` and ``dfer socialfusion train`` as library functions.

Each takes its options as one pydantic model (the CLI builds it from the command line; a script builds it
directly) and the pipeline config that the stages run under. INPUT is what ``dfer run`` takes (folder, CSV
list, one video) or an existing run directory (its clips). Features come from the ``features`` stage, run
through the runner once per encoder (:func:`pipeline.diagnostics.features.extract`: cached, failures listed,
local processes or Ray); an encoder that is not a vision model, a layer out of range or a task column with
one value stops the command before any clip is processed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import DiagnosticsError
from pipeline.diagnostics.features import FeatureConfig, clips_of, extract
from pipeline.diagnostics.probe import TaskError, check_tasks, match_tasks, read_task_table, run_probes, write_probe_report
from pipeline.eval.labels import load_label_set
from pipeline.models.devices import resolve_device
from pipeline.models.socialfusion import LoraSettings, SocialFusionModel, check_lm
from pipeline.models.vision import check_encoder, parse_layers, resolve_layers
from pipeline.training.tracking import check_trackers

FRAMES = Literal["keyframes", "all"]


class ClipOptions(BaseModel):
    """What every diagnostics command reads: clips, task labels, features. The field docstrings are the
    command-line help (:func:`pipeline.cli.options.model_options`)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    input: str
    """folder of clips, CSV list (path[,label]), one video, or a run directory"""
    out: str
    """output folder (probe: probe.json/probe.md; conflict: conflict.* and training.json; socialfusion train: the
    model, its training reports in OUT/training)"""
    labels: str | None = None
    """task table: a 'video' column and one column per task (default: the input CSV's 'label' column, as task
    'label')"""
    tasks: str | None = None
    """columns of --labels to use, comma separated (default: all)"""
    label_set: str | None = None
    """canonicalise the first task's values with this label set (dfew, ferv39k, mafw or a YAML file) and use its
    label order"""
    pooling: Literal["mean", "cls"] = "mean"
    """token pooling per image"""
    frames: FRAMES = "keyframes"
    """which frames of each clip"""
    max_frames: int = Field(16, ge=1)
    """with --frames all: at most this many, evenly spaced"""
    image_size: int = Field(224, ge=8)
    """face crop side handed to the image processor"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """encoder dtype"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1"""
    batch_size: int = Field(32, ge=1)
    """images per encoder forward pass"""
    val_fraction: float = Field(0.3, ge=0, lt=1)
    """share of videos held out (split by video)"""
    seed: int = 0
    """seed of the split, the sampler and the initialisation"""
    n_boot: int = Field(1000, ge=0)
    """bootstrap resamples for the CIs"""
    cache: str | None = None
    """cache directory (default: $DFER_CACHE, ~/.cache/dfer, or the cache of a run directory given as INPUT)"""
    force: bool = False
    """recompute the features even if cached"""
    quiet: bool = False
    """no progress bars"""

    def task_list(self) -> list[str] | None:
        return [t.strip() for t in self.tasks.split(",") if t.strip()] if self.tasks else None


class ProbeOptions(ClipOptions):
    encoder: list[str] = Field(min_length=1)
    """vision encoder to probe, MODEL[@REV] (repeatable): a VLM (its vision tower), CLIP/SigLIP, a vision model"""
    layers: str = "-1"
    """hidden-state indices, e.g. -1 or 4,8,-1 or all (0 = patch embedding)"""
    C: float = Field(1.0, gt=0)
    """inverse L2 strength of the logistic regression"""


class TrainOptions(ClipOptions):
    encoder: str
    """frozen vision encoder, MODEL[@REV] (VLM, CLIP/SigLIP, vision model)"""
    layer: int = -1
    """encoder hidden-state index feeding the connector"""
    lm: str
    """causal language model, MODEL[@REV] (hub id or folder)"""
    lora: bool = False
    """train LoRA adapters on the LM (peft)"""
    lora_r: int = Field(8, ge=1)
    """LoRA rank"""
    lora_alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator"""
    lora_targets: str | None = None
    """LM modules to adapt, comma separated (default: peft's for the architecture)"""
    tokens_per_frame: int = Field(1, ge=1)
    """LM input embeddings per frame"""
    connector_hidden: int = Field(256, ge=1)
    """width of the connector's hidden layer"""
    default_task: str | None = None
    """task the classify backend scores (default: the first task)"""
    steps: int = Field(200, ge=1)
    """optimizer steps"""
    train_batch: int = Field(8, ge=1)
    """clips per task per step"""
    lr: float = Field(1e-3, gt=0)
    """learning rate (AdamW)"""
    sampler: Literal["instance", "sqrt", "balanced", "progressive"] = "balanced"
    """per-task sampler of pipeline/eval/longtail.py"""
    conflict_every: int = Field(1, ge=0)
    """record per-task gradients every N steps (0: never)"""
    save_every: int = Field(0, ge=0)
    """write a resumable checkpoint every N steps (0: none); the same command resumes from it"""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """log the training to an experiment tracker (repeatable): tensorboard, wandb, mlflow (OUT/training/tracking;
    conflict: OUT/tracking)"""


def split_rev(text: str) -> tuple[str, str | None]:
    """``MODEL@REV`` -> (model, revision); a local path that contains ``@`` is kept whole."""
    if "@" in text and not Path(text).expanduser().exists():
        model, rev = text.rsplit("@", 1)
        return model, rev or None
    return text, None


def _slug(encoder: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_") or "encoder"


def _labelled_clips(opts: ClipOptions):
    """``(clips, run cache, tasks, order)``: the clips of ``opts.input`` with a label for some task, the cache of a
    run directory given as input, ``{task: {video: label}}`` matched to the clips, and the label order of tasks."""
    table = read_task_table(opts.labels, opts.task_list()) if opts.labels else None
    clips, run_cache = clips_of(opts.input)
    if table is None:
        labelled = {c.id: c.label for c in clips if c.label}
        if not labelled:
            raise TaskError("no labels: the input has no 'label' column; pass --labels CSV with a 'video' column and "
                            "one column per task")
        tasks = {"label": labelled}
        check_tasks(tasks, where="the input's 'label' column")
    else:
        tasks = match_tasks(table, [c.id for c in clips])
    order = {}
    if opts.label_set:
        ls = load_label_set(opts.label_set)
        first = next(iter(tasks))
        tasks[first] = {v: ls.canonical(lab, f"task '{first}', clip {v}") for v, lab in tasks[first].items()}
        order[first] = ls.names
    wanted = {v for t in tasks.values() for v in t}
    return [c for c in clips if c.id in wanted], run_cache, tasks, order


def _extract(opts: ClipOptions, clips, run_cache, encoder: str, layers: list[int], cfg, run_dir: Path, log, executor):
    """The ``features`` stage over ``clips`` for one encoder (failures printed); returns the features and the ids of
    the clips that have them."""
    model, rev = split_rev(encoder)
    fcfg = FeatureConfig(encoder=model, revision=rev, layers=layers, pooling=opts.pooling, frames=opts.frames,
                         max_frames=opts.max_frames, image_size=opts.image_size, dtype=opts.dtype, device=opts.device,
                         batch_size=opts.batch_size)
    res = extract(clips, fcfg, cfg, run_dir, cache_dir=opts.cache or run_cache, force=opts.force, quiet=opts.quiet,
                  log=log, executor=executor)
    for vid, msg in res.failed.items():
        print(f"features: {vid}: {msg}", file=log)
    return res, [c.id for c in clips if c.id in res.keys]


def probe(opts: ProbeOptions, cfg, log: TextIO | None = None, executor=None) -> tuple[list, int]:
    """Linear probes per encoder and layer; writes ``probe.json``/``probe.md`` into ``opts.out`` and, per encoder,
    the run directory of its features (``out/runs/<encoder>``). Returns the probe results and the number of clips
    whose features failed."""
    log = log or sys.stderr
    if not 0 < opts.val_fraction < 1:
        raise DiagnosticsError(f"--val-fraction must be in (0, 1) for a probe, got {opts.val_fraction}")
    out = Path(opts.out)
    # cheap checks first: encoders, layers, task columns (nothing is loaded, run or extracted yet)
    layer_sets = {}
    for enc in opts.encoder:
        model, rev = split_rev(enc)
        info = check_encoder(model, rev)
        layer_sets[enc] = resolve_layers(parse_layers(opts.layers, info), info)
    use, run_cache, tasks, order = _labelled_clips(opts)
    feats, info_rows, failed = {}, [], set()
    for i, enc in enumerate(opts.encoder):
        run_dir = out / "runs" / f"{i}-{_slug(enc)}"
        res, ok = _extract(opts, use, run_cache, enc, layer_sets[enc], cfg, run_dir, log, executor)
        failed.update(res.failed)
        feats[enc] = {layer: dict(zip(ok, res.clip_level(layer, ok))) for layer in res.layers}
        info_rows.append({"encoder": enc, "identity": res.identity, "layers": res.layers, "run": str(run_dir),
                          "cached": res.report.cached if res.report else 0,
                          "computed": res.report.computed if res.report else 0, "failed": res.failed})
    results = run_probes(feats, tasks, val_fraction=opts.val_fraction, seed=opts.seed, C=opts.C, n_boot=opts.n_boot,
                         label_order=order)
    jp, mp = write_probe_report(results, out, {"encoders": info_rows, "pooling": opts.pooling, "frames": opts.frames,
                                               "image_size": opts.image_size})
    print(f"wrote {jp} and {mp}", file=log)
    return results, len(failed)


def train(opts: TrainOptions, cfg, save: bool, log: TextIO | None = None, executor=None):
    """Train the frozen-encoder + connector + LM model on the task columns; with ``save`` write it to
    ``opts.out`` (training reports in ``out/training``), else only the reports (``dfer conflict``).
    Checkpoints go to the report folder (``--save-every``); the same command resumes from them.
    Returns the training report and the number of clips whose features failed."""
    # start-up time: torch (the cli imports this module for every command)
    from pipeline.diagnostics.socialfusion import FeatureClip, TrainSettings, write_training_report
    from pipeline.diagnostics.socialfusion import train as train_model

    log = log or sys.stderr
    check_trackers(opts.report_to, "--report-to")
    out = Path(opts.out)
    enc_model, enc_rev = split_rev(opts.encoder)
    lm_model, lm_rev = split_rev(opts.lm)
    info = check_encoder(enc_model, enc_rev)
    layer = resolve_layers([opts.layer], info)[0]
    check_lm(lm_model, lm_rev)
    use, run_cache, tasks, order = _labelled_clips(opts)
    settings = TrainSettings(steps=opts.steps, batch_size=opts.train_batch, lr=opts.lr, sampler=opts.sampler,
                             conflict_every=opts.conflict_every, val_fraction=opts.val_fraction, seed=opts.seed,
                             n_boot=opts.n_boot, length_norm=cfg.classify.length_norm, save_every=opts.save_every,
                             report_to=opts.report_to)
    report_dir = out / "training" if save else out
    res, ok = _extract(opts, use, run_cache, opts.encoder, [layer], cfg, report_dir / "run", log, executor)
    frames = res.frame_level(layer, ok)
    examples = [FeatureClip(v, f, {t: tasks[t][v] for t in tasks if v in tasks[t]}) for v, f in zip(ok, frames) if len(f)]
    if not examples:
        raise DiagnosticsError("no clip has features to train on (see the failures above)")
    labels = {t: list(order.get(t) or sorted(set(values.values()))) for t, values in tasks.items()}
    lora = None
    if opts.lora:
        targets = [t.strip() for t in opts.lora_targets.split(",")] if opts.lora_targets else None
        lora = LoraSettings(r=opts.lora_r, alpha=opts.lora_alpha, target_modules=targets)
    model = SocialFusionModel.create(
        encoder=enc_model, encoder_revision=enc_rev, feature_dim=int(frames[0].shape[1]), lm=lm_model,
        lm_revision=lm_rev, tasks=labels, layer=layer, pooling=opts.pooling, image_size=opts.image_size,
        frames=opts.frames, max_frames=opts.max_frames, tokens_per_frame=opts.tokens_per_frame,
        connector_hidden=opts.connector_hidden, lora=lora, default_task=opts.default_task, seed=opts.seed,
        device=resolve_device(opts.device))
    report = train_model(model, examples, settings, log_to=log, out_dir=report_dir, run_name=out.resolve().name)
    paths = write_training_report(report, report_dir)
    if save:
        model.save(out)
        print(f"saved the model to {out} (use it with --set classify.model.backend=socialfusion "
              f"--set classify.model.model={out} --set classify.image_size={opts.image_size})", file=log)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=log)
    return report, len(res.failed)
