"""Label sets and readers for the official annotation files of DFEW, FERV39k and MAFW.

A label set (``prompts/labels/<name>.yaml``) fixes the canonical label order and the words the VLM is
scored on; its aliases are the spellings found in official files (matched case-insensitively), e.g.
DFEW's numeric ids ``1..7``. Every reader returns ``{video_id: canonical_label}`` and raises
:class:`LabelError` naming the file and line of anything it cannot read. Formats follow
``shared/datasets.md``.

:func:`match_labels` joins those annotation ids with the pipeline's video ids (paths relative to the
input root) and returns what matched, what did not, in both directions: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, NamedTuple

import yaml

from pipeline.core.errors import LabelError
from prompts import DIR as PROMPTS_DIR

LABELS_DIR = PROMPTS_DIR / "labels"
BUILTIN_LABEL_SETS = ("dfew", "ferv39k", "mafw")
LABEL_FORMATS = ("csv", "dfew", "ferv39k", "mafw")


@dataclass(frozen=True)
class Label:
    """One class: the word the VLM is scored on, plus the spellings official files use for it."""

    name: str
    aliases: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)
    """Any other keys of the YAML entry (e.g. a description used by a prompt), kept verbatim."""


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of labels. ``index``/``canonical`` resolve names and aliases case-insensitively."""

    name: str
    labels: tuple[Label, ...]
    source: str = "<memory>"
    _lookup: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise LabelError(f"{self.source}: label set '{self.name}' has no labels")
        lookup: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            for word in (label.name, *label.aliases):
                key = word.strip().casefold()
                if key in lookup and lookup[key] != i:
                    raise LabelError(f"{self.source}: '{word}' is used by both '{self.labels[lookup[key]].name}' "
                                     f"and '{label.name}'")
                lookup[key] = i
        self._lookup.update(lookup)

    @classmethod
    def from_names(cls, name: str, names: Iterable[str], source: str = "<memory>") -> "LabelSet":
        """A label set without aliases (e.g. from a run's ``labelset.json``)."""
        names = list(names)
        dup = [n for n, c in Counter(n.casefold() for n in names).items() if c > 1]
        if dup:
            raise LabelError(f"{source}: duplicate label name(s): {', '.join(dup)}")
        return cls(name, tuple(Label(n) for n in names), source)

    @property
    def names(self) -> list[str]:
        """Canonical label names in label-set order."""
        return [label.name for label in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, word: object) -> bool:
        return str(word).strip().casefold() in self._lookup

    def index(self, word: str, where: str | None = None) -> int:
        """Position of ``word`` (a name or alias, any case). ``where`` ("file:line") goes in the error."""
        i = self._lookup.get(str(word).strip().casefold())
        if i is None:
            prefix = f"{where}: " if where else ""
            raise LabelError(f"{prefix}unknown label '{word}' for label set '{self.name}' ({self.source}); "
                             f"known labels: {', '.join(self.names)} (aliases are matched case-insensitively)")
        return i

    def canonical(self, word: str, where: str | None = None) -> str:
        """Canonical name of ``word`` (a name or alias, any case)."""
        return self.labels[self.index(word, where)].name


# --------------------------------------------------------------------------------------------------
# Loading label sets


