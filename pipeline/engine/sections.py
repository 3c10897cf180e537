"""The config sections that are not a stage's: how a run executes (``run``) and how ``dfer finetune`` trains
(``finetune``). Inert pydantic data (importing this module is cheap); :mod:`pipeline.engine.config` composes them with
the stages' sections into ``PipelineConfig``, so ``--config``/``--set run.x=y``/``--set finetune.x=y`` work like
every other section. None of their settings enters a cache key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RunSection(BaseModel):
    """How the run executes. Nothing here changes any artifact, so none of it enters a cache key."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Worker processes for the per-clip stages (faces: decoding and face detection; keyframes; expression), each with
    its own decoder and detector. ``auto``: one per CPU core this process may use, fewer where host memory (about
    1.25 GiB a worker) or, for a detector on the GPU, GPU memory (about 8 GiB a worker) would not hold them, at most
    one per clip; the stage line says how many and why (``pipeline/engine/workers.py``, ``docs/cluster.md``)."""
    batch_size: int = Field(8, ge=1)
    """Clips handed to a model stage at once."""
    progress: bool = True
    """Show a progress bar per stage (``--quiet`` turns it off)."""
    fallback: Literal["embedded", "stop"] = "embedded"
    """When ``context.model`` or ``classify.model`` cannot be had here (offline and not in the local Hugging Face cache):
    ``embedded`` runs the stage with the embedded expression model instead, with a warning, and records it in
    ``status.json``; ``stop`` stops the run before that stage (as ``--strict`` does)."""
    ray_num_cpus_per_task: float = Field(1.0, gt=0)
    """``--executor ray``: CPUs reserved per clip task (faces, keyframes); torch in the task uses that many threads."""
    ray_num_gpus_per_task: float = Field(0.0, ge=0)
    """``--executor ray``: GPUs per clip task (a fraction such as 0.25 shares one); 0: Ray hides the GPUs and face
    detection runs on CPU."""
    ray_num_gpus_per_actor: float | None = Field(None, ge=0)
    """``--executor ray``: GPUs per model actor (context, classify); each actor loads the model once. ``null``: 1 if the
    cluster has GPUs, else CPU actors. More than 1 with ``*.model.device=balanced`` spreads a large model over them."""
    ray_num_cpus_per_actor: float = Field(1.0, gt=0)
    """``--executor ray``: CPUs reserved per model actor (its torch thread count on CPU)."""
    ray_actors: int | None = Field(None, ge=1)
    """``--executor ray``: model actors per model stage. ``null``: as many as the cluster's GPUs hold (one per GPU by
    default), or 1 on a cluster without GPUs."""
    ray_max_retries: int = Field(3, ge=0)
    """``--executor ray``: retries of a clip task, and restarts of a model actor, whose worker process dies."""


class FinetuneConfig(BaseModel):
    """LoRA fine-tuning of the classify model with tail-aware sampling (``dfer finetune``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    epochs: int = Field(3, ge=1)
    """Passes over the training set; each draws ``samples_per_epoch`` clips with ``sampling``."""
    samples_per_epoch: int | None = Field(None, ge=1)
    """Clips drawn per epoch (with replacement); default: the number of training clips."""
    sampling: Literal["instance", "sqrt", "balanced", "progressive"] = "balanced"
    """How training clips are drawn (``pipeline/eval/longtail.py``): uniform over clips, square-root, class-balanced, or
    progressively from instance- to class-balanced over the epochs (needs ``epochs >= 2``)."""
    loss_weights: Literal["none", "inverse", "effective"] = "none"
    """Per-class weights of the loss: none; inverse class frequency (1/n_c); or the inverse effective number of
    samples (1-beta)/(1-beta^n_c) of Cui et al., CVPR 2019 (``cb_beta``). Normalised to mean 1 over the training
    classes. Meant for ``sampling=instance``: balanced sampling already evens the classes out."""
    cb_beta: float = Field(0.999, ge=0, lt=1)
    """beta of the effective number of samples (``loss_weights=effective``); 0 gives equal weights, values near 1
    approach inverse frequency."""
    batch_size: int = Field(1, ge=1)
    """Clips per forward pass on each device."""
    grad_accum: int = Field(8, ge=1)
    """Forward passes per optimizer step (effective batch: batch_size x grad_accum x devices)."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (AdamW) of the adapter weights."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay of the adapter weights."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay of the learning rate after warm-up, over all optimizer steps of all epochs."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of the optimizer steps with a linear warm-up of the learning rate."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping (global L2 norm); null: no clipping."""
    lora_r: int = Field(16, ge=1)
    """Rank of the LoRA matrices."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA branch's input."""
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    """Linear layers that get adapters, by the last component of their module name."""
    lora_vision: bool = False
    """Also adapt matching layers of the vision tower (module names containing 'visual' or 'vision'); off: the
    language model only."""
    val_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of each class's labelled clips held out for validation (deterministic by a hash of the video id and
    ``seed``; a class keeps at least one training clip). 0: no validation, the last epoch's adapter is kept.
    Not used with ``--val-labels``."""
    eval_at_start: bool = True
    """Validate the base model before training (epoch 0 of the history)."""
    seed: int = 0
    """Seed of the split, the sampler, the adapter initialisation and dropout."""
    save_every_steps: int = Field(0, ge=0)
    """Also write a resumable checkpoint every N optimizer steps (0: at the end of each epoch only)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 on a GPU that supports it, otherwise none (fp32 on CPU)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes that render prompts (face crops read from the cache)."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Experiment trackers (accelerate's) that get the settings, each step's loss and learning rate and each epoch's
    validation metrics: ``tensorboard`` (event files in ``CKPT/tracking/tensorboard``), ``wandb`` (offline unless
    ``WANDB_MODE`` says otherwise), ``mlflow`` (``MLFLOW_TRACKING_URI``, else ``CKPT/tracking/mlruns``); each needs
    its package. ``--report-to`` sets it from the command line."""

    @model_validator(mode="after")
    def _progressive_needs_epochs(self):
        if self.sampling == "progressive" and self.epochs < 2:
            raise ValueError("sampling 'progressive' moves from instance to balanced sampling over the epochs: "
                             "it needs epochs >= 2")
        return self
