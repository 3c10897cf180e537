"""SocialFusion-style baseline: frozen vision encoder -> small MLP connector -> causal LM (optional LoRA).

Model
    Every frame of a clip is encoded by the frozen vision tower (one layer, pooled per image: the same features
    as ``dfer probe``, :mod:`pipeline.diagnostics.features`); the connector (LayerNorm -> Linear -> GELU ->
    Linear) turns each frame vector into ``tokens_per_frame`` LM input embeddings. The LM reads

        [BOS] <visual tokens of frame 1..F> "Task: {task}. Answer:" " {label}" <EOS>

    and is trained to write the label and end (teacher forcing; loss = mean NLL over the label's tokens and EOS,
    averaged over the clips of a batch). Only the connector and, with ``lora``, the LoRA adapters of the LM
    (peft) are trained; the encoder and the LM's own weights stay frozen. Because the encoder is frozen, training
    reads the cached per-frame features and never runs the encoder.

Multi-task training (:func:`train`)
    Tasks are label columns (emotion, valence, a second data set's labels...). Each step draws one batch per task
    with that task's sampler from :mod:`pipeline.longtail` (``instance``/``sqrt``/``balanced``/``progressive``,
    epochs counted per task), sums the weighted task losses, and every ``conflict_every`` steps records the
    per-task gradients on the shared trainable parameters (:mod:`pipeline.diagnostics.conflict`). AdamW with a
    constant learning rate and gradient clipping. This is a small loop of its own: ``pipeline/finetune`` trains
    LoRA on full VLM prompts and had no loop to share when this was written.

Saving (:meth:`SocialFusionModel.save`), no pickle
    ``socialfusion.json`` (the config: encoder, layer, pooling, image size, LM, tasks and labels, prompt),
    ``connector.safetensors``, and with LoRA the peft adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``). The encoder and the LM are referenced (hub id + revision, or a local path
    with its content fingerprint, checked on load), not copied.

Backend (:class:`SocialFusionBackend`)
    Implements :class:`pipeline.backends.base.Backend` so the classify stage and ``dfer report`` evaluate the model
    like any VLM: ``classify.model.backend=socialfusion``, ``classify.model.model=<saved folder>``. It uses the
    prompt's **images only** (in order) and replaces the prompt's text by its own training prompt for
    ``default_task``; a label's score is log P(label tokens) and ``end_logprob`` log P(EOS | label). Give it the
    crops it was trained on: ``classify.image_size`` equal to the model's ``image_size`` and the same keyframes
    settings; the motion summaries are not read (``classify.use_summaries=false`` saves the captioner).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence, TextIO

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.devices import resolve_device
from pipeline.diagnostics.conflict import ConflictLog, task_gradients
from pipeline.diagnostics.features import DiagnosticsError, encoder_identity
from pipeline.diagnostics.probe import TaskError, check_tasks, split_by_video

log = logging.getLogger(__name__)

CONFIG_FILE = "socialfusion.json"
CONNECTOR_FILE = "connector.safetensors"
FORMAT_VERSION = 1


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    """Module names to adapt; None: peft's default for the LM's architecture (``q_proj``/``v_proj`` for Llama/Qwen2)."""


class SocialFusionConfig(BaseModel):
    """Everything needed to rebuild the model (written as ``socialfusion.json``)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    encoder: str
    encoder_revision: str | None = None
    encoder_identity: dict = Field(default_factory=dict)
    layer: int = -1
    """Absolute hidden-state index of the encoder that feeds the connector."""
    pooling: Literal["mean", "cls"] = "mean"
    image_size: int = 224
    frames: Literal["keyframes", "all"] = "keyframes"
    max_frames: int = 16
    feature_dim: int
    lm: str
    lm_revision: str | None = None
    lm_identity: dict = Field(default_factory=dict)
    tokens_per_frame: int = Field(1, ge=1)
    connector_hidden: int = Field(256, ge=1)
    lora: LoraSettings | None = None
    tasks: dict[str, list[str]]
    """Task name -> its labels (the words the LM is trained to write)."""
    default_task: str
    """The task the backend scores."""
    prompt: str = "Task: {task}. Answer:"
    training: dict = Field(default_factory=dict)


