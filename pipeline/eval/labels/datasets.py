"""Readers for the official annotation files of DFEW, FERV39k and MAFW (formats as in ``shared/datasets.md``), and
:func:`read_labels`, which reads any of the ``LABEL_FORMATS``. Each returns ``{video_id: canonical_label}``."""

from __future__ import annotations

import warnings
from pathlib import Path

from pipeline.core.errors import LabelError
from pipeline.eval.labels.files import labels_by_id, labels_from_rows, read_csv_rows, read_lines, read_label_csv
from pipeline.eval.labels.sets import LabelSet, load_label_set

LABEL_FORMATS = ("csv", "dfew", "ferv39k", "mafw")

def _dfew_split_file(root: Path, fold: int | None, split: str | None) -> Path:
    if root.is_file():
        return root
    if fold not in (1, 2, 3, 4, 5):
        raise LabelError(f"DFEW fold must be 1..5, got {fold!r}")
    if split not in ("train", "test"):
        raise LabelError(f"DFEW split must be 'train' or 'test', got {split!r}")
    # Folder spellings: hyphen (every reader) and underscore (official zip names); S2D renames files
    # to train_set_k.csv (shared/datasets.md, DFEW "Release layout").
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
    rows, id_col, label_col = read_csv_rows(path, ("video_name",))
    return labels_from_rows(path, rows, id_col, label_col, label_set, lambda v: v.zfill(5) if v.isdigit() else v)


def _split_words(path: Path, label_set: LabelSet, tab_first: bool) -> list[tuple[str, str, str]]:
    """(where, id, canonical label) from lines of ``<id> <label> ...`` (TAB-separated if present)."""
    out = []
    for no, line in read_lines(path):
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
    out = labels_by_id(rows)
    mismatched = [f"{where} ({vid} labelled {label})" for where, vid, label in rows
                  if len(parts := vid.split("/")) >= 2 and parts[-2] in label_set and label_set.canonical(parts[-2]) != label]
    if mismatched:
        warnings.warn(f"{len(mismatched)} FERV39k line(s) whose label differs from the emotion folder "
                      f"in the path, e.g. {', '.join(mismatched[:5])}")
    return out


def read_mafw_split(path: str | Path, label_set: LabelSet | None = None) -> dict[str, str]:
    """Read a MAFW split txt: ``00025.mp4 anger`` (no_caption, CRLF) or the with_caption variant
    (TAB separated, GBK, captions in columns 3-4, which are ignored). ``.mp4`` is stripped from ids.

    Compound labels (``anger_disgust``) are unknown to the 11-class set and raise an error; pass a
    label set containing them to read the compound benchmark."""
    label_set = label_set or load_label_set("mafw")
    return labels_by_id((where, vid[:-4] if vid.casefold().endswith(".mp4") else vid, label)
                    for where, vid, label in _split_words(Path(path), label_set, tab_first=True))


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
    return read_mafw_split(path, label_set)
