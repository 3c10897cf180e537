"""Readers of annotation files: the generic ``video,label`` CSV, ``label,count`` frequency tables, and the official
files of DFEW, FERV39k and MAFW (formats: ``docs/evaluation.md``, from each dataset's release); :func:`read_labels` reads any of the
``LABEL_FORMATS``. Each returns ``{video_id: canonical_label}`` (counts: ``{label: count}``) and raises
:class:`LabelError` naming the file and line of anything it cannot read; text is UTF-8 or GBK."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Iterable

from pipeline.core.errors import LabelError
from pipeline.eval.labels.sets import LabelSet, load_label_set

LABEL_FORMATS = ("csv", "dfew", "ferv39k", "mafw")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of non-blank lines; UTF-8 (BOM tolerated) or else GBK; CR stripped."""
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gbk"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise LabelError(f"{path}: neither UTF-8 nor GBK text")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(i, line) for i, line in enumerate(lines, 1) if line.strip()]


def _collect(rows: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """``{video id: label}`` from ``(where, video id, label)`` rows; an id listed twice warns (same label) or is an
    error naming both lines (another label)."""
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    for where, vid, label in rows:
        if vid not in out:
            out[vid], first[vid] = label, where
        elif out[vid] != label:
            raise LabelError(f"{where}: '{vid}' is labelled '{label}' but was labelled '{out[vid]}' at {first[vid]}")
        else:
            warnings.warn(f"{where}: '{vid}' is listed twice with the same label (first at {first[vid]})")
    return out


def _read_csv_rows(path: Path, id_columns: tuple[str, ...]) -> tuple[list[tuple[int, list[str]]], int, int]:
    """Rows of a CSV with a header naming one of ``id_columns`` and ``label``; returns rows and the
    positions of the id and label columns."""
    lines = _read_lines(path)
    if not lines:
        raise LabelError(f"{path}: empty file")
    rows = [(no, next(csv.reader(io.StringIO(text)))) for no, text in lines]
    header_no, header = rows[0]
    cols = [c.strip().casefold() for c in header]
    id_col = next((cols.index(c) for c in id_columns if c in cols), None)
    if id_col is None or "label" not in cols:
        raise LabelError(f"{path}:{header_no}: expected a header with columns {' or '.join(id_columns)} and 'label', "
                         f"got {header}")
    return rows[1:], id_col, cols.index("label")


def _cells(path, rows, key_col: int, label_col: int) -> Iterable[tuple[str, str, str]]:
    """``("file:line", key cell, label cell)`` of each row (stripped); a row too short is an error naming its line."""
    for no, row in rows:
        where = f"{path}:{no}"
        if len(row) <= max(key_col, label_col):
            raise LabelError(f"{where}: expected at least {max(key_col, label_col) + 1} columns, got {row}")
        yield where, row[key_col].strip(), row[label_col].strip()


def _from_rows(path, rows, id_col, label_col, label_set, fix_id=lambda v: v) -> dict[str, str]:
    def read():
        for where, vid, label in _cells(path, rows, id_col, label_col):
            vid = fix_id(vid)
            if not vid:
                raise LabelError(f"{where}: empty video id")
            yield where, vid, label_set.canonical(label, where)

    return _collect(read())


def read_label_csv(path: str | Path, label_set: LabelSet) -> dict[str, str]:
    """Read a generic CSV with header ``video,label`` (or ``path,label``); extra columns are ignored."""
    path = Path(path)
    rows, id_col, label_col = _read_csv_rows(path, ("video", "path"))
    return _from_rows(path, rows, id_col, label_col, label_set)


def read_label_counts(path: str | Path, label_set: LabelSet) -> dict[str, float]:
    """A CSV with header ``label,count`` (other columns ignored; e.g. how often each emotion word occurs in a web
    corpus): ``{canonical label: count}``. A missing column, a label not in ``label_set`` (names and aliases match),
    a label listed twice, or a count that is not a positive number is a :class:`LabelError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: label frequency file not found")
    rows, count_col, label_col = _read_csv_rows(path, ("count",))
    out: dict[str, float] = {}
    first: dict[str, str] = {}
    for where, text, word in _cells(path, rows, count_col, label_col):
        label = label_set.canonical(word, where)
        try:
            count = float(text)
        except ValueError:
            raise LabelError(f"{where}: count {text!r} of '{label}' is not a number") from None
        if not math.isfinite(count) or count <= 0:
            raise LabelError(f"{where}: count {text!r} of '{label}' must be a positive number (log scale)")
        if label in out:
            raise LabelError(f"{where}: '{label}' is listed twice (first at {first[label]})")
        out[label], first[label] = count, where
    return out


def _dfew_split_file(root: Path, fold: int | None, split: str | None) -> Path:
    if root.is_file():
        return root
    if fold not in (1, 2, 3, 4, 5):
        raise LabelError(f"DFEW fold must be 1..5, got {fold!r}")
    if split not in ("train", "test"):
        raise LabelError(f"DFEW split must be 'train' or 'test', got {split!r}")
    # Folder spellings: hyphen (every reader) and underscore (official zip names); S2D renames files
    # to train_set_k.csv (DFEW's release layout, see docs/evaluation.md).
    tried = [
        base / folder / name
        for base in (root, root / "EmoLabel_DataSplit")
        for folder in (f"{split}(single-labeled)", f"{split}(single_labeled)")
        for name in (f"set_{fold}.csv", f"{split}_set_{fold}.csv")
    ]
    found = [p for p in tried if p.is_file()]
    if not found:
        raise LabelError(f"no DFEW {split} split for fold {fold} under {root}; looked for:\n  "
                         + "\n  ".join(map(str, tried)))
    if len(found) > 1:
        warnings.warn(f"several DFEW split files match, using {found[0]}: {', '.join(map(str, found[1:]))}")
    return found[0]


def read_dfew_split(path_or_root: str | Path, fold: int | None = None, split: str | None = None,
                    label_set: LabelSet | None = None) -> dict[str, str]:
    """Read DFEW ``set_<fold>.csv`` (header ``video_name,label``, labels 1..7, 1-based).

    ``path_or_root`` is the CSV itself, or the dataset root / ``EmoLabel_DataSplit`` folder, in which
    case ``fold`` (1..5) and ``split`` ('train'/'test') pick the file. Ids are zero-padded to 5 digits.
    """
    path = _dfew_split_file(Path(path_or_root), fold, split)
    label_set = label_set or load_label_set("dfew")
    rows, id_col, label_col = _read_csv_rows(path, ("video_name",))
    return _from_rows(path, rows, id_col, label_col, label_set, lambda v: v.zfill(5) if v.isdigit() else v)


def _split_words(path: Path, label_set: LabelSet, tab_first: bool) -> list[tuple[str, str, str]]:
    """(where, id, canonical label) from lines of ``<id> <label> ...`` (TAB-separated if present)."""
    out = []
    for no, line in _read_lines(path):
        where = f"{path}:{no}"
        parts = line.split("\t") if tab_first and "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise LabelError(f"{where}: expected '<video> <label>', got {line!r}")
        out.append((where, parts[0], label_set.canonical(parts[1], where)))
    return out


def read_ferv39k_split(path: str | Path, label_set: LabelSet | None = None) -> dict[str, str]:
    """Read FERV39k ``train_All.csv`` / ``test_All.csv``: space separated, no header,
    ``Action/Sad/0010 Sad``. Warns when the label word differs from the emotion folder in the path."""
    label_set = label_set or load_label_set("ferv39k")
    rows = _split_words(Path(path), label_set, tab_first=False)
    out = _collect(rows)
    mismatched = [f"{where} ({vid} labelled {label})" for where, vid, label in rows
                  if len(parts := vid.split("/")) >= 2 and parts[-2] in label_set and label_set.canonical(parts[-2]) != label]
    if mismatched:
        warnings.warn(f"{len(mismatched)} FERV39k line(s) whose label differs from the emotion folder "
                      f"in the path, e.g. {', '.join(mismatched[:5])}")
    return out


def _mafw_split_file(root: Path, fold: int | None, split: str | None) -> Path:
    """``set_<fold>/<split>.txt`` of MAFW's single-label, no-caption benchmark under ``root``: the release's
    ``Train & Test Set`` folder, the dataset root above it, or a ``.../no_caption`` folder itself (also the
    compound benchmark's, given with its label set); a file is itself."""
    if root.is_file():
        return root
    if fold not in (1, 2, 3, 4, 5):
        raise LabelError(f"MAFW fold must be 1..5, got {fold!r}")
    if split not in ("train", "test"):
        raise LabelError(f"MAFW split must be 'train' or 'test', got {split!r}")
    tried = [base / f"set_{fold}" / f"{split}.txt"
             for base in (root, root / "single" / "no_caption", root / "Train & Test Set" / "single" / "no_caption",
                          root / "split" / "single" / "no_caption")]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise LabelError(f"no MAFW {split} split for fold {fold} under {root}; looked for:\n  "
                         + "\n  ".join(map(str, tried)))
    return found


def read_mafw_split(path: str | Path, label_set: LabelSet | None = None, fold: int | None = None,
                    split: str | None = None) -> dict[str, str]:
    """Read a MAFW split txt: ``00025.mp4 anger`` (no_caption, CRLF) or the with_caption variant
    (TAB separated, GBK, captions in columns 3-4, which are ignored). ``.mp4`` is stripped from ids.
    ``path`` is the file, or a folder above ``set_<fold>/<split>.txt`` (:func:`_mafw_split_file`).

    Compound labels (``anger_disgust``) are unknown to the 11-class set and raise an error; pass a
    label set containing them to read the compound benchmark."""
    label_set = label_set or load_label_set("mafw")
    path = _mafw_split_file(Path(path), fold, split)
    return _collect((where, vid[:-4] if vid.casefold().endswith(".mp4") else vid, label)
                    for where, vid, label in _split_words(path, label_set, tab_first=True))


def read_labels(path: str | Path, label_format: str = "csv", label_set: LabelSet | None = None,
                fold: int | None = None, split: str | None = None) -> dict[str, str]:
    """Dispatch to the reader for ``label_format`` (one of ``LABEL_FORMATS``)."""
    if label_format not in LABEL_FORMATS:
        raise LabelError(f"unknown label format '{label_format}'; allowed: {', '.join(LABEL_FORMATS)}")
    if not Path(path).exists():
        raise LabelError(f"{path}: no such labels file or folder")
    if label_format == "csv":
        if label_set is None:
            raise LabelError("label format 'csv' needs a label set")
        return read_label_csv(path, label_set)
    if label_format == "dfew":
        return read_dfew_split(path, fold, split, label_set)
    if label_format == "ferv39k":
        return read_ferv39k_split(path, label_set)
    return read_mafw_split(path, label_set, fold, split)
