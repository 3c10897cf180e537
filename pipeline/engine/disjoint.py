"""Training and test clips must be different clips: the one check of every pair of clip sets that must not share a
clip (an adapter's training clips and a run's clips, a fold's train and test splits, the run a tau is chosen on and
the run it is applied to).

Clips are compared by content fingerprint (the sha256 of the file, :mod:`pipeline.engine.fingerprints`), so a clip
copied or renamed between the two sets still counts as the same clip. An overlap stops the command with an
:class:`OverlapError` naming the clips, unless the caller allows it (``--allow-overlap``), when it is only counted.
"""

from __future__ import annotations

from typing import Mapping

from pipeline.core.errors import OverlapError

LIST_LIMIT = 10


def overlap(train: Mapping[str, str | None], test: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """``(test id, train id)`` of every test clip whose fingerprint is also a training clip's (``{id: fingerprint}``;
    a None fingerprint, a file that could not be read, matches nothing), in test order."""
    by_fp: dict[str, str] = {}
    for vid, fp in train.items():
        if fp is not None:
            by_fp.setdefault(fp, vid)
    return [(vid, by_fp[fp]) for vid, fp in test.items() if fp is not None and fp in by_fp]


def check_disjoint(train: Mapping[str, str | None], test: Mapping[str, str | None], train_what: str, test_what: str,
                   allow: bool = False, allow_how: str = "--allow-overlap") -> list[tuple[str, str]]:
    """The overlap of ``train`` and ``test`` (:func:`overlap`); :class:`OverlapError` when there is one and
    ``allow`` is false (``train_what``/``test_what`` name the two sets in the message, ``allow_how`` the way out)."""
    pairs = overlap(train, test)
    if pairs and not allow:
        shown = ", ".join(f"{t}" + (f" (= {r})" if r != t else "") for t, r in pairs[:LIST_LIMIT])
        more = f" and {len(pairs) - LIST_LIMIT} more" if len(pairs) > LIST_LIMIT else ""
        raise OverlapError(f"{len(pairs)} of the {len(test)} clips of {test_what} are also among {train_what} (the "
                           f"same file content): {shown}{more}. Test clips must not be training clips; "
                           f"pass {allow_how} to go on anyway (the overlap is then recorded)")
    return pairs