def _scalar(node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise LabelError(f"{where}:{node.start_mark.line + 1}: expected a single word, got a list or mapping")
    return node.value


def _mapping(node: yaml.Node, where: str) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise LabelError(f"{where}:{node.start_mark.line + 1}: expected a mapping")
    return {_scalar(k, where): v for k, v in node.value}


def _parse_label_yaml(text: str, source: str) -> LabelSet:
    """Parse label-set YAML from the node tree, so every error can name its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise LabelError(f"{source}: not valid YAML: {e}") from None
    if root is None:
        raise LabelError(f"{source}: empty file")
    top = _mapping(root, source)
    unknown = sorted(set(top) - {"name", "labels", "description", "source"})
    if unknown:
        raise LabelError(f"{source}: unknown top-level key(s) {unknown}; allowed: name, labels, description, source")
    if "name" not in top or "labels" not in top:
        raise LabelError(f"{source}: a label set needs 'name' and 'labels'")
    set_name = _scalar(top["name"], source)
    seq = top["labels"]
    if not isinstance(seq, yaml.SequenceNode):
        raise LabelError(f"{source}:{seq.start_mark.line + 1}: 'labels' must be a list")
    labels: list[Label] = []
    seen: dict[str, tuple[str, int]] = {}  # casefolded word -> (label name, line)
    for item in seq.value:
        line = item.start_mark.line + 1
        entry = _mapping(item, source)
        if "name" not in entry:
            raise LabelError(f"{source}:{line}: label entry without 'name'")
        name = _scalar(entry["name"], source).strip()
        aliases: list[tuple[int, str]] = []  # (line, alias)
        if "aliases" in entry:
            al = entry["aliases"]
            if isinstance(al, yaml.SequenceNode):
                aliases = [(a.start_mark.line + 1, _scalar(a, source).strip()) for a in al.value]
            elif not (isinstance(al, yaml.ScalarNode) and al.value in ("", "null", "~")):
                raise LabelError(f"{source}:{al.start_mark.line + 1}: 'aliases' must be a list")
        name_line = entry["name"].start_mark.line + 1
        for word_line, word in [(name_line, name)] + aliases:
            key = word.casefold()
            if not key:
                raise LabelError(f"{source}:{word_line}: empty label name or alias")
            if key in seen:
                other, other_line = seen[key]
                if other == name and word != name:  # an alias repeating its own name in another case
                    continue
                raise LabelError(f"{source}:{word_line}: duplicate label name/alias '{word}' in label '{name}' "
                                 f"(already used by label '{other}' at line {other_line})")
            seen[key] = (name, word_line)
        extra = {k: yaml.safe_load(yaml.serialize(v)) for k, v in entry.items() if k not in ("name", "aliases")}
        labels.append(Label(name, tuple(a for _, a in aliases), extra))
    return LabelSet(set_name, tuple(labels), source)


def load_label_set(name_or_path: str | Path) -> LabelSet:
    """Load a built-in label set (``dfew``, ``ferv39k``, ``mafw``) or a user YAML file."""
    text_name = str(name_or_path)
    if text_name in BUILTIN_LABEL_SETS:
        path = LABELS_DIR / f"{text_name}.yaml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise LabelError(f"label set '{name_or_path}' is neither a built-in ({', '.join(BUILTIN_LABEL_SETS)}) "
                             f"nor an existing YAML file")
    return _parse_label_yaml(path.read_text(encoding="utf-8"), str(path))


# --------------------------------------------------------------------------------------------------
# Annotation readers


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


def read_mafw_split(path: str | Path, label_set: LabelSet | None = None) -> dict[str, str]:
    """Read a MAFW split txt: ``00025.mp4 anger`` (no_caption, CRLF) or the with_caption variant
    (TAB separated, GBK, captions in columns 3-4, which are ignored). ``.mp4`` is stripped from ids.

    Compound labels (``anger_disgust``) are unknown to the 11-class set and raise an error; pass a
    label set containing them to read the compound benchmark."""
    label_set = label_set or load_label_set("mafw")
    return _collect((where, vid[:-4] if vid.casefold().endswith(".mp4") else vid, label)
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


# --------------------------------------------------------------------------------------------------
# Matching annotation ids to pipeline video ids


class LabelMatch(NamedTuple):
    matched: dict[str, str]
    """pipeline video id -> canonical label"""
    unlabeled_videos: list[str]
    """pipeline video ids with no annotation (in input order)"""
    labels_without_video: list[str]
    """annotation ids no video matched (sorted)"""


def _norm(vid: str) -> str:
    return PurePosixPath(vid.replace("\\", "/")).as_posix()


def _no_ext(vid: str) -> str:
    p = PurePosixPath(vid)
    # Only strip a real extension (with a letter), so ids such as "clip.001" keep their number.
    return p.with_suffix("").as_posix() if p.suffix and any(c.isalpha() for c in p.suffix) else vid


def match_labels(label_map: Mapping[str, str], video_ids: Iterable[str]) -> LabelMatch:
    """Match pipeline video ids to annotation ids.

    Tried in order, first hit wins: (1) the same id; (2) the same id once extensions are removed;
    (3) path suffix: the annotation id equals the last path components of the video id
    (``clips/00025.mp4`` ~ ``00025``, ``2_ClipsforFaceCrop/Action/Sad/0010`` ~ ``Action/Sad/0010``),
    longest suffix first; (4) the reverse, the video id is a suffix of the annotation id (its stem
    at least: ``0010`` ~ ``Action/Sad/0010``). A step with several candidates is ambiguous: the video
    stays unlabeled and a warning lists it. Several videos matching one annotation are all labelled,
    with a warning.
    """
    video_ids = list(video_ids)
    exact = {_norm(k): k for k in label_map}
    by_noext: dict[str, list[str]] = {}
    by_parts: dict[tuple[str, ...], list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for k in label_map:
        key = _no_ext(_norm(k))
        by_noext.setdefault(key, []).append(k)
        by_parts.setdefault(tuple(key.split("/")), []).append(k)
        by_stem.setdefault(key.split("/")[-1], []).append(k)

    matched: dict[str, str] = {}
    used: dict[str, list[str]] = {}
    unlabeled: list[str] = []
    ambiguous: list[str] = []
    for vid in video_ids:
        norm = _norm(vid)
        key = _no_ext(norm)
        parts = tuple(key.split("/"))
        candidates: list[str] = [exact[norm]] if norm in exact else by_noext.get(key, [])
        for n in range(len(parts) - 1, 0, -1):  # (3) annotation id = last n components of the video id
            if candidates:
                break
            candidates = by_parts.get(parts[-n:], [])
        if not candidates:  # (4) the video id is the tail of annotation ids
            candidates = [k for k in by_stem.get(parts[-1], [])
                          if tuple(_no_ext(_norm(k)).split("/"))[-len(parts):] == parts]
        if len(candidates) == 1:
            matched[vid] = label_map[candidates[0]]
            used.setdefault(candidates[0], []).append(vid)
        else:
            if candidates:
                ambiguous.append(f"{vid} -> {sorted(candidates)[:3]}")
            unlabeled.append(vid)
    if ambiguous:
        warnings.warn(f"{len(ambiguous)} video(s) match several annotation ids and stay unlabeled: "
                      + "; ".join(ambiguous[:5]))
    shared = {k: v for k, v in used.items() if len(v) > 1}
    if shared:
        warnings.warn(f"{len(shared)} annotation id(s) matched by several videos, e.g. "
                      + "; ".join(f"{k}: {v}" for k, v in list(shared.items())[:5]))
    without_video = sorted(k for k in label_map if k not in used)
    return LabelMatch(matched, unlabeled, without_video)
