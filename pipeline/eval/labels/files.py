"""Annotation files read line by line: the text of a file (UTF-8 or GBK), a CSV with a header naming its id and
``label`` columns, the generic ``video,label`` list, and ``label,count`` frequency tables. Every reader returns
canonical labels and raises :class:`LabelError` naming the file and line of anything it cannot read."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Iterable

from pipeline.core.errors import LabelError
from pipeline.eval.labels.sets import LabelSet


def read_lines(path: Path) -> list[tuple[int, str]]:
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


def labels_by_id(rows: Iterable[tuple[str, str, str]]) -> dict[str, str]:
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


def read_csv_rows(path: Path, id_columns: tuple[str, ...]) -> tuple[list[tuple[int, list[str]]], int, int]:
    """Rows of a CSV with a header naming one of ``id_columns`` and ``label``; returns rows and the
    positions of the id and label columns."""
    lines = read_lines(path)
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


def labels_from_rows(path, rows, id_col, label_col, label_set, fix_id=lambda v: v) -> dict[str, str]:
    def read():
        for where, vid, label in _cells(path, rows, id_col, label_col):
            vid = fix_id(vid)
            if not vid:
                raise LabelError(f"{where}: empty video id")
            yield where, vid, label_set.canonical(label, where)

    return labels_by_id(read())


def read_label_csv(path: str | Path, label_set: LabelSet) -> dict[str, str]:
    """Read a generic CSV with header ``video,label`` (or ``path,label``); extra columns are ignored."""
    path = Path(path)
    rows, id_col, label_col = read_csv_rows(path, ("video", "path"))
    return labels_from_rows(path, rows, id_col, label_col, label_set)


def read_label_counts(path: str | Path, label_set: LabelSet) -> dict[str, float]:
    """A CSV with header ``label,count`` (other columns ignored; e.g. how often each emotion word occurs in a web
    corpus): ``{canonical label: count}``. A missing column, a label not in ``label_set`` (names and aliases match),
    a label listed twice, or a count that is not a positive number is a :class:`LabelError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: label frequency file not found")
    rows, count_col, label_col = read_csv_rows(path, ("count",))
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
