"""LoRA adapter folders, the format ``classify.adapter`` reads at inference (written by ``dfer finetune``).

An adapter folder is a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) plus
``dfer_adapter.json``, which records the base model it was trained on (the id or path as configured, its
cache identity from :func:`pipeline.backends.model_identity`, and the sha256 of its ``config.json``), the
label set and the classify template it was trained with, and the content fingerprints of its training and
validation clips (:func:`training_clips`: a run with the adapter must not test on them).

* :func:`resolve_adapter_dir` accepts the adapter folder itself or a ``dfer finetune`` output folder
  (``CKPT`` -> ``CKPT/adapter``).
* :func:`adapter_hash` is the content hash that enters classify's cache key (weights + adapter config without
  the base path), so moving or renaming the folder keeps cache entries and retraining changes them.
* :func:`check_adapter` runs before any clip: an adapter made for another base model is an error.

Cheap to import (no torch, no peft).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from pipeline.core.files import json_text, write_atomic
from pipeline.core.errors import AdapterError
from pipeline.models import hub
from pipeline.backends import model_identity
from pipeline.backends.base import ModelConfig

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_META = "dfer_adapter.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
META_FORMAT = 1


def resolve_adapter_dir(path: str | os.PathLike) -> Path:
    """The adapter folder named by ``path``: the folder itself, or ``path/adapter`` for a fine-tuning output."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise AdapterError(f"adapter {str(path)!r}: no such folder")
    d = next((c for c in (p, p / "adapter") if (c / ADAPTER_CONFIG).is_file()), None)
    if d is None:
        raise AdapterError(
            f"adapter {str(path)!r}: not a PEFT adapter folder (no {ADAPTER_CONFIG}, neither there nor in "
            f"{p / 'adapter'}); point classify.adapter at the output folder of `dfer finetune` or at its adapter/"
        )
    if not any((d / w).is_file() for w in WEIGHT_FILES):
        raise AdapterError(f"adapter {str(d)!r}: {ADAPTER_CONFIG} but no adapter weights ({' or '.join(WEIGHT_FILES)})")
    return d


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: cannot be read as JSON: {exc}") from None


def adapter_hash(path: str | os.PathLike) -> str:
    """sha256 of the adapter weights and of ``adapter_config.json`` (without the base model's path and the peft
    version, with ``target_modules`` sorted)."""
    d = resolve_adapter_dir(path)
    h = hashlib.sha256()
    cfg = _read_json(d / ADAPTER_CONFIG)
    for k in ("base_model_name_or_path", "revision", "peft_version"):  # where and with what, not what
        cfg.pop(k, None)
    if isinstance(cfg.get("target_modules"), list):  # peft writes a set: its order varies between processes
        cfg["target_modules"] = sorted(cfg["target_modules"])
    h.update(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())
    for name in WEIGHT_FILES:
        f = d / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()


def _file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _config_sha256(cfg: ModelConfig) -> str | None:
    """sha256 of the base model's ``config.json`` (local folder, or the local Hugging Face cache)."""
    if cfg.backend != "transformers":
        return None
    if hub.is_local_path(cfg.model):
        return _file_sha256(Path(os.path.expanduser(cfg.model)) / "config.json")
    cached = hub.cached_config(cfg.model, cfg.revision)
    return _file_sha256(Path(cached)) if cached else None


def base_record(cfg: ModelConfig) -> dict:
    """What ``dfer_adapter.json`` records about the base model (and what :func:`check_adapter` compares)."""
    return {"model": cfg.model, "identity": model_identity(cfg), "config_sha256": _config_sha256(cfg)}


def write_adapter_meta(adapter_dir: Path, base: dict, labels: list[str], label_set: str, template_sha256: str,
                       trained: dict, clips: dict[str, dict[str, str]] | None = None) -> None:
    """``dfer_adapter.json``; ``clips``: ``{"train": {video id: fingerprint}, "val": {...}}``, the clips it learned
    from."""
    doc = {"format": META_FORMAT, "base": base, "label_set": label_set, "labels": labels,
           "template_sha256": template_sha256, "trained": trained, **({"clips": clips} if clips is not None else {})}
    write_atomic(Path(adapter_dir) / ADAPTER_META, json_text(doc, indent=1))


