"""The train/validation split of every tool that trains or probes: by video (or group), stratified by label.

Each group (default: each video) goes wholly to one side, so frames or clips of one source never end up on
both. Per class (of a group's most common label), ``round_half_up(val_fraction * n)`` groups go to validation,
at least one and never all of them when the class has two or more groups; a class with one group stays in
training. Groups are ranked by a seeded hash of their id, so the split depends neither on list order nor on
the other classes, and a new clip does not move the others.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Sequence

import numpy as np


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode("utf-8")).hexdigest()


def stratified_split(videos: Sequence[str], labels: Sequence[str], val_fraction: float, seed: int = 0,
                     groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices into ``videos`` (see the module docstring). ``val_fraction=0``: everything
    is training."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if len(videos) != len(labels):
        raise ValueError(f"{len(videos)} videos but {len(labels)} labels")
    groups = list(groups) if groups is not None else list(videos)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_class: dict[str, list[str]] = {}
    for g, idx in members.items():
        by_class.setdefault(Counter(labels[i] for i in idx).most_common(1)[0][0], []).append(g)
    val_groups: set[str] = set()
    if val_fraction > 0:
        for gs in by_class.values():
            if len(gs) < 2:
                continue
            n_val = min(len(gs) - 1, max(1, math.floor(val_fraction * len(gs) + 0.5)))
            val_groups.update(sorted(gs, key=lambda g: _rank(seed, g))[:n_val])
    val = np.array([i for i, g in enumerate(groups) if g in val_groups], dtype=np.int64)
    train = np.array([i for i, g in enumerate(groups) if g not in val_groups], dtype=np.int64)
    return train, val
