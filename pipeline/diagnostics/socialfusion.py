"""Training the SocialFusion model (:mod:`pipeline.models.socialfusion`) on several tasks, with gradient conflict.

Multi-task training (:func:`train`)
    Tasks are label columns (emotion, valence, a second data set's labels...). Each step draws one batch per task
    with that task's sampler from :mod:`pipeline.eval.longtail` (``instance``/``sqrt``/``balanced``/``progressive``,
    epochs counted per task), sums the weighted task losses, and every ``conflict_every`` steps records the
    per-task gradients on the shared trainable parameters (:mod:`pipeline.diagnostics.conflict`). The model
    reads cached per-frame features (the ``features`` stage), so training never runs the encoder.

The training toolkit (:mod:`pipeline.training`) provides the split (by video, stratified by the first task a clip
has a label for), the LoRA adapters of the LM (when the model's config asks for them), AdamW, the learning-rate
schedule (``transformers.get_scheduler``) and the checkpoints: with ``out_dir`` and ``save_every``, a resumable
checkpoint is written every ``save_every`` steps, and calling :func:`train` again with the same ``out_dir`` and
the same model, settings and clips resumes from the last one and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence, TextIO

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from pipeline.core.files import json_text, write_atomic
from pipeline.core.errors import SocialFusionError
from pipeline.diagnostics.conflict import ConflictLog, task_gradients
from pipeline.diagnostics.probe import TaskError
from pipeline.eval.longtail import make_sampler
from pipeline.eval.metrics import compute_metrics
from pipeline.models.socialfusion import SocialFusionModel
from pipeline.training import checkpoint as ckpt
from pipeline.training.lora import add_lora
from pipeline.training.optim import make_optimizer, make_scheduler
from pipeline.training.split import stratified_split
from pipeline.training.tracking import Tracking


@dataclass
class FeatureClip:
    """One clip: its per-frame features of the model's layer and its labels (tasks it has no label for are absent)."""

    video: str
    feats: np.ndarray
    labels: dict[str, str]


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    """Clips per task per step."""
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    sampler: Literal["instance", "sqrt", "balanced", "progressive"] = "balanced"
    task_weights: dict[str, float] | None = None
    conflict_every: int = Field(1, ge=0)
    """Record per-task gradients every N steps (0: never)."""
    val_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    n_boot: int = Field(1000, ge=0)
    length_norm: Literal["sum", "mean"] = "sum"
    """How validation ranks labels (:mod:`pipeline.eval.ranking`; ``classify.length_norm`` of the pipeline config)."""
    save_every: int = Field(0, ge=0)
    """With ``out_dir``: write a resumable checkpoint every N steps (0: none)."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """With ``out_dir``: experiment trackers (:mod:`pipeline.training.tracking`, in ``out_dir/tracking``) that get the
    settings, each step's losses and the validation metrics."""


@dataclass
class TrainReport:
    losses: list[dict] = field(default_factory=list)  # {"step", "total", <task>: loss}
    conflict: ConflictLog = field(default_factory=ConflictLog)
    validation: dict = field(default_factory=dict)  # task -> compute_metrics
    train_videos: list[str] = field(default_factory=list)
    val_videos: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None

    def to_json(self) -> dict:
        return {"losses": self.losses, "validation": self.validation, "train_videos": self.train_videos,
                "val_videos": self.val_videos, "seconds": round(self.seconds, 2),
                "conflict": self.conflict.summary()}


def _task_batches(labels: list[str], strategy: str, batch: int, steps: int, seed: int):
    """Endless batches of indices into ``labels`` drawn with a :mod:`pipeline.eval.longtail` sampler; an epoch is
    ceil(n / batch) batches, the sampler is rebuilt (and re-seeded) every epoch, progressive moves to balanced
    over ``ceil(steps / epoch length)`` epochs."""
    per_epoch = max(1, math.ceil(len(labels) / batch))
    epochs = max(2, math.ceil(steps / per_epoch))
    epoch = 0
    while True:
        sampler = make_sampler(labels, strategy, num_samples=per_epoch * batch, epoch=min(epoch, epochs - 1),
                               total_epochs=epochs, seed=seed)
        idx = list(sampler)
        for k in range(per_epoch):
            yield idx[k * batch:(k + 1) * batch]
        epoch += 1


