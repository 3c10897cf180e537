"""Turn a folder, a CSV list file or a single video into ``VideoRef`` objects.

A video's id is its path relative to the input root (POSIX separators), so moving the whole
input folder keeps ids. Its fingerprint is a sha256 of the file's bytes, never its mtime, so
moving, renaming or touching a file keeps its cache entries.

What is checked before any work starts:

* Only regular files are clips: a FIFO, a socket, a device or a link to one named ``*.mp4`` in a folder is left
  out with a warning and never opened (reading a FIFO waits forever, ``/dev/zero`` never ends); listed in a list
  file, it fails as that clip (:func:`fingerprint`).
* One file reached under several names (``x``, ``sub/../x``, an absolute path, a hard link, a link to it) is one
  clip: counted once under its first name, with a warning, when the labels agree; refused, naming the rows, when
  they do not. Two files with the same content stay two clips (they share their cache entries); the run warns when
  the input labels them differently (:func:`same_content_different_labels`).
* A list file is a regular UTF-8 CSV file with a header naming a ``path`` column (or ``video``, as in
  ``predictions.csv``) and optionally ``label``, in any case (``Path``, ``LABEL``); a row with more fields than the
  header (an unquoted comma) is refused naming ``file:line``. With ``start_s`` and ``end_s`` columns its labels have
  times: a video may have several rows, each a labelled span (``VideoRef.spans``; for segmented runs,
  ``docs/timelines.md``).
* File names that are not UTF-8 are carried as Python holds them (lone surrogates, ``os.fsdecode``); messages
  show such bytes as ``\\xNN`` (:func:`pipeline.core.paths.shown`), and a list file may name them that way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.errors import InputError, UnreadableFileError
from pipeline.core.paths import input_file, kind_of, shown, unshown
from pipeline.eval.spans import Span

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .wmv .flv .3gp .ts .mts .m2ts .ogv".split()
)
PATH_COLUMNS = ("path", "video")
"""The column of a list file that names the clips: ``path``, or ``video`` (the name ``predictions.csv`` uses)."""
MAX_LIST_BYTES = 1 << 30


@dataclass(frozen=True)
class VideoRef:
    id: str
    path: Path
    label: str | None = None
    where: str | None = None
    """``file:line`` of the list file row that named the clip (for error messages)."""
    spans: tuple = ()
    """Labels with times (:class:`pipeline.eval.spans.Span`): a list file with ``start_s``/``end_s`` columns."""


def _scan_folder(root: Path) -> list[VideoRef]:
    """Video files below ``root``, hidden folders and dotfiles left out; linked folders are followed (a dataset
    linked into place), each real folder once (a link back up does not loop). Only regular files are clips."""
    found, seen = [], set()

    def unreadable(err: OSError) -> None:
        warnings.warn(f"{shown(err.filename)}: cannot be read ({err.strerror}); clips inside it are left out", stacklevel=2)

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        for f in files:
            if f.startswith(".") or Path(f).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            try:
                mode = os.stat(Path(folder) / f).st_mode
            except OSError:  # a broken link, or no permission to look: the clip fails, with the reason
                mode = None
            if mode is not None and not stat.S_ISREG(mode):
                warnings.warn(f"{shown(Path(folder) / f)}: is {kind_of(mode)}, not a video file; left out (never "
                              "opened)", stacklevel=2)
                continue
            found.append(rel / f)
    return [VideoRef(p.as_posix(), root / p) for p in sorted(found, key=lambda p: p.parts)]


def _list_text(csv_path: Path) -> str:
    """The list file as text: UTF-8 (a BOM is fine); anything else is an :class:`InputError` that says what it is."""
    input_file(csv_path, what="list file")
    size = csv_path.stat().st_size
    if size > MAX_LIST_BYTES:
        raise InputError(f"{shown(csv_path)}: the list file is {size / 1e9:.1f} GB; is it the right file?")
    raw = csv_path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            what = "UTF-16 text (what spreadsheets save as 'Unicode text')"
        else:
            what = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start} cannot be decoded)"
        raise InputError(f"{shown(csv_path)}: the list file is {what}; save it as 'CSV UTF-8' (comma separated)") from None


def _columns(csv_path: Path, header: list[str] | None) -> tuple[int, int | None, int]:
    """Indices of the path and label columns, and the number of columns, from the header row (the ``start_s`` and
    ``end_s`` columns: :func:`_time_columns`)."""
    names = [h.strip().casefold() for h in header or []]
    path_col = next((names.index(c) for c in PATH_COLUMNS if c in names), None)
    if path_col is None:
        raise InputError(f"{shown(csv_path)}: a list file needs a header row with a 'path' column (or 'video', as in "
                         f"predictions.csv; and an optional 'label'); found columns {header}")
    for name in {*PATH_COLUMNS, "label"}:
        if names.count(name) > 1:
            raise InputError(f"{shown(csv_path)}:1: the header names the column '{name}' {names.count(name)} times")
    return path_col, names.index("label") if "label" in names else None, len(names)


def _time_columns(csv_path: Path, header: list[str]) -> tuple[int, int] | None:
    """Indices of ``start_s`` and ``end_s`` (labels with times; both or neither), None without them."""
    names = [h.strip().casefold() for h in header]
    have = [c for c in ("start_s", "end_s") if c in names]
    if not have:
        return None
    if len(have) == 1:
        raise InputError(f"{shown(csv_path)}:1: the header names '{have[0]}' but not "
                         f"'{({'start_s', 'end_s'} - set(have)).pop()}': labels with times need both columns")
    if "label" not in names:
        raise InputError(f"{shown(csv_path)}:1: the header names start_s and end_s but no 'label' column")
    return names.index("start_s"), names.index("end_s")


def _span(csv_path: Path, line_no: int, row: list[str], cols: tuple[int, int], label: str) -> Span:
    """One labelled span of a list file row (both times empty: the whole video)."""
    cells = [row[c].strip() if c < len(row) else "" for c in cols]
    where = f"{csv_path}:{line_no}"
    if not label:
        raise InputError(f"{shown(csv_path)}:{line_no}: a row with start_s/end_s needs a label")
    if cells == ["", ""]:
        return Span(0.0, None, label, where)
    try:
        start, end = (float(c) for c in cells)
    except ValueError:
        raise InputError(f"{shown(csv_path)}:{line_no}: start_s '{cells[0]}' and end_s '{cells[1]}' must both be "
                         "seconds (numbers), or both empty for the whole video") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise InputError(f"{shown(csv_path)}:{line_no}: start_s {cells[0]} and end_s {cells[1]}: need "
                         "0 <= start_s < end_s")
    return Span(start, end, label, where)


def _existing(raw: str, root: Path) -> str:
    """``raw`` as a path that exists, trying a list written on Windows (``\\`` separators) and names shown with
    ``\\xNN`` escapes; ``raw`` itself when none does (the clip then fails, named)."""
    p = Path(raw)
    if (p if p.is_absolute() else root / p).exists():
        return raw
    for alt in (unshown(raw), raw.replace("\\", "/") if os.sep == "/" else raw):
        q = Path(alt)
        if alt != raw and (q if q.is_absolute() else root / q).exists():
            return alt
    return raw


def _read_list(csv_path: Path) -> list[VideoRef]:
    root = csv_path.parent
    with io.StringIO(_list_text(csv_path), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            path_col, label_col, n_cols = _columns(csv_path, header)
            times = _time_columns(csv_path, header)
            refs, seen = [], {}
            for row in reader:
                line_no = reader.line_num
                if not any(c.strip() for c in row):
                    continue
                if len(row) > n_cols:
                    raise InputError(
                        f"{shown(csv_path)}:{line_no}: {len(row)} fields but the header has {n_cols} columns (a comma "
                        "inside a path or a label? put that field in double quotes: \"a, b.mp4\")")
                raw = row[path_col].strip() if path_col < len(row) else ""
                if not raw:
                    raise InputError(f"{shown(csv_path)}:{line_no}: empty '{header[path_col].strip()}'")
                raw = _existing(raw, root)
                p = Path(raw)
                full = p if p.is_absolute() else root / p
                vid = p.as_posix() if not p.is_absolute() else _id_for_absolute(p, root)
                label = row[label_col].strip() if label_col is not None and label_col < len(row) else ""
                if times is not None:  # labels with times: several rows per video, each a span
                    span = _span(csv_path, line_no, row, times, label)
                    if vid in seen:
                        i = seen[vid]
                        refs[i] = replace(refs[i], spans=(*refs[i].spans, span))
                    else:
                        seen[vid] = len(refs)
                        refs.append(VideoRef(vid, full, None, f"{csv_path}:{line_no}", (span,)))
                    continue
                if vid in seen:
                    raise InputError(f"{shown(csv_path)}:{line_no}: '{shown(raw)}' is listed twice (first on line "
                                     f"{seen[vid]})")
                seen[vid] = line_no
                refs.append(VideoRef(vid, full, label or None, f"{csv_path}:{line_no}"))
        except csv.Error as exc:
            raise InputError(f"{shown(csv_path)}:{reader.line_num}: not a CSV row dfer can read ({exc})") from None
    return refs


def _id_for_absolute(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix().lstrip("/")


def _one_per_file(refs: list[VideoRef]) -> list[VideoRef]:
    """``refs`` with every file that is reached under several names kept once (under its first name, with the label
    the rows give); :class:`InputError` naming the rows when their labels disagree."""
    by_file: dict[tuple[int, int], list[int]] = {}
    for i, ref in enumerate(refs):
        try:
            st = os.stat(ref.path)
        except OSError:
            continue  # fails later as that clip, with the reason
        if stat.S_ISREG(st.st_mode):
            by_file.setdefault((st.st_dev, st.st_ino), []).append(i)
    dropped: set[int] = set()
    kept = {}
    for group in (g for g in by_file.values() if len(g) > 1):
        rows = [refs[i] for i in group]
        names = ", ".join(f"'{shown(r.id)}'" + (f" ({r.where})" if r.where else "") for r in rows)
        labels = {r.label for r in rows if r.label}
        if len(labels) > 1:
            raise InputError(f"one file is listed under {len(rows)} names with different labels: {names}, labelled "
                             f"{', '.join(sorted(labels))}; keep one row per file")
        warnings.warn(f"one file is listed under {len(rows)} names: {names}; it is one clip, "
                      f"'{shown(rows[0].id)}'", stacklevel=3)
        kept[group[0]] = replace(rows[0], label=rows[0].label or next(iter(labels), None))
        dropped.update(group[1:])
    return [kept.get(i, r) for i, r in enumerate(refs) if i not in dropped]


def same_content_different_labels(refs: list[VideoRef], fingerprints: dict[str, str], canonical=str) -> list[str]:
    """Warnings for files with equal content (``fingerprints``: id -> sha256) that the input labels differently
    (``canonical``: a label's canonical name). They stay separate clips; the report counts each with its label."""
    groups: dict[str, list[VideoRef]] = {}
    for ref in refs:
        if ref.label and ref.id in fingerprints:
            groups.setdefault(fingerprints[ref.id], []).append(ref)
    out = []
    for group in groups.values():
        labels = sorted({canonical(r.label) for r in group})
        if len(labels) > 1:
            names = ", ".join(f"'{shown(r.id)}'" + (f" ({r.where})" if r.where else "") for r in group)
            out.append(f"{names} have the same content but the labels {', '.join(labels)}; each is scored and "
                       "reported with its own label")
    return out


def discover(input_path: str | Path) -> list[VideoRef]:
    """Clips named by ``input_path``: a folder (recursive), a ``.csv`` list file or one video file."""
    path = Path(input_path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {shown(path)}")
    if path.is_dir():
        refs = _scan_folder(path)
        if not refs:
            exts = " ".join(sorted(VIDEO_EXTENSIONS))
            raise InputError(f"no video files under {shown(path)} (looked for: {exts})")
        return _one_per_file(refs)
    if path.suffix.lower() in (".csv", ".tsv") or path.suffix.lower() == ".txt":
        if path.suffix.lower() != ".csv":
            raise InputError(f"{shown(path)}: list files must be CSV with a header row 'path[,label]'")
        refs = _read_list(path)
        if not refs:
            raise InputError(f"{shown(path)}: the list file names no clips")
        return _one_per_file(refs)
    input_file(path, what="video file")
    return [VideoRef(path.name, path)]


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file content. Raises OSError (with the path) when the file cannot be read, and
    :class:`UnreadableFileError` for anything but a regular file (never read: a FIFO would wait forever)."""
    h = hashlib.sha256()
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):  # opened without waiting (a FIFO put in its place since would block), then checked again
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(f"{shown(path)}: is {kind_of(mode)}, not a video file (never opened)")
    os.set_blocking(fd, True)
    with open(fd, "rb") as f:
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