class SocialFusionError(DiagnosticsError):
    """The model cannot be built, loaded or trained as asked."""


# ------------------------------------------------------------------------------------------------ LM loading


def _lm_source(model: str, revision: str | None) -> tuple[str, dict]:
    from pipeline.backends.hf import is_local_path, offline_mode

    if is_local_path(model):
        path = Path(os.path.expanduser(model))
        if not (path / "config.json").is_file():
            raise SocialFusionError(f"language model {model!r}: not a checkpoint folder (no config.json)")
        return str(path), {"local_files_only": True}
    return model, {"revision": revision, "local_files_only": offline_mode()}


def check_lm(model: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Config-only check that ``model`` is a causal LM (nothing is loaded); :class:`SocialFusionError` otherwise."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    source, common = _lm_source(model, revision)
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **common)
    except Exception as exc:  # noqa: BLE001
        raise SocialFusionError(f"language model {model!r}: cannot read its config: {type(exc).__name__}: {exc}") from exc
    mt = getattr(cfg, "model_type", "")
    if mt not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise SocialFusionError(f"language model {model!r} is not a causal language model (model_type {mt!r}); give a "
                                "decoder-only LM such as Qwen2/Llama/SmolLM")


def load_lm(model: str, revision: str | None = None, trust_remote_code: bool = False):
    """(causal LM, tokenizer) in float32, frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, common = _lm_source(model, revision)
    common["trust_remote_code"] = trust_remote_code
    try:
        tok = AutoTokenizer.from_pretrained(source, **common)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype="float32", **common)
    except Exception as exc:  # noqa: BLE001
        raise SocialFusionError(f"language model {model!r} cannot be loaded as a causal LM "
                                f"(AutoModelForCausalLM + AutoTokenizer): {type(exc).__name__}: {exc}") from exc
    if tok.eos_token_id is None:
        raise SocialFusionError(f"language model {model!r}: its tokenizer has no EOS token (needed to end an answer)")
    lm.requires_grad_(False)
    return lm.eval(), tok


# ------------------------------------------------------------------------------------------------ model


def _torch():
    import torch

    return torch


class SocialFusionModel:
    """Connector + (LoRA) LM over frozen per-frame features. Build with :meth:`create` or :meth:`load`."""

    def __init__(self, cfg: SocialFusionConfig, lm, tokenizer, connector=None, device: str = "cpu"):
        torch = _torch()
        from torch import nn

        self.cfg = cfg
        self.lm = lm
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        d_lm = lm.get_input_embeddings().weight.shape[1]
        self.d_lm = d_lm
        if connector is None:
            connector = nn.Sequential(
                nn.LayerNorm(cfg.feature_dim),
                nn.Linear(cfg.feature_dim, cfg.connector_hidden),
                nn.GELU(),
                nn.Linear(cfg.connector_hidden, cfg.tokens_per_frame * d_lm),
            )
        self.connector = connector.to(self.device)
        self.lm.to(self.device)
        self._ids_cache: dict[str, list[int]] = {}
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id

    # -------------------------------------------------------------- building
    @classmethod
    def create(cls, *, encoder: str, feature_dim: int, lm: str, tasks: Mapping[str, Sequence[str]],
               layer: int = -1, encoder_revision: str | None = None, lm_revision: str | None = None,
               pooling: str = "mean", image_size: int = 224, frames: str = "keyframes", max_frames: int = 16,
               tokens_per_frame: int = 1, connector_hidden: int = 256, lora: LoraSettings | dict | None = None,
               default_task: str | None = None, prompt: str = "Task: {task}. Answer:", seed: int = 0,
               device: str = "cpu") -> "SocialFusionModel":
        """A new model with a randomly initialised connector (seeded) and, if asked, fresh LoRA adapters."""
        torch = _torch()

        tasks = {t: list(v) for t, v in tasks.items()}
        if not tasks:
            raise SocialFusionError("no task given")
        check_tasks({t: {str(i): v for i, v in enumerate(labels)} for t, labels in tasks.items()}, where="tasks")
        if "{task}" not in prompt:
            raise SocialFusionError(f"prompt {prompt!r} must contain '{{task}}' so that the tasks can be told apart")
        lora = LoraSettings.model_validate(lora) if isinstance(lora, dict) else lora
        lm_model, tok = load_lm(lm, lm_revision)
        cfg = SocialFusionConfig(
            encoder=encoder, encoder_revision=encoder_revision, encoder_identity=encoder_identity(encoder, encoder_revision),
            layer=layer, pooling=pooling, image_size=image_size, frames=frames, max_frames=max_frames,
            feature_dim=feature_dim, lm=lm, lm_revision=lm_revision, lm_identity=encoder_identity(lm, lm_revision),
            tokens_per_frame=tokens_per_frame, connector_hidden=connector_hidden, lora=lora, tasks=tasks,
            default_task=default_task or next(iter(tasks)), prompt=prompt,
        )
        if cfg.default_task not in tasks:
            raise SocialFusionError(f"default task {cfg.default_task!r} is not one of the tasks {list(tasks)}")
        torch.manual_seed(seed)
        if lora is not None:
            lm_model = _add_lora(lm_model, lora, lm)
        return cls(cfg, lm_model, tok, device=device)

    # -------------------------------------------------------------- parameters
    def trainable_groups(self) -> dict[str, list]:
        groups = {"connector": [p for p in self.connector.parameters() if p.requires_grad]}
        lora = [p for n, p in self.lm.named_parameters() if p.requires_grad]
        if lora:
            groups["lora"] = lora
        return groups

    def train(self, mode: bool = True) -> None:
        self.connector.train(mode)
        self.lm.train(mode)

    def eval(self) -> None:
        self.train(False)

    # -------------------------------------------------------------- sequences
    def _ids(self, text: str) -> list[int]:
        if text not in self._ids_cache:
            self._ids_cache[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._ids_cache[text]

    def prompt_ids(self, task: str) -> list[int]:
        return self._ids(self.cfg.prompt.format(task=task))

    def label_ids(self, label: str) -> list[int]:
        ids = self._ids(" " + label)
        if not ids:
            raise SocialFusionError(f"label {label!r} tokenizes to nothing")
        return ids

    def _frames_tensor(self, feats):
        torch = _torch()
        t = torch.as_tensor(np.asarray(feats, np.float32) if not isinstance(feats, torch.Tensor) else feats)
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != self.cfg.feature_dim:
            raise SocialFusionError(f"features must be (frames >= 1, {self.cfg.feature_dim}), got {tuple(t.shape)}")
        return t.to(self.device, torch.float32)

    def _embed_rows(self, rows: list[tuple]) -> tuple:
        """rows: (frame features (F, D), text ids after the visual tokens). Right-padded inputs_embeds, mask,
        and the index where each row's text starts."""
        torch = _torch()
        emb = self.lm.get_input_embeddings()
        seqs, text_starts = [], []
        for feats, ids in rows:
            vis = self.connector(self._frames_tensor(feats)).reshape(-1, self.d_lm)
            parts = []
            if self.bos_id is not None:
                parts.append(emb(torch.tensor([self.bos_id], device=self.device)))
            parts.append(vis.to(emb.weight.dtype))
            text_starts.append(sum(p.shape[0] for p in parts))
            parts.append(emb(torch.tensor(ids, dtype=torch.long, device=self.device)))
            seqs.append(torch.cat(parts))
        width = max(s.shape[0] for s in seqs)
        embeds = torch.zeros(len(seqs), width, self.d_lm, dtype=seqs[0].dtype, device=self.device)
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            embeds[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        return embeds, mask, text_starts

    def _target_logprobs(self, feats_list, tasks: Sequence[str], targets: Sequence[list[int]]) -> list:
        """Per row, the log-probabilities (fp32) of the target token ids after ``[BOS] visual prompt(task)``."""
        torch = _torch()
        rows, starts = [], []
        for feats, task, tgt in zip(feats_list, tasks, targets):
            p = self.prompt_ids(task)
            rows.append((feats, p + list(tgt)))
            starts.append(len(p))
        embeds, mask, text_starts = self._embed_rows(rows)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        out = []
        for i, tgt in enumerate(targets):
            first = text_starts[i] + starts[i]  # position of the first target token
            pos = torch.arange(first - 1, first - 1 + len(tgt), device=logits.device)
            lp = torch.log_softmax(logits[i, pos].float(), dim=-1)
            out.append(lp.gather(1, torch.tensor(list(tgt), device=logits.device)[:, None])[:, 0])
        return out

    # -------------------------------------------------------------- training and scoring
    def loss(self, feats_list, task: str, labels: Sequence[str]):
        """Mean over clips of the mean NLL of ``" label" <EOS>`` (teacher forcing)."""
        targets = [self.label_ids(lab) + [self.eos_id] for lab in labels]
        lps = self._target_logprobs(feats_list, [task] * len(targets), targets)
        return _torch().stack([-lp.mean() for lp in lps]).mean()

    def label_scores(self, feats_list, labels: Sequence[str], task: str | None = None,
                     batch_rows: int = 64) -> list[dict[str, tuple[float, int, float]]]:
        """Per clip, ``{label: (sum log P(label tokens), n tokens, log P(EOS | label))}`` (fp32, no grad)."""
        torch = _torch()
        task = task or self.cfg.default_task
        pairs = [(i, lab) for i in range(len(feats_list)) for lab in labels]
        out: list[dict] = [{} for _ in feats_list]
        with torch.no_grad():
            for s in range(0, len(pairs), batch_rows):
                chunk = pairs[s:s + batch_rows]
                targets = [self.label_ids(lab) + [self.eos_id] for _, lab in chunk]
                lps = self._target_logprobs([feats_list[i] for i, _ in chunk], [task] * len(chunk), targets)
                for (i, lab), lp in zip(chunk, lps):
                    out[i][lab] = (float(lp[:-1].sum()), int(lp.shape[0] - 1), float(lp[-1]))
        return out

    def predict(self, feats_list, task: str | None = None, length_norm: str = "sum") -> list[str]:
        """The label ranked first per clip by :mod:`pipeline.ranking` (the rule ``dfer run``/``dfer report`` use,
        so validation and a run report the same UAR; the EOS score is not part of it)."""
        from pipeline.ranking import predict

        task = task or self.cfg.default_task
        labels = self.cfg.tasks[task]
        scores = self.label_scores(feats_list, labels, task)
        return [predict({lab: {"logprob": s[lab][0], "n_tokens": s[lab][1]} for lab in labels}, labels, length_norm)
                for s in scores]

    def generate(self, feats, task: str | None = None, max_new_tokens: int = 16) -> str:
        """Greedy answer for one clip."""
        torch = _torch()
        task = task or self.cfg.default_task
        ids: list[int] = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                embeds, mask, _ = self._embed_rows([(feats, self.prompt_ids(task) + ids)])
                nxt = int(self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[0, -1].argmax())
                if nxt == self.eos_id:
                    break
                ids.append(nxt)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def n_prompt_tokens(self, n_frames: int, task: str | None = None) -> int:
        return (self.bos_id is not None) + n_frames * self.cfg.tokens_per_frame + len(self.prompt_ids(task or self.cfg.default_task))

    # -------------------------------------------------------------- save / load
    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.connector.state_dict().items()}
        save_file(state, str(folder / CONNECTOR_FILE), metadata={"format": "socialfusion-connector"})
        if self.cfg.lora is not None:
            self.lm.save_pretrained(str(folder), safe_serialization=True)
        (folder / CONFIG_FILE).write_text(self.cfg.model_dump_json(indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "SocialFusionModel":
        from safetensors.torch import load_file

        folder = Path(os.path.expanduser(str(folder)))
        cfg = read_config(folder)
        current = encoder_identity(cfg.lm, cfg.lm_revision)
        if cfg.lm_identity and current != cfg.lm_identity:
            raise SocialFusionError(f"{folder}: the language model {cfg.lm!r} is not the one this model was trained on "
                                    f"(identity {current} != recorded {cfg.lm_identity})")
        lm, tok = load_lm(cfg.lm, cfg.lm_revision)
        if cfg.lora is not None:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
        model = cls(cfg, lm, tok, device=device)
        state = load_file(str(folder / CONNECTOR_FILE))
        model.connector.load_state_dict(state)
        model.eval()
        return model


def _add_lora(lm, lora: LoraSettings, name: str):
    from peft import LoraConfig, get_peft_model

    try:
        pcfg = LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, bias="none")
        return get_peft_model(lm, pcfg)
    except ValueError as exc:
        raise SocialFusionError(f"language model {name!r}: LoRA cannot be attached ({exc}); set lora target_modules") from exc


def read_config(folder: str | Path) -> SocialFusionConfig:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise SocialFusionError(f"{folder}: not a SocialFusion model folder (no {CONFIG_FILE})")
    cfg = SocialFusionConfig.model_validate_json(path.read_text(encoding="utf-8"))
    if cfg.format_version != FORMAT_VERSION:
        raise SocialFusionError(f"{path}: format version {cfg.format_version}, this code reads {FORMAT_VERSION}")
    if not (folder / CONNECTOR_FILE).is_file():
        raise SocialFusionError(f"{folder}: {CONNECTOR_FILE} is missing")
    return cfg


# ------------------------------------------------------------------------------------------------ training


@dataclass
class Example:
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
    max_grad_norm: float | None = Field(1.0, gt=0)
    sampler: Literal["instance", "sqrt", "balanced", "progressive"] = "balanced"
    task_weights: dict[str, float] | None = None
    conflict_every: int = Field(1, ge=0)
    """Record per-task gradients every N steps (0: never)."""
    val_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    n_boot: int = Field(1000, ge=0)
    length_norm: Literal["sum", "mean"] = "sum"
    """How validation ranks labels (:mod:`pipeline.ranking`; ``classify.length_norm`` of the pipeline config)."""


@dataclass
class TrainReport:
    losses: list[dict] = field(default_factory=list)  # {"step", "total", <task>: loss}
    conflict: ConflictLog = field(default_factory=ConflictLog)
    validation: dict = field(default_factory=dict)  # task -> compute_metrics
    train_videos: list[str] = field(default_factory=list)
    val_videos: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"losses": self.losses, "validation": self.validation, "train_videos": self.train_videos,
                "val_videos": self.val_videos, "seconds": round(self.seconds, 2),
                "conflict": self.conflict.summary()}