def split_examples(examples: Sequence[FeatureClip], tasks: Sequence[str], val_fraction: float, seed: int
                   ) -> tuple[list[FeatureClip], list[FeatureClip]]:
    """Train/validation by video (:func:`pipeline.training.split.stratified_split`), stratified by the first task
    (in ``tasks`` order) each clip has a label for."""
    keys = []
    for ex in examples:
        t = next(t for t in tasks if t in ex.labels)
        keys.append(f"{t}={ex.labels[t]}")
    tr, va = stratified_split([ex.video for ex in examples], keys, val_fraction, seed)
    return [examples[i] for i in tr], [examples[i] for i in va]


def _attach_lora(model: SocialFusionModel) -> None:
    from peft import PeftModel  # optional dependency: peft (the 'train' extra)

    lora = model.cfg.lora
    if lora is not None and not isinstance(model.lm, PeftModel):
        model.lm = add_lora(model.lm, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=lora.target_modules,
                            task_type="CAUSAL_LM", setting="LoRA target_modules")


def _named_trainable(model: SocialFusionModel) -> dict:
    out = {f"connector.{n}": p for n, p in model.connector.named_parameters() if p.requires_grad}
    out.update({f"lm.{n}": p for n, p in model.lm.named_parameters() if p.requires_grad})
    return out


def _setup(model: SocialFusionModel, settings: TrainSettings, examples: Sequence[FeatureClip]) -> str:
    """What the trained weights depend on; a checkpoint of another setup is not resumed."""
    cfg = model.cfg.model_dump(mode="json", exclude={"training"})
    clips = [[e.video, sorted(e.labels.items()), hashlib.sha256(np.ascontiguousarray(e.feats).tobytes()).hexdigest()]
             for e in examples]
    doc = {"model": cfg, "settings": settings.model_dump(mode="json", exclude={"save_every", "report_to"}), "clips": clips}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _save(session: ckpt.CheckpointSession, step: int, setup: str, params: dict, opt, sched, report: TrainReport) -> None:
    def write_weights(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()},
                  str(folder / "trainable.safetensors"))  # (in a folder renamed into place)

    state = {"step": step, "setup": setup, "losses": report.losses, "conflict": report.conflict.rows}
    session.save(f"step-{step:07d}", state, opt, sched, write_weights)


def _resume(session: ckpt.CheckpointSession, setup: str, params: dict, opt, sched, report: TrainReport) -> int:
    """Restore the latest checkpoint (if any); returns the step it was taken at (0: none)."""
    found = session.resumable()
    if found is None:
        return 0
    folder, state = found
    if state["setup"] != setup:
        raise SocialFusionError(f"{session.out} holds checkpoints of another model, settings or set of clips, so they "
                                f"cannot be resumed; use another folder or delete {session.root}")
    saved = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k].to(p.device, p.dtype))
    session.restore(folder, opt, sched)
    report.losses = list(state["losses"])
    report.conflict.rows = list(state["conflict"])
    return int(state["step"])


def _tracking(model: SocialFusionModel, s: TrainSettings, out_dir, run_name: str | None, done: int, n_train: int,
              n_val: int) -> Tracking:
    """The experiment trackers of ``s.report_to`` in ``out_dir/tracking``, the run named ``run_name`` (default: the
    folder's name); a resumed run goes on from step ``done``."""
    if s.report_to and out_dir is None:
        raise SocialFusionError("experiment tracking (report_to) writes into the training's out_dir: give one")
    folder = Path(out_dir if out_dir is not None else ".")
    hparams = {"settings": s.model_dump(mode="json", exclude={"report_to"}), "model": model.cfg.model_dump(mode="json"),
               "train_clips": n_train, "val_clips": n_val}
    return Tracking(s.report_to, "--report-to", folder / "tracking", "dfer-socialfusion", run_name or folder.resolve().name,
                    hparams, resume_step=done, active=bool(s.report_to))


