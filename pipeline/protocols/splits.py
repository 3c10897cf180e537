"""The folds of a dataset's protocol, read from its official split files, matched to the clips of the input, and
checked to be disjoint.

Protocols (:data:`PROTOCOLS`): ``dfew`` (``EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv``, labels
1..7) and ``mafw`` (``Train & Test Set/single/no_caption/set_<k>/{train,test}.txt``, label words), five folds each;
the readers are :mod:`pipeline.eval.labels` (every spelling of the folders they know). A fold's train and test
clips are the input's clips whose ids match the split files' ids (:func:`pipeline.eval.labels.match_labels`: ``00025``
~ ``clips/00025.mp4``); ids of the split files without a clip in the input are counted. No clip may be on both sides
of a fold: by content fingerprint (:mod:`pipeline.engine.disjoint`), so a copy under another name counts too.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.errors import ConfigError, InputError
from pipeline.engine.disjoint import check_disjoint
from pipeline.engine.fingerprints import FingerprintMemo
from pipeline.engine.inputs import VideoRef
from pipeline.eval.labels import LabelSet, match_labels, read_labels


@dataclass(frozen=True)
class Protocol:
    name: str
    label_format: str  # the reader of its split files
    label_set: str  # the label set its scores are over (classify.labels)
    folds: int


PROTOCOLS = {"dfew": Protocol("dfew", "dfew", "dfew", 5), "mafw": Protocol("mafw", "mafw", "mafw", 5)}


@dataclass
class FoldSplit:
    """One fold: its training and test clips (refs carrying their true labels), the ids its split files list that no
    clip of the input matched, and the training-test overlap (clip ids) where it was allowed."""

    fold: int
    train: list[VideoRef]
    test: list[VideoRef]
    missing: dict[str, int]  # split -> ids without a clip
    overlap: list[str]
    fingerprints: dict[str, str]  # video id -> content fingerprint, both sides

    def counts(self, names: list[str]) -> dict[str, int]:
        """Training clips per class, in label-set order (the prior of the fold's report)."""
        c = Counter(r.label for r in self.train)
        return {n: int(c.get(n, 0)) for n in names}


def parse_folds(text: str, protocol: Protocol) -> list[int]:
    """``1-5``, ``2``, ``1,3,5``: the folds to run, each in 1..``protocol.folds``."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--folds expects fold numbers such as 1-5 or 1,3, got {text!r}") from None
    bad = [k for k in out if not 1 <= k <= protocol.folds]
    if not out or bad or len(set(out)) < len(out):
        raise ConfigError(f"--folds {text}: {protocol.name} has folds 1..{protocol.folds}, each named once")
    return out


def _side(refs_by_id: dict[str, VideoRef], labels: dict[str, str]) -> tuple[list[VideoRef], int]:
    """The input's clips a split file lists, with their labels, and how many listed ids match no clip."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an id matching several clips is an error here, not a note
        try:
            matched, _, without = match_labels(labels, list(refs_by_id))
        except UserWarning as exc:
            raise InputError(f"the split files' ids do not match the input's clips one to one: {exc}") from None
    return [replace(refs_by_id[v], label=lab) for v, lab in matched.items()], len(without)


def read_folds(refs: list[VideoRef], splits: str | Path, protocol: Protocol, folds: list[int], label_set: LabelSet,
               cache_root: Path, allow_overlap: bool = False) -> list[FoldSplit]:
    """Every fold's clips (see the module docstring), all read and checked before anything runs: an unreadable
    split file is a :class:`pipeline.eval.labels.LabelError`, a fold without a test or training clip an
    :class:`InputError`, a clip on both sides an :class:`pipeline.core.errors.OverlapError` (unless allowed)."""
    by_id = {r.id: r for r in refs}
    memo = FingerprintMemo(cache_root)
    out = []
    for k in folds:
        sides, missing = {}, {}
        for split in ("train", "test"):
            annotations = read_labels(splits, protocol.label_format, label_set, k, split)
            sides[split], missing[split] = _side(by_id, annotations)
            if not sides[split]:
                raise InputError(f"fold {k}: none of the {len(annotations)} clips of its {split} split (in {splits}) "
                                 "is in the input; is INPUT the folder of the dataset's clips?")
        fps = {}
        for r in sides["train"] + sides["test"]:
            try:
                fps[r.id] = memo.fingerprint(r.path)
            except OSError:
                continue  # the run records it as the clip's failure
        pairs = check_disjoint({r.id: fps.get(r.id) for r in sides["train"]}, {r.id: fps.get(r.id) for r in sides["test"]},
                               f"fold {k}'s training clips", f"fold {k}'s test split", allow_overlap)
        out.append(FoldSplit(k, sides["train"], sides["test"], missing, [t for t, _ in pairs], fps))
    return out
