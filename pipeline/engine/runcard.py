"""The run card (``RUN/runcard.json``): what produced a run's numbers besides its config.

- ``dfer``: its version and, when it runs from a git checkout, the commit (and whether the tree had changes);
- ``python`` and ``libraries``: the installed versions of torch, transformers, vLLM and the other libraries a
  number can depend on (None: not installed);
- ``models``: per model stage that ran, the model as configured (backend, id or folder, the revision asked for) and
  as resolved: the hub commit the local Hugging Face cache resolves it to (``refs/`` -> ``snapshots/<commit>``),
  the content fingerprint of a local folder, the identity of another backend (the embedded model's weights hash,
  a server's model name and, for a vLLM server, its version); its dtype and device, as set and as resolved here
  (and the transformers backend's ``attn_implementation`` as set);
  LoRA adapters (path and content hash);
- ``devices``: the device of every other stage that has one (the face detector);
- ``machine``: the platform and the GPUs torch sees.

The runner writes it when the run starts (``complete: false``, devices as set) and again when it ends
(``complete: true``; hub commits resolved again: a model downloaded by the run is in the cache by then). Devices and
dtypes are resolved at the end where a stage of this process loaded torch (a model stage that computed something;
per-clip stages with ``run.workers=1``): resolving them imports torch, which a run that found everything in the cache
should not pay for, and which must wait until workers have set their thread limits. Where no stage here loaded
torch (all cached, or computed in worker processes), and on a Ray cluster (the actors' devices are not the
driver's), they stay unresolved (None); :func:`comparable` leaves unresolved entries out of comparisons. ``dfer report``
shows it in ``report.md``; ``dfer compare`` warns when two runs' cards differ (:func:`comparable`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.backends import ModelConfig, model_identity
from pipeline.backends.adapter import adapter_hash
from pipeline.core.errors import AdapterError
from pipeline.models import hub
from pipeline.models.devices import resolve_device

FORMAT = 1
LIBRARIES = ("torch", "transformers", "vllm", "peft", "accelerate", "huggingface_hub", "av", "numpy",
             "facenet-pytorch")
NOT_COMPARED = ("format", "complete", "machine.platform", "machine.cpus")  # may differ between runs of one setup
_REPO = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def dfer_source() -> dict:
    """dfer's version, and its git commit when it runs from a checkout (``dirty``: tracked files changed)."""
    commit = _git("rev-parse", "HEAD") if (_REPO / ".git").exists() else None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"version": _version("dfer-pipeline"), "commit": commit, "dirty": dirty}


def _server_version(url: str | None) -> str | None:
    """A vLLM server's version (``GET /version``), or None when the server does not say."""
    if not url:
        return None
    import requests

    root = url.rstrip("/").removesuffix("/v1")
    try:
        reply = requests.get(f"{root}/version", timeout=3)
        return str(reply.json().get("version")) if reply.ok else None
    except (requests.RequestException, ValueError, AttributeError):
        return None


def _resolved_device(setting: str, torch_ready: bool) -> str | None:
    if not torch_ready:  # resolving imports torch: only once the run's stages are done (start-up order)
        return None
    try:
        device = resolve_device(setting, balanced=True)
    except Exception as exc:  # noqa: BLE001 - the card says why instead of failing a finished run
        return f"unresolved ({exc})"
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return device


def model_card(cfg: ModelConfig, resolve: bool) -> dict:
    """One model as configured and as resolved (see the module docstring); ``resolve``: devices and dtypes too."""
    card: dict[str, Any] = {"backend": cfg.backend, "model": cfg.model, "revision": cfg.revision,
                            "identity": model_identity(cfg), "dtype": cfg.dtype, "device": cfg.device}
    if cfg.backend == "transformers":
        card["attn_implementation"] = cfg.attn_implementation
    if cfg.backend == "transformers" and not hub.is_local_path(cfg.model):
        card["resolved_revision"] = hub.resolved_revision(cfg.model, cfg.revision)
    elif cfg.backend == "transformers":
        card["resolved_revision"] = card["identity"].get("local")
    elif cfg.backend == "openai":
        card["server_version"] = _server_version(cfg.server_url)
    if cfg.backend in ("transformers", "socialfusion", "expression"):
        device = _resolved_device(cfg.device, resolve)
        card["resolved_device"] = device
        if cfg.backend == "transformers" and device is not None:
            own = hub.checkpoint_dtype(cfg.model, cfg.revision)
            card["resolved_dtype"] = (cfg.dtype if cfg.dtype != "auto" else "float32" if device == "cpu"
                                      else own or "the checkpoint's own")
    return card


def build_card(sections: dict[str, BaseModel], complete: bool, here: bool = True) -> dict:
    """The run card of a run whose stages run with ``sections`` (stage -> its config section, fallbacks applied);
    ``complete``: written at the end; ``here``: the stages ran in this process or its local workers (not on a Ray
    cluster). Devices and dtypes are resolved when both hold and torch is loaded (see the module docstring)."""
    resolve = complete and here and "torch" in sys.modules
    models, devices = {}, {}
    for stage, section in sections.items():
        for name, value in section:
            if isinstance(value, ModelConfig):
                models[stage if name == "model" else f"{stage}.{name}"] = model_card(value, resolve)
        adapter = getattr(section, "adapter", None)
        if isinstance(adapter, str) and stage in models:
            try:
                digest = adapter_hash(adapter)
            except AdapterError as exc:  # a run that stops before the stage still gets its card
                digest = f"unreadable ({exc})"
            models[stage]["adapter"] = {"path": adapter, "hash": digest}
        device = getattr(section, "device", None)
        if isinstance(device, str):
            devices[stage] = {"setting": device, "resolved": _resolved_device(device, resolve)}
    card = {"format": FORMAT, "complete": complete, "dfer": dfer_source(),
            "python": platform.python_version(), "libraries": {lib: _version(lib) for lib in LIBRARIES},
            "models": models, "devices": devices, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    if resolve:
        import torch

        card["machine"]["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return card


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {key: v for k, sub in d.items() for key, v in _flatten(sub, f"{prefix}.{k}" if prefix else str(k)).items()}


RESOLVED_HERE = ("resolved_device", "resolved_dtype", "resolved", "gpus")  # None (or absent) where not resolved


def comparable(card: dict) -> dict[str, Any]:
    """The card as flat ``key: value`` pairs, without what may differ between two runs of one setup, and without the
    devices and dtypes it could not resolve (unknown is not different)."""
    return {k: v for k, v in _flatten(card).items()
            if not any(k == n or k.startswith(n + ".") for n in NOT_COMPARED)
            and not (v is None and k.rsplit(".", 1)[-1] in RESOLVED_HERE)}
