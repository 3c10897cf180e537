"""SocialFusion-style model: frozen vision encoder -> small MLP connector -> causal LM (optional LoRA).

Every frame of a clip is encoded by the frozen vision tower (one layer, pooled per image: the ``features`` stage,
:mod:`stages.features`); the connector (LayerNorm -> Linear -> GELU -> Linear) turns each frame vector into
``tokens_per_frame`` LM input embeddings. The LM reads

    [BOS] <visual tokens of frame 1..F> "Task: {task}. Answer:" " {label}" <EOS>

and is trained (:mod:`pipeline.diagnostics.socialfusion`) to write the label and end. Only the connector and, with
``lora``, LoRA adapters of the LM are trained; the encoder and the LM's own weights stay frozen.

Saving (:meth:`SocialFusionModel.save`), no pickle: ``socialfusion.json`` (the config: encoder, layer, pooling,
image size, LM, tasks and labels, prompt), ``connector.safetensors``, and with LoRA the peft adapter
(``adapter_config.json`` + ``adapter_model.safetensors``). The encoder and the LM are referenced (hub id +
revision, or a local path with its content fingerprint, checked on load), not copied. The classify stage uses a
saved model through the ``socialfusion`` backend (:mod:`pipeline.backends.socialfusion`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.files import atomic_path, write_atomic
from pipeline.models import hub
from pipeline.models.quiet import quiet_peft
from pipeline.core.errors import SocialFusionError
from pipeline.eval.ranking import predict

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


# ------------------------------------------------------------------------------------------------ LM loading


def check_lm(model: str, revision: str | None = None) -> None:
    """Config-only check that ``model`` is a causal LM (nothing is loaded); :class:`SocialFusionError` otherwise."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    source, common = hub.source(model, revision, "Language model", error=SocialFusionError)
    try:
        cfg = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:  # noqa: BLE001
        raise SocialFusionError(f"language model {model!r}: cannot read its config: {type(exc).__name__}: {exc}") from exc
    mt = getattr(cfg, "model_type", "")
    if mt not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SocialFusionError(f"language model {model!r} is not a causal language model (model_type {mt!r}); give a "
                                "decoder-only LM such as Qwen2/Llama/SmolLM")


def load_lm(model: str, revision: str | None = None):
    """(causal LM, tokenizer) in float32, frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, common = hub.source(model, revision, "Language model", error=SocialFusionError)
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
        self.d_lm = d_lm = lm.get_input_embeddings().weight.shape[1]
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
    def create(cls, *, encoder: str, lm: str, tasks: Mapping[str, Sequence[str]], encoder_revision: str | None = None,
               lm_revision: str | None = None, default_task: str | None = None, seed: int = 0, device: str = "cpu",
               **settings) -> "SocialFusionModel":
        """A new model with a randomly initialised connector (seeded). ``settings`` are the other fields of
        :class:`SocialFusionConfig` (``feature_dim`` at least; the rest have defaults there). ``lora`` is recorded;
        the trainer attaches fresh adapters with the training toolkit (:func:`pipeline.training.lora.add_lora`)."""
        tasks = {t: list(v) for t, v in tasks.items()}
        if not tasks:
            raise SocialFusionError("no task given")
        few = [t for t, labels in tasks.items() if len(set(labels)) < 2 or len(set(labels)) != len(labels)]
        if few:
            raise SocialFusionError(f"task(s) {few}: each task needs two or more distinct labels, each listed once")
        cfg = SocialFusionConfig(encoder=encoder, encoder_revision=encoder_revision, lm=lm, lm_revision=lm_revision,
                                 encoder_identity=hub.model_identity(encoder, encoder_revision), tasks=tasks,
                                 lm_identity=hub.model_identity(lm, lm_revision),
                                 default_task=default_task or next(iter(tasks)), **settings)
        if "{task}" not in cfg.prompt:
            raise SocialFusionError(f"prompt {cfg.prompt!r} must contain '{{task}}' so that the tasks can be told apart")
        if cfg.default_task not in tasks:
            raise SocialFusionError(f"default task {cfg.default_task!r} is not one of the tasks {list(tasks)}")
        lm_model, tok = load_lm(lm, lm_revision)
        _torch().manual_seed(seed)
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
        """The label ranked first per clip by :mod:`pipeline.eval.ranking` (the rule ``dfer run``/``dfer report`` use,
        so validation and a run report the same UAR; the EOS score is not part of it)."""
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
        with atomic_path(folder / CONNECTOR_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "socialfusion-connector"})
        if self.cfg.lora is not None:
            self.lm.save_pretrained(str(folder), safe_serialization=True)
        write_atomic(folder / CONFIG_FILE, self.cfg.model_dump_json(indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "SocialFusionModel":
        from safetensors.torch import load_file

        folder = Path(os.path.expanduser(str(folder)))
        cfg = read_config(folder)
        current = hub.model_identity(cfg.lm, cfg.lm_revision)
        if cfg.lm_identity and current != cfg.lm_identity:
            raise SocialFusionError(f"{folder}: the language model {cfg.lm!r} is not the one this model was trained on "
                                    f"(identity {current} != recorded {cfg.lm_identity})")
        lm, tok = load_lm(cfg.lm, cfg.lm_revision)
        if cfg.lora is not None:
            from peft import PeftModel

            with quiet_peft():
                lm = PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
        model = cls(cfg, lm, tok, device=device)
        state = load_file(str(folder / CONNECTOR_FILE))
        model.connector.load_state_dict(state)
        model.eval()
        return model


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