def training_clips(path: str | os.PathLike) -> dict[str, str] | None:
    """``{video id: content fingerprint}`` of the clips the adapter at ``path`` was trained and validated on (ids as
    the training input named them), as ``dfer finetune`` recorded them; None for an adapter that does not say (made
    elsewhere, or by an older dfer)."""
    meta = Path(resolve_adapter_dir(path)) / ADAPTER_META
    clips = _read_json(meta).get("clips") if meta.is_file() else None
    if not isinstance(clips, dict):
        return None
    return {str(v): str(fp) for part in ("train", "val") for v, fp in (clips.get(part) or {}).items()}


def check_adapter(path: str | os.PathLike, model_cfg: ModelConfig, labels: list[str] | None = None,
                  template_sha256: str | None = None, setting: str = "classify.adapter") -> Path:
    """The adapter folder, after checking it can be applied to ``model_cfg``; raises :class:`AdapterError`.

    With ``dfer_adapter.json``: the recorded base must be the configured model (same cache identity). A
    different identity with an identical ``config.json`` (a local copy of the same checkpoint, or another
    fine-tune of it) only warns; a different or unknown ``config.json`` is an error. Without it (an adapter from
    elsewhere): ``base_model_name_or_path`` of ``adapter_config.json`` must name the configured model (same
    folder name) or a folder with the same ``config.json``. A different label set or template only warns.
    """
    if model_cfg.backend != "transformers":
        raise AdapterError(f"{setting}: adapters are applied to a local model; it needs "
                           f"classify.model.backend=transformers (got {model_cfg.backend!r})")
    d = resolve_adapter_dir(path)
    if importlib.util.find_spec("peft") is None:
        raise AdapterError(f"{setting}: applying an adapter needs the 'peft' package: pip install 'dfer-pipeline[train]'")
    meta_path = d / ADAPTER_META
    if meta_path.is_file():
        meta = _read_json(meta_path)
        base = meta.get("base") or {}
        current = base_record(model_cfg)
        if base.get("identity") != current["identity"]:
            same_config = base.get("config_sha256") and base.get("config_sha256") == current["config_sha256"]
            if not same_config:
                raise AdapterError(
                    f"{setting}: the adapter {d} was made for another base model: it was trained on "
                    f"{base.get('model')!r}, but classify.model.model is {model_cfg.model!r} (a different "
                    f"architecture/config.json; recorded in {meta_path}). Set classify.model.model to the model it "
                    "was trained on, or train an adapter for this model with `dfer finetune`."
                )
            log.warning("%s: the adapter %s was trained on %r; classify.model.model is %r, which has the same "
                        "config.json but is not the same checkpoint (a copy of it, or another fine-tune); applying it "
                        "anyway", setting, d, base.get("model"), model_cfg.model)
        if labels is not None and meta.get("labels") and list(meta["labels"]) != list(labels):
            log.warning("%s: the adapter was trained to answer with the labels %s, classify scores %s",
                        setting, meta["labels"], labels)
        if template_sha256 and meta.get("template_sha256") and meta["template_sha256"] != template_sha256:
            log.warning("%s: the adapter was trained with another classify template than the one in use", setting)
        return d
    declared = _read_json(d / ADAPTER_CONFIG).get("base_model_name_or_path")
    if declared:
        same_name = Path(str(declared).rstrip("/")).name == Path(str(model_cfg.model).rstrip("/")).name
        current_sha = _config_sha256(model_cfg)
        same_config = current_sha is not None and _file_sha256(Path(os.path.expanduser(str(declared))) / "config.json") == current_sha
        if not (same_name or same_config):
            raise AdapterError(f"{setting}: the adapter {d} was made for another base model: {ADAPTER_CONFIG} names "
                               f"{declared!r}, but classify.model.model is {model_cfg.model!r}")
    return d
