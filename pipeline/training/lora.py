"""The one LoRA builder (peft): adapters on the named linear layers of a model, the base weights frozen."""

from __future__ import annotations

from typing import Sequence

from pipeline.models.quiet import quiet_peft
from pipeline.core.errors import ConfigError

VISION_MODULES = r".*(visual|vision).*"


def add_lora(model, *, r: int, alpha: float, dropout: float = 0.0, targets: Sequence[str] | None = None,
             exclude: str | None = None, task_type: str | None = None, setting: str = "lora targets"):
    """``model`` wrapped with fresh LoRA adapters (``peft.get_peft_model``).

    ``targets``: the last component of the module names to adapt (None: peft's default for the architecture);
    ``exclude``: a regular expression of module names never adapted (e.g. :data:`VISION_MODULES`). Targets that
    name no linear layer outside ``exclude`` are a :class:`ConfigError` that lists the linear layers there are
    (``setting`` names the option in the message).
    """
    import re

    import torch
    from peft import LoraConfig, get_peft_model

    if targets is not None:
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear if exclude is None or not re.fullmatch(exclude, n)})
        if not set(targets) & set(leaves):
            name = getattr(getattr(model, "config", None), "name_or_path", type(model).__name__)
            raise ConfigError(f"{setting} {list(targets)} names no linear layer of {name!r}"
                              f"{'' if exclude is None else ' outside ' + exclude}; its linear layers are: "
                              f"{', '.join(leaves)}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type=task_type,
                        target_modules=list(targets) if targets is not None else None, exclude_modules=exclude)
    try:
        with quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"LoRA cannot be attached to {type(model).__name__} ({exc}); set {setting}") from exc
