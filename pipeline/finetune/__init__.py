"""Balanced LoRA fine-tuning of the classify model (``dfer finetune``).

    from pipeline.engine.config import load_config
    from pipeline.finetune import finetune

    cfg = load_config("my.yaml", ["finetune.sampling=balanced", "classify.model.model=/models/qwen"])
    result = finetune("clips/", "train_labels.csv", "ckpt/", cfg)
    # then: dfer run test/ --out runs/ft --set classify.adapter=ckpt

Modules: ``data`` (labels, validation split, cached upstream
artifacts through the runner, the dataset of rendered classify prompts), ``setup`` (what the weights depend on, for
resuming), ``trainer`` (the model, the training loop, validation, checkpoints), ``run`` (:func:`finetune`: from the
inputs to the adapter), and the training toolkit :mod:`pipeline.training` (split, LoRA, schedule, checkpoints); the
``finetune`` config section is :class:`pipeline.engine.sections.FinetuneConfig` and the adapter format
:mod:`pipeline.backends.adapter`. The command is ``dfer finetune``
(:mod:`pipeline.cli.finetune`; several GPUs: ``accelerate launch -m pipeline.cli finetune ...``).
"""

from __future__ import annotations

from pipeline.finetune.run import FinetuneResult, finetune

__all__ = ["FinetuneResult", "finetune"]
