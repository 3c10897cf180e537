"""Optimizer and learning-rate schedule of every training loop: AdamW over the trainable parameters, and
``transformers.get_scheduler`` (linear warm-up, then cosine, linear or constant)."""

from __future__ import annotations

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def make_optimizer(params, lr: float, weight_decay: float = 0.0):
    import torch

    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, schedule: str, total_steps: int, warmup_steps: int = 0):
    """``schedule``: cosine, linear or constant (after ``warmup_steps`` of linear warm-up from 0)."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
