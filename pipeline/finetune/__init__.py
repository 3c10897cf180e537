"""Balanced LoRA fine-tuning of the classify model (``dfer finetune``).

    from pipeline.config import load_config
    from pipeline.finetune import finetune

    cfg = load_config("my.yaml", ["finetune.sampling=balanced", "classify.model.model=/models/qwen"])
    result = finetune("clips/", "train_labels.csv", "ckpt/", cfg)
    # then: dfer run test/ --out runs/ft --set classify.adapter=ckpt

Modules: ``config`` (the ``finetune`` config section), ``data`` (labels, validation split, cached upstream
artifacts through the runner, the dataset of rendered classify prompts), ``loop`` (training, validation,
checkpoints, :func:`finetune`), ``checkpoint`` (atomic, resumable checkpoints), ``adapter`` (adapter folders:
base-model check and content hash for ``classify.adapter``). The command is ``dfer finetune``
(:mod:`pipeline.cli.finetune`; several GPUs: ``accelerate launch -m pipeline.cli finetune ...``).

Importing this package is cheap; torch, transformers, peft and accelerate load when training starts.
"""

from __future__ import annotations

from pipeline.errors import FinetuneError
from pipeline.finetune.config import FinetuneConfig

__all__ = ["FinetuneConfig", "FinetuneError", "FinetuneResult", "finetune"]


def __getattr__(name: str):
    if name in ("finetune", "FinetuneResult"):
        from pipeline.finetune import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'pipeline.finetune' has no attribute {name!r}")