def _task_batches(labels: list[str], strategy: str, batch: int, steps: int, seed: int):
    """Endless batches of indices into ``labels`` drawn with a :mod:`pipeline.longtail` sampler; an epoch is
    ceil(n / batch) batches, the sampler is rebuilt (and re-seeded) every epoch, progressive moves to balanced
    over ``ceil(steps / epoch length)`` epochs."""
    from pipeline.longtail import make_sampler

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


def split_examples(examples: Sequence[Example], tasks: Sequence[str], val_fraction: float, seed: int
                   ) -> tuple[list[Example], list[Example]]:
    """Train/validation by video, stratified by the first task (in ``tasks`` order) each clip has a label for."""
    if val_fraction <= 0:
        return list(examples), []
    keys = []
    for ex in examples:
        t = next(t for t in tasks if t in ex.labels)
        keys.append(f"{t}={ex.labels[t]}")
    tr, va = split_by_video([ex.video for ex in examples], keys, val_fraction, seed)
    return [examples[i] for i in tr], [examples[i] for i in va]


def train(model: SocialFusionModel, examples: Sequence[Example], settings: TrainSettings | None = None,
          log_to: TextIO | None = None) -> TrainReport:
    """Multi-task training of the connector (+ LoRA); see the module docstring."""
    torch = _torch()
    from pipeline.metrics import compute_metrics

    s = settings or TrainSettings()
    tasks = list(model.cfg.tasks)
    t0 = time.time()
    torch.manual_seed(s.seed)
    train_ex, val_ex = split_examples(examples, tasks, s.val_fraction, s.seed)
    report = TrainReport(train_videos=[e.video for e in train_ex], val_videos=[e.video for e in val_ex])
    per_task: dict[str, list[Example]] = {t: [e for e in train_ex if t in e.labels] for t in tasks}
    for t in tasks:
        values = sorted({e.labels[t] for e in per_task[t]})
        if len(values) < 2:
            raise TaskError(f"task '{t}': the training clips have {len(values)} distinct value(s) {values}: nothing to learn")
        unknown = sorted(set(values) - set(model.cfg.tasks[t]))
        if unknown:
            raise TaskError(f"task '{t}': training labels {unknown} are not among the model's labels {model.cfg.tasks[t]}")
    weights = {t: float((s.task_weights or {}).get(t, 1.0)) for t in tasks}
    streams = {t: _task_batches([e.labels[t] for e in per_task[t]], s.sampler, s.batch_size, s.steps, s.seed + 7919 * i)
               for i, t in enumerate(tasks)}
    groups = model.trainable_groups()
    params = [p for g in groups.values() for p in g]
    slices, at = {}, 0
    for name, ps in groups.items():
        n = sum(p.numel() for p in ps)
        slices[name] = slice(at, at + n)
        at += n
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    model.train()
    for step in range(1, s.steps + 1):
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
            off = 0
            for p in params:
                p.grad = flat[off:off + p.numel()].view_as(p).to(p.dtype).clone()
                off += p.numel()
        else:
            total.backward()
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        opt.step()
        row = {"step": step, "total": float(total.item())}
        row.update({t: float(v.item()) for t, v in losses.items()})
        report.losses.append(row)
        if log_to is not None and (step == 1 or step % max(1, s.steps // 10) == 0 or step == s.steps):
            print(f"step {step}/{s.steps}: loss {row['total']:.4f} (" +
                  ", ".join(f"{t} {row[t]:.4f}" for t in tasks) + ")", file=log_to, flush=True)
    model.eval()
    for t in tasks:
        val_t = [e for e in val_ex if t in e.labels]
        if val_t:
            pred = model.predict([e.feats for e in val_t], t, s.length_norm)
            truth = [e.labels[t] for e in val_t]
            labels = model.cfg.tasks[t]
            report.validation[t] = compute_metrics(truth, pred, labels, n_boot=s.n_boot, seed=s.seed)
            report.validation[t]["predictions"] = {e.video: p for e, p in zip(val_t, pred)}
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
    paths["training"].write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    if report.conflict.rows:
        paths.update(report.conflict.write(out))
    return paths


# ------------------------------------------------------------------------------------------------ backend


def check_socialfusion_available(cfg) -> None:
    """Pre-flight for ``backend=socialfusion``: the folder must hold a SocialFusion model (loads no weights)."""
    from pipeline.errors import ModelLoadError

    folder = Path(os.path.expanduser(cfg.model))
    if not folder.is_dir():
        raise ModelLoadError(f"SocialFusion model {cfg.model!r}: no such folder")
    try:
        read_config(folder)
    except (SocialFusionError, ValueError) as exc:
        raise ModelLoadError(f"SocialFusion model {cfg.model!r}: {exc}") from None


class SocialFusionBackend:
    """:class:`pipeline.backends.base.Backend` over a saved SocialFusion model (see the module docstring)."""

    def __init__(self, cfg):
        from pipeline.errors import ModelLoadError

        check_socialfusion_available(cfg)
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self._lock = threading.RLock()
        try:
            self.model = SocialFusionModel.load(cfg.model, device=device)
        except DiagnosticsError as exc:
            raise ModelLoadError(f"SocialFusion model {cfg.model!r}: {exc}") from exc
        self.folder = Path(os.path.expanduser(cfg.model))
        self._encoder = None
        self._warned: set[str] = set()

    def _encoder_(self):
        if self._encoder is None:
            from pipeline.diagnostics.features import VisionEncoder

            c = self.model.cfg
            self._encoder = VisionEncoder(c.encoder, c.encoder_revision, device=str(self.model.device))
            if c.encoder_identity and self._encoder.identity() != c.encoder_identity:
                raise DiagnosticsError(f"SocialFusion model {self.cfg.model!r}: the encoder {c.encoder!r} is not the one it "
                                       f"was trained with (identity {self._encoder.identity()} != {c.encoder_identity})")
        return self._encoder

    def features(self, prompt) -> np.ndarray:
        """Per-frame features ``(images, dim)`` of a prompt's images, as the model was trained on."""
        from PIL import Image

        images = [im for im in prompt.parts if not isinstance(im, str)]
        if not images:
            raise ValueError("the SocialFusion backend needs at least one image in the prompt (it reads frames, not text)")
        size = self.model.cfg.image_size
        fixed = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (size, size):
                if "size" not in self._warned:
                    self._warned.add("size")
                    log.warning("SocialFusion model %s was trained on %dx%d crops; resizing %dx%d images (set "
                                "classify.image_size=%d to avoid it)", self.cfg.model, size, size, *im.size, size)
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            fixed.append(im)
        layer = self.model.cfg.layer
        return self._encoder_().encode(fixed, [layer], self.model.cfg.pooling)[layer]

    def score_labels(self, prompts: list, labels: list[str]) -> list[dict]:
        from pipeline.backends.base import LabelScore

        task = self.model.cfg.default_task
        unknown = [lab for lab in labels if lab not in self.model.cfg.tasks[task] and lab not in self._warned]
        if unknown:
            self._warned.update(unknown)
            log.warning("SocialFusion model %s was not trained to answer %s for task %r (its labels: %s)",
                        self.cfg.model, unknown, task, self.model.cfg.tasks[task])
        with self._lock:
            feats = [self.features(p) for p in prompts]
            rows = self.model.label_scores(feats, labels, task, batch_rows=max(1, self.cfg.batch_size) * len(labels))
        return [{lab: LabelScore(logprob=r[lab][0], n_tokens=r[lab][1], exact=True, end_logprob=r[lab][2])
                 for lab in labels} for r in rows]

    def generate(self, prompts: list, max_new_tokens: int | None = None) -> list[str]:
        with self._lock:
            return [self.model.generate(self.features(p), max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
                    for p in prompts]

    def supports_video(self) -> bool:
        return False

    def count_prompt_tokens(self, prompt) -> int:
        n_images = sum(1 for p in prompt.parts if not isinstance(p, str))
        return self.model.n_prompt_tokens(n_images)

    def identity(self) -> dict:
        from pipeline.backends.hf import _local_fingerprint

        return {"backend": "socialfusion", "model": "local:" + self.folder.resolve().name, "revision": None,
                "resolved_commit": _local_fingerprint(self.folder)}

    def close(self) -> None:
        with self._lock:
            if self._encoder is not None:
                self._encoder.close()
                self._encoder = None
            for name in ("model",):
                if hasattr(self, name):
                    delattr(self, name)
