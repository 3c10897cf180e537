"""Label sets: the canonical label order and the words the VLM is scored on (``prompts/labels/<name>.yaml``).

A label set's aliases are the spellings found in official files (matched case-insensitively), e.g. DFEW's numeric
ids ``1..7``. Errors are :class:`LabelError` naming the file and line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from pipeline.core.errors import LabelError
from pipeline.core.yamlsafe import compose_yaml
from prompts import DIR as PROMPTS_DIR

LABELS_DIR = PROMPTS_DIR / "labels"
BUILTIN_LABEL_SETS = ("dfew", "ferv39k", "mafw")


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
    root = compose_yaml(text, source, LabelError)  # aliases bounded, as in every YAML dfer reads
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
