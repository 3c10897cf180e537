"""Content-addressed artifact cache.

Layout: ``CACHE/<stage>/<key[:2]>/<key>/`` holding ``meta.json`` plus plain data files
(JSON, ``.npz`` read with ``allow_pickle=False``, JPEG/PNG, safetensors). An artifact is built in a
temporary sibling directory and renamed into place, so a reader never sees a half-written one:
the final directory exists only once complete. No pickle anywhere.

Keys are sha256 over canonical JSON (sorted keys, no whitespace, UTF-8) of: stage name, stage
VERSION, the stage's own key config, upstream artifact keys, the clip's content fingerprint and
stage-specific extras (model identity, prompt hashes). Nothing machine-specific goes in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import socket
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.errors import CacheError

FORMAT_VERSION = 1
ENV_CACHE = "DFER_CACHE"


def default_cache_dir() -> Path:
    """``$DFER_CACHE``, else ``$XDG_CACHE_HOME/dfer``, else ``~/.cache/dfer``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dfer"


def _check_json(obj: Any, where: str = "$") -> None:
    if obj is None or isinstance(obj, (bool, int, str)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"cannot hash non-finite float at {where}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"non-string key {k!r} at {where}")
            _check_json(v, f"{where}.{k}")
        return
    raise TypeError(f"cannot hash object of type {type(obj).__name__} at {where}; convert it to JSON data first")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators. Fails loudly on anything not JSON."""
    _check_json(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def artifact_key(
    stage: str,
    version: int,
    config: dict,
    upstream: dict[str, str],
    fingerprint: str,
    extras: dict | None = None,
) -> str:
    """The cache key of one stage's artifact for one clip."""
    return sha256_json(
        {
            "stage": stage,
            "version": version,
            "config": config,
            "upstream": upstream,
            "fingerprint": fingerprint,
            "extras": extras or {},
        }
    )


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("dfer-pipeline", "torch", "transformers", "av", "facenet-pytorch", "numpy", "opencv-python-headless"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class ArtifactWriter:
    """Writes the files of one artifact into its temporary directory."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def json(self, name: str, obj: Any) -> None:
        with open(self.root / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, allow_nan=False, indent=1)

    def npz(self, name: str, **arrays: np.ndarray) -> None:
        """An ``.npz`` readable by ``np.load(allow_pickle=False)``, byte-identical for equal arrays
        (fixed zip timestamps, sorted members), so artifacts can be compared across machines."""
        with zipfile.ZipFile(self.root / name, "w", compression=zipfile.ZIP_STORED) as zf:
            for k in sorted(arrays):
                a = np.asarray(arrays[k])
                if a.dtype == object:
                    raise TypeError(f"{name}:{k} is an object array; only plain dtypes are stored")
                info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)

    def bytes(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)


@dataclass(frozen=True)
class Artifact:
    """A complete artifact on disk (read-only view)."""

    stage: str
    key: str
    root: Path

    def meta(self) -> dict:
        return json.loads((self.root / "meta.json").read_text(encoding="utf-8"))

    def path(self, name: str) -> Path:
        p = self.root / name
        if not p.exists():
            raise CacheError(f"{self.stage} artifact {self.key[:12]} has no file {name}")
        return p

    def json(self, name: str) -> Any:
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path(name), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


class Cache:
    """The artifact store under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def dir_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def get(self, stage: str, key: str) -> Artifact | None:
        d = self.dir_for(stage, key)
        if (d / "meta.json").is_file():
            return Artifact(stage, key, d)
        return None

    def write(
        self,
        stage: str,
        key: str,
        meta: dict,
        fill: Callable[[ArtifactWriter], dict | None],
        replace: bool = False,
    ) -> Artifact:
        """Build an artifact with ``fill(writer)`` in a temp sibling, then rename it into place.

        ``fill`` may return extra metadata to record. If another process completed the same key
        first, its artifact is kept (same key, same content) and ours is discarded, unless
        ``replace`` (``--force``) asks to swap the old one out.
        """
        final = self.dir_for(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            t0 = time.time()
            extra = fill(ArtifactWriter(tmp)) or {}
            full = dict(meta)
            full.update(extra)
            full.update(
                stage=stage,
                key=key,
                format_version=FORMAT_VERSION,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                compute_seconds=round(time.time() - t0, 4),
                host=socket.gethostname(),
                python=platform.python_version(),
                packages=_package_versions(),
            )
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(full, f, ensure_ascii=False, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            if replace and final.exists():
                old = final.parent / f".old-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / "meta.json").is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(stage, key, final)

    def sweep_stale(self, stage: str, older_than_s: float = 24 * 3600) -> int:
        """Remove temporary directories that a killed run left behind (none of their files changed
        for ``older_than_s``). They were never visible as artifacts; this only frees disk space."""
        removed = 0
        now = time.time()
        for tmp in (self.root / stage).glob("*/.tmp-*"):
            try:
                newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
            except OSError:
                continue
            if now - newest > older_than_s:
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed

    # --- "why was this recomputed" bookkeeping -------------------------------------------
    def _last_path(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / "last" / f"{fingerprint}.json"

    def last_inputs(self, stage: str, fingerprint: str) -> dict | None:
        """What the last computed artifact of this stage for this clip content was keyed on."""
        return read_record(self._last_path(stage, fingerprint))

    def record_last(self, stage: str, fingerprint: str, record: dict) -> None:
        write_record(self._last_path(stage, fingerprint), record)

    # --- failures the same inputs would repeat (errors.REMEMBERED_FAILURES) ---------------
    def _failed_path(self, stage: str, key: str) -> Path:
        return self.root / stage / "failed" / f"{key}.json"

    def failure(self, stage: str, key: str) -> dict | None:
        """The failure row (``error``, ``message``) an earlier run recorded for this artifact key, if any."""
        return read_record(self._failed_path(stage, key))

    def record_failure(self, stage: str, key: str, row: dict) -> None:
        write_record(self._failed_path(stage, key), row)

    def forget_failure(self, stage: str, key: str) -> None:
        self._failed_path(stage, key).unlink(missing_ok=True)


def read_record(p: Path) -> dict | None:
    """A record :func:`write_record` wrote; None when there is none or it is not JSON."""
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None


def write_record(p: Path, record: dict) -> None:
    """A small JSON record, written whole or not at all."""
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(canonical_json(record), encoding="utf-8")
    os.replace(tmp, p)
