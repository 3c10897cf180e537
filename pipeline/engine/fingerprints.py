"""Content fingerprints of the input videos, remembered in the cache so that a warm run need not read
every video again.

A clip's fingerprint is the sha256 of its bytes (:func:`pipeline.engine.inputs.fingerprint`); it goes into
every cache key. Computing it means reading the whole file, which on a dataset that is already fully
cached costs more than everything else a run does. So the cache keeps one small memo per file,
``CACHE/fingerprints/<h[:2]>/<h>.json`` (``h`` = sha256 of the file's absolute path), holding the
path, size, modification time (ns), inode and the sha256. A memo entry is used only when the file's
size, mtime and inode all still match; otherwise the file is hashed again and the entry replaced.
Entries are written to a temporary sibling and renamed into place, so a run never reads a half-written
one and two runs sharing a cache can write the same entry at once. An unreadable or malformed entry
counts as missing. ``dfer run --rehash`` ignores the memo (and rewrites it), for files changed in place
without a change of size or mtime (e.g. restored with their old timestamps).

A memo entry only saves reading the file: the fingerprint, and so every cache key, is the content hash
either way.

The same stamp guards the run against a file that changes while it is read: a file whose stamp moved while it
was hashed is hashed again, and after a stage that reads the video (``Stage.reads_video``) has read it,
:func:`check_unchanged` compares the stamp again (rehashing when it moved), so that what was computed from new
content is never cached under the key of the old one (:class:`VideoChangedError`: a failure row naming the file).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.core.cache import read_record, write_record
from pipeline.core.errors import VideoChangedError
from pipeline.core.jobs import ClipJob
from pipeline.engine.inputs import fingerprint

MEMO_DIR = "fingerprints"


def stamp(path: Path) -> dict:
    """What the memo compares: absolute path, size, modification time (ns) and inode (OSError when it cannot)."""
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def changed_message(path, when: str) -> str:
    return (f"{path}: changed while it was read ({when}: its size, modification time or content are not those it had "
            "when the run fingerprinted it); nothing computed from it was cached. Run the same command again once the "
            "file is complete: it is then taken as it is")


class FingerprintMemo:
    """Fingerprints of files, remembered under ``cache_root`` (``rehash``: always read the file)."""

    def __init__(self, cache_root: str | Path, rehash: bool = False):
        self.root = Path(cache_root).expanduser() / MEMO_DIR
        self.rehash = rehash

    def _entry(self, path: Path) -> Path:
        h = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()
        return self.root / h[:2] / f"{h}.json"

    def fingerprint(self, path: str | Path) -> str:
        """The sha256 of the file's content; OSError (with the path) when the file cannot be read."""
        return self.fingerprint_and_stamp(path)[0]

    def fingerprint_and_stamp(self, path: str | Path) -> tuple[str, dict]:
        """The sha256 of the file's content and the stamp (:func:`stamp`) it is the hash of. OSError (with the path)
        when the file cannot be read; :class:`VideoChangedError` when it changed while it was hashed."""
        path = Path(path).absolute()
        now = stamp(path)
        entry = self._entry(path)
        if not self.rehash:
            try:
                memo = read_record(entry)
            except OSError:
                memo = None  # an entry we cannot read: hash the file
            if isinstance(memo, dict) and {k: memo.get(k) for k in now} == now and isinstance(memo.get("sha256"), str):
                return memo["sha256"], now
        value = fingerprint(path)
        if stamp(path) != now:
            raise VideoChangedError(changed_message(path, "while it was fingerprinted"))
        try:
            write_record(entry, {**now, "sha256": value})
        except OSError:
            pass  # a read-only cache still works, only without the memo
        return value, now


def check_unchanged(job: ClipJob, stage: str) -> None:
    """After stage ``stage`` has read ``job``'s file: raise :class:`VideoChangedError` if the file is no longer the one
    fingerprinted (its stamp moved and its content hash differs; a stamp that moved over the same content is fine)."""
    if job.stamp is None:
        return
    path = Path(job.stamp["path"])
    try:
        if stamp(path) == job.stamp or fingerprint(path) == job.fingerprint:
            return
    except OSError:
        pass  # removed or unreadable now: changed as well
    raise VideoChangedError(changed_message(job.path, f"by stage {stage}"))