def train(model: SocialFusionModel, examples: Sequence[FeatureClip], settings: TrainSettings | None = None,
          log_to: TextIO | None = None, out_dir: str | Path | None = None, run_name: str | None = None) -> TrainReport:
    """Multi-task training of the connector (+ LoRA); see the module docstring."""
    s = settings or TrainSettings()
    tasks = list(model.cfg.tasks)
    t0 = time.time()
    torch.manual_seed(s.seed)
    train_ex, val_ex = split_examples(examples, tasks, s.val_fraction, s.seed)
    report = TrainReport(train_videos=[e.video for e in train_ex], val_videos=[e.video for e in val_ex])
    per_task: dict[str, list[FeatureClip]] = {t: [e for e in train_ex if t in e.labels] for t in tasks}
    for t in tasks:
        values = sorted({e.labels[t] for e in per_task[t]})
        if len(values) < 2:
            raise TaskError(f"task '{t}': the training clips have {len(values)} distinct value(s) {values}: nothing to learn")
        unknown = sorted(set(values) - set(model.cfg.tasks[t]))
        if unknown:
            raise TaskError(f"task '{t}': training labels {unknown} are not among the model's labels {model.cfg.tasks[t]}")
    _attach_lora(model)
    weights = {t: float((s.task_weights or {}).get(t, 1.0)) for t in tasks}
    streams = {t: _task_batches([e.labels[t] for e in per_task[t]], s.sampler, s.batch_size, s.steps, s.seed + 7919 * i)
               for i, t in enumerate(tasks)}
    groups = model.trainable_groups()
    params = [p for g in groups.values() for p in g]
    sizes = [sum(p.numel() for p in ps) for ps in groups.values()]
    slices = {name: slice(end - n, end) for name, n, end in zip(groups, sizes, itertools.accumulate(sizes))}
    opt = make_optimizer(params, s.lr, s.weight_decay)
    sched = make_scheduler(opt, s.lr_schedule, s.steps, s.warmup_steps)
    session = ckpt.CheckpointSession(out_dir) if out_dir is not None else None
    setup = _setup(model, s, examples)
    done = _resume(session, setup, _named_trainable(model), opt, sched, report) if session is not None else 0
    report.resumed_from = done or None
    tracking = _tracking(model, s, out_dir, run_name, done, len(train_ex), len(val_ex))
    for _ in range(done):  # the batches those steps drew
        for t in tasks:
            next(streams[t])
    model.train()
    for step in range(done + 1, s.steps + 1):
        losses = {}
        for t in tasks:
            idx = next(streams[t])
            batch = [per_task[t][i] for i in idx]
            losses[t] = model.loss([e.feats for e in batch], t, [e.labels[t] for e in batch])
        total = sum(weights[t] * losses[t] for t in tasks)
        record = len(tasks) > 1 and s.conflict_every > 0 and (step - 1) % s.conflict_every == 0
        opt.zero_grad(set_to_none=True)
        if record:
            grads = task_gradients(losses, params)
            report.conflict.record_groups(step, grads, slices)
            flat = sum(weights[t] * grads[t] for t in tasks)
            for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
                p.grad = g.view_as(p).to(p.dtype).clone()
        else:
            total.backward()
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        opt.step()
        sched.step()
        row = {"step": step, "total": float(total.item()), **{t: float(v.item()) for t, v in losses.items()}}
        report.losses.append(row)
        tracking.log({"train/loss": row["total"], **{f"train/loss_{t}": row[t] for t in tasks}}, step=step)
        if log_to is not None and (step == 1 or step % max(1, s.steps // 10) == 0 or step == s.steps):
            print(f"step {step}/{s.steps}: loss {row['total']:.4f} (" +
                  ", ".join(f"{t} {row[t]:.4f}" for t in tasks) + ")", file=log_to, flush=True)
        if session is not None and s.save_every and step % s.save_every == 0:
            _save(session, step, setup, _named_trainable(model), opt, sched, report)
    model.eval()
    for t in tasks:
        val_t = [e for e in val_ex if t in e.labels]
        if val_t:
            pred = model.predict([e.feats for e in val_t], t, s.length_norm)
            truth = [e.labels[t] for e in val_t]
            report.validation[t] = compute_metrics(truth, pred, model.cfg.tasks[t], n_boot=s.n_boot, seed=s.seed)
            report.validation[t]["predictions"] = {e.video: p for e, p in zip(val_t, pred)}
    tracking.log({f"val/{t}/{k}": m[k] for t, m in report.validation.items() for k in ("uar", "war", "macro_f1")
                  if isinstance(m.get(k), (int, float))}, step=s.steps)
    tracking.finish()
    report.seconds = time.time() - t0
    model.cfg.training = {"settings": s.model_dump(), "steps_done": s.steps, "n_train": len(train_ex),
                          "n_val": len(val_ex), "final_loss": report.losses[-1]["total"] if report.losses else None}
    return report


def write_training_report(report: TrainReport, out_dir: str | Path) -> dict[str, Path]:
    """``training.json`` (losses per step, validation metrics, conflict summary) and, with several tasks, the
    gradient-conflict files ``conflict.json/.md/.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"training": out / "training.json"}
    write_atomic(paths["training"], json_text(report.to_json(), indent=1, ensure_ascii=True, allow_nan=True))
    if report.conflict.rows:
        paths.update(report.conflict.write(out))
    return paths
