"""Turn a folder, a CSV list file or a single video into ``VideoRef`` objects.

A video's id is its path relative to the input root (POSIX separators), so moving the whole
input folder keeps ids. Its fingerprint is a sha256 of the file's bytes, never its mtime, so
moving, renaming or touching a file keeps its cache entries.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .wmv .flv .3gp .ts .mts .m2ts .ogv".split()
)


@dataclass(frozen=True)
class VideoRef:
    id: str
    path: Path
    label: str | None = None
    where: str | None = None
    """``file:line`` of the list file row that named the clip (for error messages)."""


def _scan_folder(root: Path) -> list[VideoRef]:
    """Video files below ``root``, hidden folders and dotfiles left out; linked folders are followed (a dataset
    linked into place), each real folder once (a link back up does not loop)."""
    found, seen = [], set()

    def unreadable(err: OSError) -> None:
        warnings.warn(f"{err.filename}: cannot be read ({err.strerror}); clips inside it are left out", stacklevel=2)

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [rel / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return [VideoRef(p.as_posix(), root / p) for p in sorted(found, key=lambda p: p.parts)]


def _list_text(csv_path: Path) -> str:
    """The list file as text: UTF-8 (a BOM is fine); anything else is an :class:`InputError` that says what it is."""
    raw = csv_path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            what = "UTF-16 text (what spreadsheets save as 'Unicode text')"
        else:
            what = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start} cannot be decoded)"
        raise InputError(f"{csv_path}: the list file is {what}; save it as 'CSV UTF-8' (comma separated)") from None


def _read_list(csv_path: Path) -> list[VideoRef]:
    root = csv_path.parent
    with io.StringIO(_list_text(csv_path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in [c.strip() for c in reader.fieldnames]:
            raise InputError(
                f"{csv_path}: a list file needs a header row with a 'path' column (and optional 'label'); "
                f"found columns {reader.fieldnames}"
            )
        refs, seen = [], {}
        for line_no, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            raw = row.get("path", "")
            if not raw:
                raise InputError(f"{csv_path}:{line_no}: empty 'path'")
            if "\\" in raw and os.sep == "/" and not (root / raw).exists():  # a list written on Windows
                raw = raw.replace("\\", "/")
            p = Path(raw)
            full = p if p.is_absolute() else root / p
            vid = p.as_posix() if not p.is_absolute() else _id_for_absolute(p, root)
            if vid in seen:
                raise InputError(f"{csv_path}:{line_no}: '{raw}' is listed twice (first on line {seen[vid]})")
            seen[vid] = line_no
            refs.append(VideoRef(vid, full, row.get("label") or None, f"{csv_path}:{line_no}"))
    return refs


def _id_for_absolute(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix().lstrip("/")


def discover(input_path: str | Path) -> list[VideoRef]:
    """Clips named by ``input_path``: a folder (recursive), a ``.csv`` list file or one video file."""
    path = Path(input_path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        refs = _scan_folder(path)
        if not refs:
            exts = " ".join(sorted(VIDEO_EXTENSIONS))
            raise InputError(f"no video files under {path} (looked for: {exts})")
        return refs
    if path.suffix.lower() in (".csv", ".tsv") or path.suffix.lower() == ".txt":
        if path.suffix.lower() != ".csv":
            raise InputError(f"{path}: list files must be CSV with a header row 'path[,label]'")
        refs = _read_list(path)
        if not refs:
            raise InputError(f"{path}: the list file names no clips")
        return refs
    return [VideoRef(path.name, path)]


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file content. Raises OSError (with the path) when the file cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def shard_of(video_id: str, n: int) -> int:
    """Deterministic shard of a clip (stable across machines, folder moves and list order)."""
    return int(hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:8], 16) % n


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` with 0 <= i < N."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise InputError(f"--shard expects i/N (e.g. 0/8), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need 0 <= i < N")
    return i, n
