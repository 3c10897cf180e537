"""The training of ``dfer finetune``: the model, optimizer and data of one run, the loop, validation and checkpoints.

What is trained
    LoRA adapters (peft) on the linear layers ``finetune.lora_targets`` of the classify model's language model
    (``finetune.lora_vision`` adds the vision tower); the base weights stay frozen. The model is loaded by
    :class:`pipeline.backends.hf.TransformersBackend`, so the processor, chat template and label tokens are the
    ones ``classify`` uses.

Loss
    For a clip with label ``y``: ``-log P(tokens of y | classify prompt)``, summed over y's tokens, the tokens read
    right after the generation prompt with the backend's separator (``TransformersBackend.label_token_logprobs``):
    the negative of the score ``classify`` stores for y. A batch's loss is the mean over its clips, each weighted
    by ``finetune.loss_weights`` (none, inverse frequency, or Cui et al.'s effective number).

Sampling and steps
    Every epoch draws ``samples_per_epoch`` training clips (default: as many as there are) with replacement from
    ``pipeline.eval.longtail.make_sampler`` (``instance``, ``sqrt``, ``balanced``, ``progressive``; seeded by
    ``seed + epoch``), rounded up to whole optimizer steps of ``batch_size x grad_accum x devices`` clips; each
    device takes every n-th draw. Learning rate: ``transformers.get_scheduler`` (linear warm-up, then
    cosine/linear decay or constant), optimizer, LoRA and checkpoints from :mod:`pipeline.training`.

Validation
    After each epoch (and before training, ``eval_at_start``) every validation clip is scored over the whole
    label set with the backend's closed-set scoring (``score_labels``, as ``classify`` does; ``length_norm``
    applied), giving UAR, WAR, macro-F1 and the mean loss of the true labels. The adapter of the best UAR is kept.

Checkpoints and resume
    At the end of every epoch (and every ``save_every_steps`` steps) adapter, optimizer, scheduler, RNG states,
    epoch and step are written atomically (see :mod:`pipeline.training.checkpoint`); :meth:`Trainer.resume` goes on
    from one (:mod:`.run` decides whether it may).

Devices
    ``accelerate.Accelerator``: CPU, one GPU, or several (``accelerate launch -m pipeline.finetune ...``); bf16
    autocast on GPUs that support it (``mixed_precision=auto``), fp32 on CPU; gradient accumulation; optional
    gradient checkpointing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TextIO

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.backends.adapter import base_record, write_adapter_meta
from pipeline.backends.hf import TransformersBackend
from pipeline.core.errors import FinetuneError
from pipeline.eval.labels import load_label_set
from pipeline.eval.longtail import make_sampler
from pipeline.eval.metrics import macro_f1, uar, war
from pipeline.eval.ranking import predict
from pipeline.finetune.data import LabelledClip, PromptDataset, class_weights, clips_per_class, collate
from pipeline.training import checkpoint as ckpt
from pipeline.training.lora import VISION_MODULES, add_lora
from pipeline.training.optim import make_optimizer, make_scheduler
from pipeline.training.tracking import Tracking


def make_accelerator(fcfg, device: str):
    """The ``accelerate.Accelerator`` of a run (see "Devices" in the module docstring)."""
    mp = fcfg.mixed_precision
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if mp == "auto":
        mp = "bf16" if not on_cpu and torch.cuda.is_bf16_supported() else "no"
    # cpu=True also lets `torchrun`/`accelerate launch` run several CPU processes (gloo)
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=fcfg.grad_accum, cpu=on_cpu)


class Trainer:
    """The model, optimizer and data of one ``finetune`` call (see the module docstring)."""

    def __init__(self, cfg, accelerator, session: ckpt.CheckpointSession, names: list[str], train: list[LabelledClip],
                 val: list[LabelledClip], cache_root, setup: dict, log: TextIO, show_progress: bool):
        self.cfg, self.fcfg, self.acc, self.session, self.names = cfg, cfg.finetune, accelerator, session, names
        self.train_ex, self.log, self.show = train, log, show_progress
        f = self.fcfg
        device = "balanced" if cfg.classify.model.device == "balanced" else str(accelerator.device)
        self.backend = TransformersBackend(cfg.classify.model.model_copy(update={"device": device}))
        base = self.backend.model
        if f.gradient_checkpointing:
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5 name
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        set_seed(f.seed)
        self.peft = add_lora(base, r=f.lora_r, alpha=f.lora_alpha, dropout=f.lora_dropout, targets=f.lora_targets,
                             exclude=None if f.lora_vision else VISION_MODULES, setting="finetune.lora_targets")
        self.trainable = [p for p in self.peft.parameters() if p.requires_grad]
        n_train_p = sum(p.numel() for p in self.trainable)
        n_all = sum(p.numel() for p in self.peft.parameters())
        self.say(f"LoRA r={f.lora_r} on {', '.join(f.lora_targets)}: {n_train_p:,} trainable parameters "
                 f"({100 * n_train_p / n_all:.2f}% of {n_all:,}); device {accelerator.device}, "
                 f"mixed precision {accelerator.mixed_precision}, {accelerator.num_processes} process(es)")
        optimizer = make_optimizer(self.trainable, f.lr, f.weight_decay)
        self.per_step = f.batch_size * f.grad_accum * accelerator.num_processes
        self.steps_per_epoch = max(1, math.ceil((f.samples_per_epoch or len(train)) / self.per_step))
        self.total_steps = self.steps_per_epoch * f.epochs
        warmup = math.ceil(f.warmup_ratio * self.total_steps) if f.warmup_ratio else 0
        self.scheduler = make_scheduler(optimizer, f.lr_schedule, self.total_steps, warmup)
        self.model, self.optimizer = accelerator.prepare(self.peft, optimizer)
        counts = clips_per_class([e.label for e in train], names)
        w = class_weights(counts, f.loss_weights, f.cb_beta)
        self.weights = torch.tensor([w[n] for n in names], dtype=torch.float32, device=accelerator.device)
        self.train_ds = PromptDataset(train, cfg.classify, names, cache_root)
        self.val_ds = PromptDataset(val, cfg.classify, names, cache_root)
        self.meta_base = base_record(cfg.classify.model)
        self.clips = {"train": {e.video: e.fingerprint for e in train}, "val": {e.video: e.fingerprint for e in val}}
        self.template_sha = setup["template"]
        self.label_set = load_label_set(cfg.classify.labels).name
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "history": [], "steps": [],
                      "done": False, "total_steps": self.total_steps, "setup": setup}

    # -------------------------------------------------------------- small things
    def say(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, file=self.log, flush=True)

    def _unwrapped(self):
        return self.acc.unwrap_model(self.model)

    def _adapter_meta(self, folder: Path, trained: dict) -> None:
        write_adapter_meta(folder, self.meta_base, self.names, str(self.label_set), self.template_sha, trained,
                           self.clips)

    # -------------------------------------------------------------- resume
    def resume(self, folder: Path, state: dict) -> None:
        """Go on from checkpoint ``folder`` (its ``state.json`` read as ``state``)."""
        from peft import set_peft_model_state_dict  # optional dependency: peft (the 'train' extra)

        weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self._unwrapped(), weights)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise FinetuneError(f"{folder}: the checkpoint's adapter does not fit this model ({bad[:3]} ...)")
        self.session.restore(folder, self.optimizer, self.scheduler)
        self.state = state

    # -------------------------------------------------------------- saving
    def save_checkpoint(self) -> None:
        st = self.state

        def write_adapter(folder: Path) -> None:
            self._unwrapped().save_pretrained(str(folder / "adapter"))
            self._adapter_meta(folder / "adapter", {"epoch": st["epoch"], "step": st["global_step"], "checkpoint": True})

        keep = {st["best"]["dir"]} if st.get("best") else set()
        self.session.save(f"step-{st['global_step']:07d}", st, self.optimizer, self.scheduler, write_adapter, keep)

    def save_best(self, ev: dict, epoch: int) -> None:
        st = self.state
        name = f"best-step-{st['global_step']:07d}"

        def write_adapter(folder: Path) -> None:
            self._unwrapped().save_pretrained(str(folder))
            self._adapter_meta(folder, {"epoch": epoch, "step": st["global_step"], "val": ev,
                                        "sampling": self.fcfg.sampling, "loss_weights": self.fcfg.loss_weights})

        self.session.publish_folder(name, write_adapter)
        st["best"] = {"dir": name, "epoch": epoch, "step": st["global_step"], **{k: ev[k] for k in ("uar", "war")}}

    # -------------------------------------------------------------- loss and validation
    def batch_loss(self, batch):
        rendered = [self.backend.render_prompt(p) for p in batch.prompts]
        labels = [self.names[i] for i in batch.labels.tolist()]
        lps, _n = self.backend.label_token_logprobs(rendered, labels, model=self.model)
        nll = -lps.sum(1)  # minus classify's score of the true label
        w = self.weights.to(nll.device)[batch.labels.to(nll.device)]
        return (w * nll).mean()

    def evaluate(self) -> dict:
        """UAR/WAR/macro-F1 and mean true-label loss over the validation clips (closed-set scoring)."""
        if not len(self.val_ds):
            return {}
        acc, names = self.acc, self.names
        norm = self.cfg.classify.length_norm
        self.peft.eval()
        mine = list(range(acc.process_index, len(self.val_ds), acc.num_processes))
        rows = []
        bs = self.backend.cfg.batch_size
        try:
            for a in range(0, len(mine), bs):
                items = [self.val_ds[i] for i in mine[a : a + bs]]
                scores = self.backend.score_labels([it["prompt"] for it in items], names)
                for it, row in zip(items, scores):
                    true = names[it["label"]]
                    pred = predict({lab: row[lab].to_dict() for lab in names}, names, norm)
                    rows.append([it["video"], true, pred, -row[true].logprob])
        finally:
            self.peft.train()
        if acc.num_processes > 1:
            rows = gather_object(rows)
        rows = sorted({r[0]: r for r in rows}.values())
        y_true, y_pred = [r[1] for r in rows], [r[2] for r in rows]
        return {"uar": uar(y_true, y_pred, names), "war": war(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, names),
                "loss": float(sum(r[3] for r in rows) / len(rows)), "n": len(rows)}

    # -------------------------------------------------------------- the loop
    def epoch_order(self, epoch: int) -> list[int]:
        f = self.fcfg
        sampler = make_sampler([e.label for e in self.train_ex], f.sampling, num_samples=self.steps_per_epoch * self.per_step,
                               epoch=epoch, total_epochs=f.epochs, seed=f.seed)
        order = [int(i) for i in sampler]
        return order[self.acc.process_index :: self.acc.num_processes]

    def start_tracking(self) -> None:
        """The experiment trackers of ``finetune.report_to`` (:mod:`pipeline.training.tracking`), in ``CKPT/tracking``,
        on the main process; a resumed run goes on from its checkpoint's step."""
        f, out = self.fcfg, self.session.out
        settings = {**{k: v for k, v in f.model_dump(mode="json").items() if k != "report_to"},
                    "model": self.cfg.classify.model.model, "labels": self.cfg.classify.labels,
                    "train_clips": len(self.train_ex), "val_clips": len(self.val_ds), "devices": self.acc.num_processes}
        self.tracking = Tracking(f.report_to, "finetune.report_to", out / "tracking", "dfer-finetune", out.resolve().name,
                                 settings, resume_step=self.state["global_step"], active=self.acc.is_main_process)

    def _track_epoch(self, row: dict) -> None:
        """An epoch's row of the history (``metrics.json``) at its last step: train loss and validation metrics."""
        names = {"train_loss": "train/epoch_loss", "val_uar": "val/uar", "val_war": "val/war",
                 "val_macro_f1": "val/macro_f1", "val_loss": "val/loss"}
        self.tracking.log({names[k]: row[k] for k in names if row.get(k) is not None}, step=row["step"])

    def train(self) -> None:
        """Run (or go on with) the training."""
        self.start_tracking()
        try:
            self._train()
        finally:
            self.tracking.finish()

    def _train(self) -> None:
        acc, f, st = self.acc, self.fcfg, self.state
        if f.eval_at_start and st["global_step"] == 0 and not st["history"] and len(self.val_ds):
            ev = self.evaluate()
            st["history"].append({"epoch": 0, "step": 0, "train_loss": None, **{f"val_{k}": v for k, v in ev.items()}})
            self._track_epoch(st["history"][-1])
            self.say(f"epoch 0 (base model): val UAR {100 * ev['uar']:.2f}  WAR {100 * ev['war']:.2f}  loss {ev['loss']:.3f}")
        bar = tqdm(total=self.total_steps, initial=st["global_step"], desc="finetune", unit="step", file=self.log,
                   dynamic_ncols=True, disable=not self.show)
        last_val = st["history"][-1] if st["history"] else {}
        self.peft.train()
        try:
            for epoch in range(st["epoch"], f.epochs):
                start = st["step_in_epoch"] if epoch == st["epoch"] else 0
                order = self.epoch_order(epoch)[start * f.grad_accum * f.batch_size :]
                loader = DataLoader(self.train_ds, batch_size=f.batch_size, sampler=order, collate_fn=collate,
                                    num_workers=f.num_workers, generator=torch.Generator().manual_seed(f.seed + epoch))
                it = iter(loader)
                for s in range(start, self.steps_per_epoch):
                    lr = self.scheduler.get_last_lr()[0]
                    micro = []
                    for _ in range(f.grad_accum):
                        batch = next(it)
                        with acc.accumulate(self.model):
                            loss = self.batch_loss(batch)
                            acc.backward(loss)
                            if acc.sync_gradients and f.max_grad_norm:
                                acc.clip_grad_norm_(self.trainable, f.max_grad_norm)
                            self.optimizer.step()
                            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                                self.scheduler.step()
                            self.optimizer.zero_grad()
                        micro.append(loss.detach().float())
                    step_loss = float(acc.reduce(torch.stack(micro).mean(), reduction="mean"))
                    st["global_step"] += 1
                    st["step_in_epoch"] = s + 1
                    st["steps"].append({"step": st["global_step"], "epoch": epoch + 1, "loss": step_loss, "lr": lr})
                    self.tracking.log({"train/loss": step_loss, "train/lr": lr}, step=st["global_step"])
                    post = {"epoch": f"{epoch + 1}/{f.epochs}", "loss": f"{step_loss:.3f}"}
                    if last_val.get("val_uar") is not None:
                        post.update(val_uar=f"{100 * last_val['val_uar']:.1f}", val_war=f"{100 * last_val['val_war']:.1f}")
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                    last_of_epoch = s + 1 == self.steps_per_epoch
                    if f.save_every_steps and st["global_step"] % f.save_every_steps == 0 and not last_of_epoch:
                        self.save_checkpoint()
                self._end_epoch(epoch)
                last_val = st["history"][-1]
        finally:
            bar.close()

    def _end_epoch(self, epoch: int) -> None:
        st = self.state
        losses = [x["loss"] for x in st["steps"] if x["epoch"] == epoch + 1]
        row = {"epoch": epoch + 1, "step": st["global_step"], "train_loss": float(sum(losses) / max(1, len(losses)))}
        ev = self.evaluate()
        row.update({f"val_{k}": v for k, v in ev.items()})
        st["history"].append(row)
        self._track_epoch(row)
        best_note = ""
        if ev and (st["best"] is None or ev["uar"] > st["best"]["uar"]):
            self.save_best(ev, epoch + 1)
            best_note = " (best so far)"
        st["epoch"], st["step_in_epoch"] = epoch + 1, 0
        st["done"] = epoch + 1 == self.fcfg.epochs
        self.save_checkpoint()
        msg = f"epoch {epoch + 1}/{self.fcfg.epochs}: train loss {row['train_loss']:.3f}"
        if ev:
            msg += f", val UAR {100 * ev['uar']:.2f}  WAR {100 * ev['war']:.2f}  loss {ev['loss']:.3f}{best_note}"
        self.say(msg)

    def close(self) -> None:
        self.backend.close()
