"""Cache keys of the model-free stages are pinned.

A cache key is the identity of an artifact on every machine that shares a cache: if refactoring the
runner, the config or the stage interface changes the key of ``faces`` or ``keyframes`` for the same
clip and the same settings, every existing cache silently stops matching and a user pays for a full
recompute (face detection is the expensive part of a run). The expected keys below were computed with
the code as it was before the restructuring of issue 12, on a clip committed to the repository (so its
content fingerprint is fixed), with the default settings and with one set of non-default settings. They
may change only on purpose: a stage's VERSION bump or a change of what its config means, and then this
file is updated in the same commit, saying why.

History: faces, as of commit d55cb6a; keyframes re-pinned for keyframes VERSION 2 (lead-in/lead-out gaps,
issue 11, commit 3971874), computed with that commit's code, which the restructured code reproduces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import run

CLIP = Path(__file__).resolve().parent.parent / "examples" / "clips" / "happy_pan.mp4"

PINNED = {
    "defaults": (
        (),
        {
            "faces": "fcdb68201cb16e6b19fdf7014b77a37d5f03dead44cbbe4e01182775302e082d",
            "keyframes": "eed1a0ca3e9a01293625c95185dff7f26dc90e712c8da8b36965159997b8ab30",
        },
    ),
    "changed settings": (
        ("faces.crop_size=112", "faces.margin=0.3", "keyframes.k=6", "keyframes.strategy=uniform"),
        {
            "faces": "e57741474d18622f35345543fe786eb82c0de41734893f59ea20c1c3b5370c68",
            "keyframes": "70f24b5e9a26bf42a1fdc27378904f9bf645e4494abe8a64b693d8f7634df5e4",
        },
    ),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_model_free_stage_keys_are_unchanged(tmp_path, case):
    overrides, expected = PINNED[case]
    result = run(CLIP, tmp_path / "run", tmp_path / "cache", *overrides, until="keyframes")
    assert result.keys[CLIP.name] == expected
