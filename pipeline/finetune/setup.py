"""What the trained weights of ``dfer finetune`` depend on (the setup), and what changed between two setups: a run
resumes only with the same setup, and is refused with the list of what changed."""

from __future__ import annotations

import hashlib
import json

from pipeline.backends.adapter import base_record
from pipeline.engine.config import key_fields
from pipeline.finetune.data import LabelledClip
from stages.templates import template_hash

# Settings that do not change the trained weights: a run may resume with other values for these.
NOT_IN_RESUME_CHECK = frozenset({"num_workers", "save_every_steps", "gradient_checkpointing", "eval_at_start", "report_to"})


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def setup_record(cfg, label_names, train: list[LabelledClip], val: list[LabelledClip], nproc: int) -> dict:
    """Everything the trained weights depend on; a resumed run must have the same."""
    fine = {k: v for k, v in cfg.finetune.model_dump(mode="json").items() if k not in NOT_IN_RESUME_CHECK}
    classify = {k: v for k, v in key_fields(cfg.classify).items() if k not in ("model", "adapter")}
    return {"finetune": fine, "classify": classify, "model": base_record(cfg.classify.model)["identity"],
            "template": template_hash(cfg.classify.prompt_dir, cfg.classify.template), "labels": label_names,
            "train": _sha([[e.video, e.label, e.upstream] for e in train]),
            "val": _sha([[e.video, e.label, e.upstream] for e in val]), "devices": nproc}


def setup_diff(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            sub = sorted(s for s in set(old[k]) | set(new[k]) if old[k].get(s) != new[k].get(s))
            out += [f"{k}.{s}: {old[k].get(s)!r} -> {new[k].get(s)!r}" for s in sub]
        elif k in ("train", "val"):
            out.append(f"the {k} clips, their labels or their cached artifacts")
        else:
            out.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return out
