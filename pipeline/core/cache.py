"""Content-addressed artifact cache that checks what it reads.

Layout: ``CACHE/<stage>/<key[:2]>/<key>/`` holding ``meta.json`` plus plain data files (JSON, ``.npz`` read with
``allow_pickle=False``, JPEG/PNG, safetensors). An artifact is built in a temporary sibling directory and renamed
into place, so a reader never sees a half-written one: the final directory exists only once complete. No pickle
anywhere. ``docs/cache.md`` describes it for users.

Keys are sha256 over canonical JSON (sorted keys, no whitespace, UTF-8) of: stage name, stage VERSION, the stage's
own key config, upstream artifact keys, the clip's content fingerprint and stage-specific extras (model identity,
prompt hashes). Nothing machine-specific goes in. The key is not the meta: what ``meta.json`` records never
changes a key.

Integrity (``format_version`` 2): ``meta.json`` records the size and sha256 of every file of the artifact
(``files``, computed when the artifact is written) and its own sha256 (``meta_sha256``, over its other fields as
canonical JSON). Every read goes through :class:`Artifact` (``meta``, ``bytes``, ``json``, ``npz``), which checks
the bytes against that record before it decodes them: a file missing, truncated, changed, or that does not decode
raises :class:`DamagedArtifactError` naming the stage, the clip, the key and the file. :meth:`Cache.quarantine`
moves such an artifact to ``CACHE/damaged/<stage>/<key>/`` (the runner does, then recomputes it), so it is never
used again. Artifacts of format 1 (written before hashes were recorded) can only be checked by decoding them.

A cache that cannot be used at all (read-only, its disk full, its directory gone) is a failure of the run, not of
a clip: :func:`cache_fault` turns the ``OSError`` into :class:`CacheUnusableError` or :class:`DiskFullError`,
which stop the run with one message.

Small records (last inputs of a stage for a clip, remembered failures, input fingerprints) are one JSON object
each with its own sha256 (:func:`write_record`); one that does not match counts as missing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import platform
import shutil
import socket
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.core.errors import (CacheUnusableError, DamagedArtifactError, DiskFullError, RunStopError,
                                  is_disk_full)
from pipeline.core.files import json_text, write_atomic

FORMAT_VERSION = 2
"""1: no hashes; 2: ``meta.json`` records ``files`` (size, sha256 of each) and ``meta_sha256``."""
META = "meta.json"
DAMAGED = "damaged"
"""``CACHE/damaged/<stage>/<key>/``: damaged artifacts moved aside (with ``damage.json``: what was wrong)."""
ENV_CACHE = "DFER_CACHE"
_CHUNK = 1 << 20


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
    return json_text(obj, sort_keys=True, separators=(",", ":"))


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


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in chunks."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_json(data: bytes) -> Any:
    """Strict JSON from bytes: UTF-8, no NaN/Infinity (nothing dfer writes has them)."""
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)


def _meta_digest(meta: dict) -> str:
    return sha256_json({k: v for k, v in meta.items() if k != "meta_sha256"})


class ArtifactWriter:
    """Writes the files of one artifact into its temporary directory."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        """Where to write file ``name`` yourself (its hash is recorded like the others')."""
        return self.root / name

    def json(self, name: str, obj: Any) -> None:
        (self.root / name).write_text(json_text(obj, indent=1), encoding="utf-8")

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
    """A complete artifact on disk (read-only view). Every read checks what it reads (module docstring) and raises
    :class:`DamagedArtifactError` when it does not match; the meta is read (and checked) once per object."""

    stage: str
    key: str
    root: Path
    _meta: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------------------------ naming
    def clip(self) -> str:
        """The clip this artifact is of (``video_id`` of its meta), as well as a damaged meta tells."""
        vid = self._meta.get("video_id")
        if vid is None:
            try:
                vid = json.loads((self.root / META).read_text(encoding="utf-8", errors="replace")).get("video_id")
            except (OSError, ValueError, AttributeError):
                vid = None
        return str(vid) if vid is not None else "(unknown: its meta.json cannot be read)"

    def damaged(self, file: str, problem: str) -> DamagedArtifactError:
        """The error for a damaged ``file`` of this artifact."""
        return DamagedArtifactError(
            f"damaged in cache: {self.stage} artifact {self.key[:12]} of clip {self.clip()} (cache "
            f"{self.root.parent.parent.parent}): {file}: {problem}", self.stage, self.key, file, problem)

    # ------------------------------------------------------------------------------------ reads
    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """What the file system says while file ``name`` is read, as the artifact's damage or the cache's fault."""
        try:
            yield
        except FileNotFoundError:
            if not self.root.is_dir():
                raise self.damaged(name, "is missing (the whole artifact folder is gone)") from None
            raise self.damaged(name, "is missing") from None
        except PermissionError as exc:
            raise cache_fault(exc, self.root.parent.parent.parent, f"reading {self.stage} artifact {self.key[:12]}") from None
        except OSError as exc:  # an I/O error, a folder in place of the file, ...
            raise self.damaged(name, f"cannot be read ({exc.strerror or exc})") from None

    def _read(self, name: str) -> bytes:
        with self._reading(name):
            return (self.root / name).read_bytes()

    def _record(self, name: str) -> dict | None:
        """The size and sha256 ``meta.json`` recorded for file ``name`` (None: an artifact of format 1, which records
        none); a file it does not record is damage."""
        files = self.meta().get("files")
        if files is None:
            return None
        record = files.get(name)
        if record is None:
            raise self.damaged(name, "is not one of the artifact's files (its meta.json does not record it)")
        return record

    def meta(self) -> dict:
        """``meta.json``, checked: JSON, of this stage and key, and (format 2) its own recorded sha256."""
        if self._meta:
            return self._meta
        try:
            meta = loads_json(self._read(META))
        except ValueError as exc:  # UnicodeDecodeError included
            raise self.damaged(META, f"is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise self.damaged(META, "is not a JSON object")
        if meta.get("stage") != self.stage or meta.get("key") != self.key:
            raise self.damaged(META, f"names another artifact ({meta.get('stage')!r}, {str(meta.get('key'))[:12]!r})")
        version = meta.get("format_version")
        if version == 1:
            pass  # written before hashes were recorded: nothing to check it against
        elif version == FORMAT_VERSION:
            try:
                sound = meta.get("meta_sha256") == _meta_digest(meta)
            except TypeError:
                sound = False
            if not sound:
                raise self.damaged(META, "its content differs from the sha256 it recorded of itself")
            files = meta.get("files")
            if not (isinstance(files, dict) and all(
                    isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("sha256"), str)
                    for r in files.values())):
                raise self.damaged(META, "has no valid record of the artifact's files")
        else:
            raise self.damaged(META, f"has format_version {version!r}; this dfer reads 1 and {FORMAT_VERSION}")
        object.__setattr__(self, "_meta", meta)
        return meta

    @property
    def hashed(self) -> bool:
        """Whether its meta records its files' hashes (format 2), so reads check every byte."""
        return "files" in self.meta()

    def files(self) -> list[str]:
        """Names of the artifact's data files: those its meta records (format 2), else those in its folder."""
        meta = self.meta()
        if "files" in meta:
            return sorted(meta["files"])
        try:
            return sorted(p.name for p in self.root.iterdir() if p.name != META)
        except OSError as exc:
            raise self.damaged(".", f"cannot be listed ({exc.strerror or exc})") from None

    def bytes(self, name: str) -> bytes:
        """The bytes of file ``name``, checked against their recorded size and sha256 (format 2)."""
        record = self._record(name)
        data = self._read(name)
        if record is not None:
            if len(data) != record["size"]:
                how = "truncated" if len(data) < record["size"] else "grown"
                raise self.damaged(name, f"has {len(data)} bytes, {record['size']} were written ({how})")
            if hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise self.damaged(name, "its bytes differ from those written (sha256 does not match the one recorded)")
        return data

    def byte_range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of file ``name`` without reading the rest (a segment's crops out of a long clip's
        crops file). Checked: the file has the size it was written with and holds the range; its content is not
        hashed here (that needs every byte) but was when the runner checked the artifact before using it
        (:func:`pipeline.engine.cachecheck.check_artifact`), and a reader checks what it decodes."""
        record = self._record(name)
        with self._reading(name):
            with open(self.root / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if record is not None and size != record["size"]:
                    how = "truncated" if size < record["size"] else "grown"
                    raise self.damaged(name, f"has {size} bytes, {record['size']} were written ({how})")
                if not 0 <= start <= stop <= size:
                    raise self.damaged(name, f"has {size} bytes, bytes {start}-{stop} were asked for")
                f.seek(start)
                return f.read(stop - start)

    def sequential(self, name: str) -> "SequentialRead":
        """File ``name`` read front to back in ranges (:meth:`SequentialRead.take`), hashed as it is read; ``close``
        reads the rest and checks the size and sha256 recorded (format 2), so a whole pass over a long clip's crops is
        as checked as :meth:`bytes` without holding the file in memory."""
        record = self._record(name)
        with self._reading(name):
            f = open(self.root / name, "rb")  # SequentialRead closes it
        return SequentialRead(self, name, f, record)

    def json(self, name: str) -> Any:
        data = self.bytes(name)
        try:
            return loads_json(data)
        except ValueError as exc:
            raise self.damaged(name, f"is not valid JSON ({exc})") from None

    def npz(self, name: str) -> dict[str, np.ndarray]:
        data = self.bytes(name)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise self.damaged(name, f"is not a readable .npz ({type(exc).__name__}: {exc})") from None

    def verify(self, decode: bool = False) -> None:
        """Check every file of the artifact: its bytes against the recorded hashes (format 2; format 1 has none, so
        its ``.json`` and ``.npz`` files are decoded instead), and with ``decode`` every ``.json`` and ``.npz``
        decoded too. Raises :class:`DamagedArtifactError` at the first problem."""
        decode = decode or not self.hashed
        for name in self.files():
            if decode and name.endswith(".json"):
                self.json(name)
            elif decode and name.endswith(".npz"):
                self.npz(name)
            else:
                self.bytes(name)


class SequentialRead:
    """See :meth:`Artifact.sequential`: ``take(start, stop)`` with ranges in ascending order, then ``close()``."""

    def __init__(self, artifact: Artifact, name: str, f, record: dict | None):
        self.artifact, self.name, self._f, self.record = artifact, name, f, record
        self._hash = hashlib.sha256()
        self._pos = 0
        self._buf = b""  # the bytes read but not yet taken past: [self._pos - len(self._buf), self._pos)

    def _block(self, size: int) -> bytes:
        with self.artifact._reading(self.name):  # an I/O error half-way is the artifact's damage too
            return self._f.read(size)

    def _read_to(self, stop: int) -> None:
        while self._pos < stop:
            block = self._block(max(stop - self._pos, 1 << 20))
            if not block:
                raise self.artifact.damaged(self.name, f"ends at byte {self._pos}, byte {stop} was asked for (truncated)")
            self._hash.update(block)
            self._buf += block
            self._pos += len(block)

    def take(self, start: int, stop: int) -> bytes:
        base = self._pos - len(self._buf)
        if start < base:
            raise ValueError(f"{self.name}: bytes {start}-{stop} asked for after byte {base} (ranges must ascend)")
        self._read_to(stop)
        data = self._buf[start - base : stop - base]
        self._buf = self._buf[stop - base :]
        return data

    def abandon(self) -> None:
        """Close the file without reading the rest (a pass cut short by an error: nothing to check)."""
        self._f.close()
        self._buf = b""

    def close(self) -> None:
        """Read the rest; the size and sha256 must be those recorded (DamagedArtifactError)."""
        try:
            while block := self._block(1 << 20):
                self._hash.update(block)
                self._pos += len(block)
        finally:
            self._f.close()
            self._buf = b""
        if self.record is not None:
            if self._pos != self.record["size"]:
                how = "truncated" if self._pos < self.record["size"] else "grown"
                raise self.artifact.damaged(self.name, f"has {self._pos} bytes, {self.record['size']} were written ({how})")
            if self._hash.hexdigest() != self.record["sha256"]:
                raise self.artifact.damaged(self.name, "its bytes differ from those written (sha256 does not match the "
                                                       "one recorded)")


def cache_fault(exc: OSError, root: Path, doing: str) -> RunStopError:
    """The error that stops a run when the cache at ``root`` cannot be used for ``doing`` (``exc``: what the file
    system said): its disk is full, it is gone, or it cannot be written (read-only, permission, I/O error)."""
    where = f" ({exc.filename})" if exc.filename else ""
    again = "then run the same command again: what is finished stays in the cache"
    if is_disk_full(exc):
        return DiskFullError(f"stopped: the disk is full ({doing}: {exc.strerror or exc}{where}). Free space on the "
                             f"disk of the cache ({root}) and the run directory, or pass --cache on a larger one, {again}")
    if not root.is_dir():
        return CacheUnusableError(f"stopped: the cache directory {root} is gone ({doing}: {exc.strerror or exc}): it "
                                  "was deleted, moved or unmounted while the run used it. Make it available again or "
                                  "pass --cache DIR, then run the same command again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return CacheUnusableError(f"stopped: the cache {root} cannot be used ({doing}: {exc.strerror}{where}). Make it "
                                  f"writable (and readable), or pass --cache DIR on a writable disk, {again} (a read-only "
                                  "cache serves a run only when everything the run needs is in it)")
    return CacheUnusableError(f"stopped: the cache {root} cannot be used ({doing}: {exc.strerror or exc}{where}). Check "
                              f"its disk, or pass --cache DIR on another one, {again}")


def _is_hex(name: str, n: int) -> bool:
    return len(name) == n and all(c in "0123456789abcdef" for c in name)


class Cache:
    """The artifact store under one root directory. ``create_root=False``: writes never create the root directory
    itself (a run's cache, made once by :meth:`create`: one that vanishes during the run stays vanished and stops
    the run, instead of being silently made again, empty)."""

    def __init__(self, root: str | Path, create_root: bool = True):
        self.root = Path(root).expanduser()
        self.create_root = create_root
        self._root_id: tuple[int, int] | None = None

    def fault(self, exc: OSError, doing: str) -> RunStopError:
        return cache_fault(exc, self.root, doing)

    def create(self) -> None:
        """Make the root directory (a run does, before anything else touches the cache) and remember which it is,
        so that :meth:`check_root` notices one deleted or replaced during the run."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            st = self.root.stat()
        except OSError as exc:
            raise self.fault(exc, "creating the cache directory") from None
        self._root_id = (st.st_dev, st.st_ino)

    def check_root(self) -> None:
        """Raise :class:`CacheUnusableError` if the root directory :meth:`create` made is gone (or another in its
        place: artifacts the run relies on went with the old one)."""
        if not self.root.is_dir():
            raise self.fault(FileNotFoundError(errno.ENOENT, "No such file or directory", str(self.root)),
                             "the run went to read or write it")
        st = self.root.stat()
        if self._root_id is not None and (st.st_dev, st.st_ino) != self._root_id:
            raise CacheUnusableError(f"stopped: the cache directory {self.root} was replaced by another folder during "
                                     "the run (what the run computed went with the old one); run the same command again")

    def dir_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def get(self, stage: str, key: str) -> Artifact | None:
        """The artifact of ``key`` if there is one (unchecked: reads check; :meth:`Artifact.verify` checks all)."""
        d = self.dir_for(stage, key)
        return Artifact(stage, key, d) if d.is_dir() else None

    def artifacts(self, stage: str | None = None) -> Iterator[Artifact]:
        """Every artifact in the cache (of ``stage``), by its place in the layout, sorted."""
        stages = [self.root / stage] if stage else sorted(p for p in self.root.iterdir() if p.is_dir())
        for sdir in stages:
            if not sdir.is_dir():
                continue
            for sub in sorted(p for p in sdir.iterdir() if _is_hex(p.name, 2) and p.is_dir()):
                for d in sorted(p for p in sub.iterdir() if _is_hex(p.name, 64) and p.is_dir()):
                    yield Artifact(sdir.name, d.name, d)

    # --- damage ---------------------------------------------------------------------------
    def damaged_dir(self, stage: str, key: str) -> Path:
        return self.root / DAMAGED / stage / key

    def quarantine(self, stage: str, key: str, message: str) -> Path | None:
        """Move a damaged artifact (``message``: what is wrong) out of the cache, to ``CACHE/damaged/<stage>/<key>/``
        with a ``damage.json`` saying what was wrong (an earlier copy there is replaced), so nothing reads it again
        and the next lookup finds no artifact. Returns where it went; None when it was already gone. Raises
        :class:`CacheUnusableError` when the cache cannot be changed (read-only)."""
        src = self.dir_for(stage, key)
        if not src.is_dir():
            return None
        dest = self.damaged_dir(stage, key)
        try:
            self._mkdirs(dest.parent)
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(src, dest)
        except FileNotFoundError:
            if not self.root.is_dir():
                raise self.fault(FileNotFoundError(errno.ENOENT, "No such file or directory", str(self.root)),
                                 f"moving a damaged {stage} artifact aside") from None
            return None  # another run moved it first
        except OSError as exc:
            raise self.fault(exc, f"moving a damaged {stage} artifact aside") from None
        try:
            write_record(dest / "damage.json", {"stage": stage, "key": key, "message": message,
                                                "moved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        except OSError:
            pass  # the move is what matters
        return dest

    def was_damaged(self, stage: str, key: str) -> bool:
        """Whether an artifact of this key was moved aside as damaged (and not recomputed since)."""
        return self.damaged_dir(stage, key).is_dir()

    # --- writing --------------------------------------------------------------------------
    def _mkdirs(self, d: Path) -> None:
        """``d`` under the root; the root itself only with ``create_root``."""
        if self.create_root:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self.root))
        for p in reversed([p for p in [d, *d.parents] if len(p.parts) > len(self.root.parts)]):
            p.mkdir(exist_ok=True)

    def _ours(self, exc: OSError, tmp: Path) -> bool:
        """Whether an ``OSError`` raised while a stage filled an artifact is the cache's (not the clip's)."""
        names = [n for n in (exc.filename, getattr(exc, "filename2", None)) if n]
        return (is_disk_full(exc) or exc.errno == errno.EROFS or not tmp.is_dir()
                or any(Path(os.path.abspath(n)).is_relative_to(os.path.abspath(self.root)) for n in names))

    def write(
        self,
        stage: str,
        key: str,
        meta: dict,
        fill: Callable[[ArtifactWriter], dict | None],
        replace: bool = False,
    ) -> Artifact:
        """Build an artifact with ``fill(writer)`` in a temp sibling, record its files' sizes and hashes, then
        rename it into place.

        ``fill`` may return extra metadata to record. If another process completed the same key first, its
        artifact is kept (same key, same content) and ours is discarded, unless ``replace`` (``--force``) asks to
        swap the old one out. An ``OSError`` of the cache itself (read-only, full, gone) raises
        :func:`cache_fault`'s error; one of the stage's own (reading its input) propagates as it is.
        """
        final = self.dir_for(stage, key)
        doing = f"{meta.get('video_id', key[:12])}: stage {stage} could not write its artifact"
        tmp = final.parent / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self._mkdirs(final.parent)
            tmp.mkdir()
        except OSError as exc:
            raise self.fault(exc, doing) from None
        try:
            t0 = time.time()
            try:
                extra = fill(ArtifactWriter(tmp)) or {}
            except OSError as exc:
                if self._ours(exc, tmp):
                    raise self.fault(exc, doing) from None
                raise
            try:
                self._publish(stage, key, meta, extra, tmp, final, replace, time.time() - t0)
            except OSError as exc:
                raise self.fault(exc, doing) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(stage, key, final)

    def _publish(self, stage, key, meta, extra, tmp: Path, final: Path, replace: bool, seconds: float) -> None:
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                size, digest = file_sha256(p)
                files[p.relative_to(tmp).as_posix()] = {"size": size, "sha256": digest}
        full = dict(meta)
        full.update(extra)
        full.update(
            stage=stage,
            key=key,
            format_version=FORMAT_VERSION,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            compute_seconds=round(seconds, 4),
            host=socket.gethostname(),
            python=platform.python_version(),
            packages=_package_versions(),
            files=files,
        )
        full = json.loads(json.dumps(full, ensure_ascii=False, allow_nan=False))  # as a reader will see it
        full["meta_sha256"] = _meta_digest(full)
        with open(tmp / META, "w", encoding="utf-8") as f:
            f.write(json_text(full, indent=1))  # json.dump's bytes; a name that is not UTF-8 as \udcXX escapes
            f.flush()
            os.fsync(f.fileno())
        if replace and final.exists():
            old = final.parent / f".old-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / META).is_file():  # another process finished the same key first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise

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

    # --- small records ----------------------------------------------------------------------
    def _write_record(self, p: Path, record: dict, what: str) -> None:
        try:
            self._mkdirs(p.parent)
            write_record(p, record)
        except OSError as exc:
            raise self.fault(exc, f"writing {what}") from None

    # "why was this recomputed" bookkeeping
    def _last_path(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / "last" / f"{fingerprint}.json"

    def last_inputs(self, stage: str, fingerprint: str) -> dict | None:
        """What the last computed artifact of this stage for this clip content was keyed on."""
        return read_record(self._last_path(stage, fingerprint))

    def record_last(self, stage: str, fingerprint: str, record: dict) -> None:
        self._write_record(self._last_path(stage, fingerprint), record, f"the {stage} stage's record of a clip")

    # failures the same inputs would repeat (errors.REMEMBERED_FAILURES)
    def _failed_path(self, stage: str, key: str) -> Path:
        return self.root / stage / "failed" / f"{key}.json"

    def failure(self, stage: str, key: str) -> dict | None:
        """The failure row (``error``, ``message``) an earlier run recorded for this artifact key, if any."""
        row = read_record(self._failed_path(stage, key))
        return row if isinstance(row, dict) and isinstance(row.get("error"), str) and isinstance(row.get("message"), str) else None

    def record_failure(self, stage: str, key: str, row: dict) -> None:
        self._write_record(self._failed_path(stage, key), row, f"the remembered failure of a {stage} clip")

    def forget_failure(self, stage: str, key: str) -> None:
        try:
            self._failed_path(stage, key).unlink(missing_ok=True)
        except OSError as exc:
            raise self.fault(exc, f"removing the remembered failure of a {stage} clip") from None


RECORD_HASH = "record_sha256"


def read_record(p: Path) -> dict | None:
    """A record :func:`write_record` wrote; None when there is none, or it is not JSON, or its content does not match
    the sha256 it recorded of itself (damaged, or written before records had one)."""
    try:
        rec = loads_json(p.read_bytes())
    except (FileNotFoundError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get(RECORD_HASH), str):
        return None
    digest = rec.pop(RECORD_HASH)
    try:
        return rec if sha256_json(rec) == digest else None
    except TypeError:
        return None


def write_record(p: Path, record: dict) -> None:
    """A small JSON record with its own sha256, written whole or not at all (:func:`pipeline.core.files.write_atomic`;
    not fsync'ed: a hint, one lost in a power cut is recomputed, and fsync costs 6 ms a record)."""
    write_atomic(p, canonical_json({**record, RECORD_HASH: sha256_json(record)}), fsync=False)
