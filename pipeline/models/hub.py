"""Where a model comes from, and what identifies it in cache keys, in one place.

A model setting is a Hugging Face hub id (``org/name``, with an optional ``revision``) or a local folder.
:func:`is_local_path` tells them apart; :func:`source` gives what ``from_pretrained`` needs (local files only
when offline, a local folder, or a cached model whose hub cannot be reached); :func:`check_available` is the
cheap pre-flight that loads no weights; :func:`model_identity` is the one identity every cache key uses:
hub id + revision (pin a revision for reproducible keys), or a local folder's content :func:`fingerprint`,
never its path, so moving a folder keeps its cache entries. Used by the backends, the vision encoders and
the SocialFusion model alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.core.errors import ModelLoadError, ModelUnavailableError

HUB = "https://huggingface.co"


def is_local_path(model: str) -> bool:
    """True if ``model`` names a folder rather than a hub id.

    Existing paths, absolute paths, ``./``/``../``/``~`` paths and anything with more than one ``/`` are paths;
    ``org/name`` that does not exist locally is a hub id.
    """
    if os.path.exists(os.path.expanduser(model)):
        return True
    if os.path.isabs(model) or model.startswith(("./", "../", "~", ".\\", "..\\")) or "\\" in model:
        return True
    return model.count("/") > 1


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` read from the environment now (not at import time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        import huggingface_hub

        return bool(huggingface_hub.is_offline_mode())
    except Exception:  # noqa: BLE001 - very old huggingface_hub
        return False


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB).rstrip("/")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick HEAD request to the hub endpoint (honours ``HF_ENDPOINT`` and proxy settings)."""
    import requests

    try:
        requests.head(endpoint(), timeout=timeout_s, allow_redirects=False)
        return True
    except requests.RequestException:
        return False


def cached_config(model: str, revision: str | None) -> str | None:
    """Path of the hub model's ``config.json`` in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id is simply not cached
        return None
    return found if isinstance(found, str) else None


def resolved_revision(model: str, revision: str | None = None) -> str | None:
    """The commit a hub model at ``revision`` (a branch, tag or commit; None: ``main``) resolves to in the local
    Hugging Face cache (its ``refs/`` and ``snapshots/<commit>/``), or None when it is not cached."""
    found = cached_config(model, revision)
    return Path(found).parent.name if found else None


def checkpoint_dtype(model: str, revision: str | None = None) -> str | None:
    """The dtype a checkpoint's ``config.json`` declares (``dtype`` or ``torch_dtype``), from a local folder or the
    local Hugging Face cache; None when it is not here or declares none."""
    path = Path(os.path.expanduser(model)) / "config.json" if is_local_path(model) else cached_config(model, revision)
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return None
    found = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("torch_dtype")
    return str(found) if found else None


def how_to_point_at_local_model(model: str) -> str:
    """The standard hint appended to availability errors."""
    return (
        "To use a local copy, point the model setting at the checkpoint folder, e.g. "
        "`--set classify.model.model=/path/to/local/checkpoint` (or `context.model.model=...` for the captioner); "
        f"or pre-download it on a machine with internet access with `huggingface-cli download {model}` and "
        "make its cache visible here through HF_HOME (HF_HUB_OFFLINE=1 then loads it without network)."
    )


def revision_note(revision: str | None) -> str:
    """`` (revision 'x')`` for messages, or nothing."""
    return f" (revision {revision!r})" if revision else ""


def _unavailable(what: str, model: str, revision: str | None, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"{what} {model!r}{revision_note(revision)} {why}. " + how_to_point_at_local_model(model))


def local_folder(model: str, what: str = "Model") -> Path:
    """The checkpoint folder ``model`` names; :class:`ModelUnavailableError` if it does not exist,
    :class:`ModelLoadError` if it holds no ``config.json``."""
    path = Path(os.path.expanduser(model))
    if not path.exists():
        raise ModelUnavailableError(f"{what} {model!r}: the local path does not exist. " + how_to_point_at_local_model(model))
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{what} {model!r}: the folder exists but has no config.json, so it is not a transformers "
                             "checkpoint (point at the folder that holds config.json, the weights and the processor files).")
    return path


def check_available(model: str, revision: str | None = None, what: str = "Model") -> None:
    """Cheap pre-flight: a local folder must hold a ``config.json``; a hub id must be in the local cache or
    resolvable on the hub (only ``config.json`` is fetched). Raises :class:`ModelUnavailableError` /
    :class:`ModelLoadError`; loads nothing."""
    if is_local_path(model):
        local_folder(model, what)
        return
    if cached_config(model, revision) is not None:
        return
    if offline_mode():
        raise _unavailable(what, model, revision, "is not in the local Hugging Face cache and offline mode is on "
                                                  "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)")
    if not hub_reachable():
        raise _unavailable(what, model, revision, f"is not in the local Hugging Face cache and the hub ({endpoint()}) "
                                                  "cannot be reached")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(model, "config.json", revision=revision)
    except Exception as exc:  # noqa: BLE001 - repository missing, gated, revision missing, network trouble
        raise _unavailable(what, model, revision, f"cannot be resolved on the hub: {type(exc).__name__}: {exc}") from exc


def source(model: str, revision: str | None = None, what: str = "Model", *, trust_remote_code: bool = False,
           error: type[Exception] | None = None) -> tuple[str, dict]:
    """``(name or folder, kwargs)`` for ``from_pretrained``: ``local_files_only`` for a local folder, offline, or
    a cached model whose hub cannot be reached (instead of retrying for minutes); ``revision`` for hub ids;
    ``trust_remote_code``. Raises :class:`ModelUnavailableError` / :class:`ModelLoadError`, or ``error`` (e.g.
    :class:`EncoderError` for an encoder) with the same message."""
    try:
        if is_local_path(model):
            return str(local_folder(model, what)), {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if offline_mode():
            local_only = True
        elif hub_reachable():
            local_only = False
        elif cached_config(model, revision) is not None:
            local_only = True
        else:
            raise _unavailable(what, model, revision, "is not in the local Hugging Face cache and the hub cannot be reached")
    except (ModelUnavailableError, ModelLoadError) as exc:
        if error is None:
            raise
        raise error(str(exc)) from None
    return model, {"revision": revision, "local_files_only": local_only, "trust_remote_code": trust_remote_code}


def fingerprint(path: Path, sample_bytes: int = 1 << 20) -> str:
    """Content fingerprint of a local checkpoint that does not read all the weights: small text files (configs,
    processor and tokenizer files, chat template) are hashed in full; every other file by name, size and three
    1 MiB samples (start, middle, end), which tells two fine-tunes of one architecture apart."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        if f.suffix in {".json", ".jinja", ".txt", ".model", ".py"} and size < 64 * sample_bytes:
            h.update(f.read_bytes())
            continue
        with f.open("rb") as fh:
            for offset in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
                fh.seek(offset)
                h.update(fh.read(sample_bytes))
    return "local-sha256:" + h.hexdigest()[:16]


def folder_identity(folder: str) -> dict:
    """Identity of a model that is always a local folder: its content fingerprint (``missing:`` if absent)."""
    path = Path(os.path.expanduser(folder))
    return {"local": fingerprint(path) if path.is_dir() else "missing:" + folder}


def model_identity(model: str, revision: str | None = None) -> dict:
    """What identifies a model in cache keys: ``{"model", "revision"}`` for a hub id, ``{"local": fingerprint}``
    for a folder (``missing:<path>`` if it does not exist)."""
    if is_local_path(model):
        return folder_identity(model)
    return {"model": model, "revision": revision}
