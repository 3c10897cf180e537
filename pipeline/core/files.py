"""The one way dfer writes a whole file, and the JSON text it writes.

Every whole-file write of the project (run directory files, the report and its plots, the view page, the
sweep's table, the cache's small records, checkpoints' pointers, ...) goes through :func:`write_atomic` or
:func:`atomic_path`: the content goes to a temporary sibling (``.NAME.tmp-<pid>-<random>``, same folder so the
rename cannot cross file systems), is flushed and fsync'ed, and is renamed over the destination with
``os.replace``. A reader sees the old file or the new one, never half of one; a write that fails (a full disk, a
name the file system refuses, an exception while rendering) removes its temporary file and leaves the old file as
it was. Replacing never follows a link at the destination: a link named ``report.md`` is replaced by the file,
its target is not touched. ``tests/test_hostile_inputs.py`` checks that no other whole-file write exists.

Files written row by row on purpose (``failures.jsonl``, ``manifest.jsonl``, ``scores.jsonl``,
``predictions.csv``: a killed run keeps every finished row) and the files inside a cache artifact's temporary
folder (renamed into place as a whole folder) are the exceptions; they are named in that test.

File names that are not valid UTF-8 (``caf\\xe9.mp4`` from an old archive) reach Python as ``str`` with lone
surrogates (``os.fsdecode``). :func:`json_text` writes each such character as the JSON escape ``\\udcXX``: the
file stays valid UTF-8 and ``json.loads`` gives back the same ``str`` (``os.fsencode`` then the original bytes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

_SURROGATE = re.compile("[\ud800-\udfff]")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (e.g. ``fig.savefig(tmp, format="png")``); when the block ends
    without an exception it is fsync'ed and renamed over ``path``, else removed. The parent folder is created.
    ``fsync=False``: not forced to disk (for records whose loss in a power cut costs nothing but a recomputation;
    the rename is atomic either way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; when the block ends without an exception it takes the place of ``path``
    (an earlier folder there is renamed aside and then removed), else it is removed. Readers see the old folder or
    the new one (for a moment neither), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            old = _tmp_sibling(path)
            os.rename(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | Path, data: str | bytes, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``data`` (text in ``encoding``, or bytes) as the whole content of ``path``, atomically (``fsync``: see
    :func:`atomic_path`)."""
    raw = data.encode(encoding) if isinstance(data, str) else data
    path = Path(path)
    with atomic_path(path, fsync) as tmp:
        with open(tmp, "xb") as f:
            f.write(raw)
    return path


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure as an image file, atomically (the format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


def open_stream(path: str | Path, newline: str | None = None) -> TextIO:
    """A text file (UTF-8) written row by row on purpose, so that a killed run keeps every finished row (JSON Lines
    logs, ``predictions.csv``). What was at ``path`` is removed first (a link too, never what it points to)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    return open(path, "x", encoding="utf-8", newline=newline)


def json_text(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)`` whose lone surrogates (file names that
    are not UTF-8) are written as ``\\udcXX`` escapes, so the text always encodes to UTF-8 and reads back equal."""
    kwargs.setdefault("ensure_ascii", False)
    kwargs.setdefault("allow_nan", False)
    text = json.dumps(obj, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, newline: bool = False) -> Path:
    """``obj`` as a JSON file (:func:`json_text`), atomically."""
    return write_atomic(path, json_text(obj, indent=indent) + ("\n" if newline else ""))
