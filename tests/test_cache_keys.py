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
issue 11, commit 3971874), computed with that commit's code, which the restructured code reproduces. Both
re-pinned for faces VERSION 2 (issue 15: O-net refinement where the face is expected between whole-frame
detections, the new key field ``faces.full_frame_every_s``, default ``detect_every`` 5 -> 2, and the primary-face
rule following a face that moved fast; the keyframes key follows its upstream faces key, keyframes itself
unchanged). Re-derived after rebasing onto main with issue 11's and 13's changes (presets, the expression
backend and keyframes.strategy=expression_apex): those left both keys as they were, the same values
before and after the rebase; only faces VERSION 2 and its config change them.
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
            "faces": "67b0d6f5c45972afd0611b1acaa615057935c5843309dc3b5cbc6d45391699a3",
            "keyframes": "5034d921798381ec4aef52901e4c9df138fd54e7e4f37e7618f592366c43e34c",
        },
    ),
    "changed settings": (
        ("faces.crop_size=112", "faces.margin=0.3", "keyframes.k=6", "keyframes.strategy=uniform"),
        {
            "faces": "dd95424125812a35d126ddb5f8b81ea3c69a4eec01373c769a84998afa78cc3f",
            "keyframes": "6a98992e91212611caa4392f3a14ae9326f0231ba3eb63f255d695e767f393e0",
        },
    ),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_model_free_stage_keys_are_unchanged(tmp_path, case):
    overrides, expected = PINNED[case]
    result = run(CLIP, tmp_path / "run", tmp_path / "cache", *overrides, until="keyframes")
    assert result.keys[CLIP.name] == expected
