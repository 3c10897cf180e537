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
before and after the rebase; only faces VERSION 2 and its config change them. Both re-pinned for issue 21: faces
VERSION 3 (shots; every face tracked within its shot; people linked across shots; the subject by a rule; new files
in the artifact; new key fields: cut/dark thresholds, min_shot_s, identity, identity_threshold, embed_samples,
subject, min_subject_s; and, in its key extras, the face embedder with its weights' sha256) and keyframes VERSION 3
(no keyframe without the face or beside a cut, no motion across a cut; new key field cut_margin). On the pinned
clip (one face, no cut) their artifacts are byte-identical to those of the code before
(``scripts/same_artifacts.py --before REF --defaults``): only the keys move. The default case uses the embedder of
the dev extras (dlib's, ``dfer-pipeline[identity]``, as CI installs it); the changed case sets
``faces.identity=none``, which holds on any machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.faces import identity
from tests.runs import run

CLIP = Path(__file__).resolve().parent.parent / "examples" / "clips" / "happy_pan.mp4"

PINNED = {
    "defaults": (
        (),
        {
            "faces": "81eed64e95ff2cdd2dff7e4cd8cede09280404eccaa6f659a7c1d16ad48eb2a4",
            "keyframes": "576322b9a4dd75df7ac94b58ff33967019c450267b5a9a219dd5562f38dfa23b",
        },
    ),
    "changed settings": (
        ("faces.crop_size=112", "faces.margin=0.3", "keyframes.k=6", "keyframes.strategy=uniform", "faces.identity=none"),
        {
            "faces": "f50d82b5be0eb35348b1e367cf8b37d9ec18059661c2d6e985e87361c8869751",
            "keyframes": "e3db50b380b209105c510bbe1f043576c814e397cfe395ff5a4f1e681bc1888d",
        },
    ),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_model_free_stage_keys_are_unchanged(tmp_path, case):
    overrides, expected = PINNED[case]
    if not any(o.startswith("faces.identity=") for o in overrides):
        emb = identity.resolve("auto")
        assert emb is not None and emb.name == "dlib", (
            f"the default keys are pinned with dlib's face embedder ({identity.INSTALL_HINT}); here: "
            f"{emb.name if emb else 'none'}")
    result = run(CLIP, tmp_path / "run", tmp_path / "cache", *overrides, until="keyframes")
    assert result.keys[CLIP.name] == expected
