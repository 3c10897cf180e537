"""Joining annotation ids with the pipeline's video ids (paths relative to the input root): :func:`match_labels`
returns what matched and what did not, in both directions, so nothing is dropped silently."""

from __future__ import annotations

import warnings
from pathlib import PurePosixPath
from typing import Iterable, Mapping, NamedTuple


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
