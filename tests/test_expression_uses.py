"""The three uses of the embedded expression model: the clip classifier baseline (classify.model.backend=expression),
the motion-to-text captioner (context.model.backend=expression) and expression-apex keyframes
(keyframes.strategy=expression_apex), on real clips of the astronaut photo (tests/media.py)."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

import stages.expression as expression
from pipeline.backends import Prompt, load_backend, model_identity
from pipeline.core.cache import Cache
from pipeline.engine.config import load_config
from pipeline.core.errors import PreflightError
from stages.faces.facetrack import CROPS_FILE, FACES_FILE, SCENE_FILE, TRACK_FILE, FaceTrack
from pipeline.models.expression import CLASSES, MODEL_ID, weights_sha256
from pipeline.models.motion_text import NO_CHANGE, describe
from pipeline.engine.runner import stages_to_run
from stages import keyframes
from stages.classify import key_extras
from tests.conftest import copy_clip
from tests.runs import artifact, failures, run, track_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EMBEDDED = ("classify.model.backend=expression", "context.model.backend=expression")
ASTRONAUT = {"pan.mp4": ("clip_dir", "pan.mp4"), "zoom.webm": ("clip_dir", "sub/zoom.webm"),
             "static_odd.avi": ("clip_dir", "odd.avi"), "rotated.mp4": ("special_clips", "rotated"),
             "vfr.mp4": ("special_clips", "vfr"), "two_faces.mp4": ("special_clips", "two")}


def predictions(run_dir) -> dict[str, dict]:
    with open(run_dir / "predictions.csv", encoding="utf-8") as f:
        return {r["video"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory, clip_dir, special_clips):
    """One run of the embedded classifier and captioner over the astronaut clips: pan, zoom, a still clip of odd
    size, rotation metadata, variable frame rate, two faces."""
    root = tmp_path_factory.mktemp("astronaut")
    fixtures = {"clip_dir": clip_dir, "special_clips": special_clips}
    for name, (fixture, key) in ASTRONAUT.items():
        copy_clip(fixtures[fixture][key], root / "in", name)
    res = run(root / "in", root / "run", root / "cache", *EMBEDDED)
    assert res.status == "complete" and res.n_failed == 0, failures(root / "run")
    return res


# ---------------------------------------------------------------------------------------------- the classifier


def test_the_embedded_classifier_predicts_happy_on_every_astronaut_clip(astronaut):
    rows = predictions(astronaut.run_dir)
    assert sorted(rows) == sorted(ASTRONAUT)
    assert {v: r["prediction"] for v, r in rows.items()} == {v: "happy" for v in ASTRONAUT}
    assert {r["model"] for r in rows.values()} == {f"{MODEL_ID} (expression)"}


def test_a_label_scores_the_mean_log_probability_of_its_class_over_the_frames_shown(astronaut):
    for video in ASTRONAUT:
        probs = expression.load(artifact(astronaut, video, "expression")).probs
        doc = artifact(astronaut, video, "classify").json("scores.json")
        shown = probs[sorted(set(doc["frame_indices"]))]
        shown = shown[np.isfinite(shown).all(axis=1)]
        for label, score in doc["scores"].items():
            expected = np.log(np.clip(shown[:, CLASSES.index(label)], 1e-12, 1)).mean()
            assert score["logprob"] == pytest.approx(expected, rel=1e-5), (video, label)


def test_dense_frames_are_the_frames_the_classifier_averages_when_classify_shows_them(astronaut, clip_dir, tmp_path):
    cache = (astronaut.run_dir / "cache_dir.txt").read_text().strip()
    res = run(clip_dir["pan.mp4"].path, tmp_path / "dense", cache, *EMBEDDED, "classify.dense_fps=5")
    doc = artifact(res, "pan.mp4", "classify").json("scores.json")
    t = track_of(res, "pan.mp4").t
    assert len(doc["frame_indices"]) == 10 and np.allclose(np.diff(t[doc["frame_indices"]]), 0.2, atol=0.021)
    probs = expression.load(artifact(res, "pan.mp4", "expression")).probs[doc["frame_indices"]]
    assert doc["scores"]["happy"]["logprob"] == pytest.approx(np.log(probs[:, CLASSES.index("happy")]).mean(), rel=1e-5)


def _flip_crops(cache: Cache, faces_art) -> None:
    """Replace a faces artifact, in place (same key), by one whose face crops are upside down."""
    track = FaceTrack.load(faces_art)
    crops = [cv2.imencode(".jpg", np.ascontiguousarray(img[::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
             for img in track.crops(range(len(track)))[..., ::-1]]  # RGB -> BGR for imencode
    arrays = dict(track.arrays, crop_offsets=np.cumsum([0, *map(len, crops)]).astype(np.int64))
    meta = faces_art.meta()

    def fill(out):
        out.npz(TRACK_FILE, **arrays)
        out.bytes(CROPS_FILE, b"".join(crops))
        for name in (SCENE_FILE, FACES_FILE):  # the rest of the artifact as it was
            out.bytes(name, faces_art.bytes(name))

    cache.write("faces", faces_art.key, meta, fill, replace=True)


def test_the_embedded_classifier_does_not_predict_happy_on_an_upside_down_face(clip_dir, tmp_path):
    # MTCNN finds no face in an upside-down frame (checked on the astronaut photo), so the flip is applied to the
    # tracked face crops of the clip: everything after the faces stage sees the face upside down.
    path, cache = clip_dir["pan.mp4"].path, Cache(tmp_path / "cache")
    upright = run(path, tmp_path / "up", cache.root, *EMBEDDED, "classify.use_summaries=false")
    assert predictions(upright.run_dir)["pan.mp4"]["prediction"] == "happy"
    flipped_cache = Cache(tmp_path / "flipped")
    first = run(path, tmp_path / "f0", flipped_cache.root, until="faces")
    _flip_crops(flipped_cache, artifact(first, "pan.mp4", "faces"))
    flipped = run(path, tmp_path / "f1", flipped_cache.root, *EMBEDDED, "classify.use_summaries=false")
    assert flipped.keys["pan.mp4"]["faces"] == upright.keys["pan.mp4"]["faces"]
    row = predictions(flipped.run_dir)["pan.mp4"]
    assert row["prediction"] != "happy"
    assert float(row["p_happy"]) < 0.5 < float(predictions(upright.run_dir)["pan.mp4"]["p_happy"])


def test_a_label_set_with_labels_the_model_does_not_know_is_refused_before_any_clip(clip_dir, tmp_path):
    with pytest.raises(PreflightError, match="classify.labels=mafw: the embedded expression model .* has no class for "
                                             "contempt, anxiety, helplessness, disappointment"):
        run(clip_dir["pan.mp4"].path, tmp_path / "run", tmp_path / "cache", "classify.model.backend=expression",
            "classify.labels=mafw")
    assert not (tmp_path / "cache").exists()


def test_mafw_words_for_the_seven_classes_are_scored_through_their_spellings():
    backend = load_backend(load_config(None, ["classify.model.backend=expression"]).classify.model)
    probs = np.tile(np.array([[0.05, 0.05, 0.05, 0.6, 0.1, 0.05, 0.1]], np.float32), (3, 1))
    labels = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    got = backend.score_labels([Prompt(["ignored"], inputs={"expression": probs})], labels)[0]
    assert {lab: round(s.logprob, 4) for lab, s in got.items()} == {
        lab: round(float(np.log(probs[0, CLASSES.index(c)])), 4)
        for lab, c in zip(labels, ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"])}


def test_the_classifier_backend_is_registered_with_its_weights_in_the_cache_key():
    cfg = load_config(None, ["classify.model.backend=expression"])
    assert cfg.classify.model.model == MODEL_ID  # the backend's own model, when none is given
    assert key_extras(cfg.classify)["model"] == {"backend": "expression", "model": MODEL_ID, "weights_sha256": weights_sha256()}
    assert model_identity(cfg.classify.model) == key_extras(cfg.classify)["model"]


def test_the_expression_stage_runs_only_for_what_reads_it():
    def stages(*overrides):
        return stages_to_run(load_config(None, list(overrides)))

    assert "expression" not in stages()
    assert "expression" in stages("classify.model.backend=expression")
    assert "expression" in stages("context.model.backend=expression")
    assert "expression" in stages("keyframes.strategy=expression_apex")
    assert "expression" not in stages("keyframes.strategy=motion_apex", "classify.model.backend=openai")


# ---------------------------------------------------------------------------------------------- the captioner


def test_the_embedded_captioner_says_nothing_of_change_on_clips_where_the_face_does_not_change(astronaut):
    # not vfr.mp4: there the faces stage holds a stale box from 0.63 s (its detections 0.22 s apart on a fast pan
    # overlap by IoU < 0.2), so the crops leave the face and the captioner rightly describes what they show
    for video in ("pan.mp4", "static_odd.avi", "rotated.mp4", "two_faces.mp4"):
        gaps = artifact(astronaut, video, "context").json("context.json")["gaps"]
        texts = {g["summary"] for g in gaps} | {w["caption"] for g in gaps for w in g["windows"]}
        assert texts == {NO_CHANGE}, video


def test_the_embedded_captioner_names_the_change_of_a_clip_whose_face_changes(special_clips, astronaut, tmp_path):
    spec = special_clips["expr"]  # a still face whose mouth opens from 1.9 s to 2.3 s (apex 2.1 s)
    cache = (astronaut.run_dir / "cache_dir.txt").read_text().strip()
    res = run(spec.path, tmp_path / "run", cache, *EMBEDDED, "keyframes.strategy=uniform", "context.trajectory=true")
    doc = artifact(res, "expr.mp4", "context").json("context.json")
    during = [g for g in doc["gaps"] if g["t_start"] < 2.1 < g["t_end"]]
    outside = [g for g in doc["gaps"] if g["t_end"] < 1.8 or g["t_start"] > 2.4]
    assert len(during) == 1 and outside
    assert during[0]["summary"] != NO_CHANGE and "happy" in during[0]["summary"]
    assert all(g["summary"] == NO_CHANGE for g in outside)
    assert doc["trajectory"].startswith("Motion: ") and doc["trajectory"] != NO_CHANGE


def test_a_gap_summary_is_the_sentence_of_all_its_frames_without_a_language_model(astronaut, special_clips, tmp_path):
    cache = (astronaut.run_dir / "cache_dir.txt").read_text().strip()
    res = run(special_clips["expr"].path, tmp_path / "run", cache, *EMBEDDED, "keyframes.strategy=uniform")
    probs = expression.load(artifact(res, "expr.mp4", "expression")).probs
    landmarks = track_of(res, "expr.mp4").arrays["landmarks"]
    gaps = artifact(res, "expr.mp4", "context").json("context.json")["gaps"]
    assert any(len(g["windows"]) > 1 for g in gaps)
    for g in gaps:
        frames = sorted({i for w in g["windows"] for i in w["indices"]})
        assert g["summary"] == describe(probs[frames], landmarks[frames], CLASSES)
        for w in g["windows"]:
            assert w["caption"] == describe(probs[w["indices"]], landmarks[w["indices"]], CLASSES)


# ---------------------------------------------------------------------------------------------- expression apex


def test_expression_apex_keyframes_land_on_the_peaks_of_expression_intensity():
    t = np.arange(100) / 25.0
    probs = np.full((100, 7), 0.02, np.float32)
    probs[:, CLASSES.index("neutral")] = 0.88
    for apex in (1.0, 3.0):  # two 0.2 s bursts of surprise
        near = np.abs(t - apex) < 0.1
        probs[near, CLASSES.index("neutral")], probs[near, CLASSES.index("surprise")] = 0.2, 0.7
    probs[40:45] = np.nan  # a stretch without a face is bridged
    cfg = keyframes.Config(k=4, strategy="expression_apex")
    curve = keyframes.intensity_curve(probs, t, cfg.smooth_s)
    assert np.isfinite(curve).all()
    picks = keyframes.choose(t, {"intensity": curve}, cfg, np.isfinite(probs).all(axis=1))
    assert len(picks) == 4
    assert {round(float(t[i]), 2) for i in picks} >= {1.0, 3.0}
    assert not set(picks) & set(range(40, 45))


def test_a_steady_expression_has_no_apex_and_gets_uniform_keyframes():
    t = np.arange(100) / 25.0
    rng = np.random.default_rng(1)
    probs = np.full((100, 7), 0.02, np.float32)
    probs[:, CLASSES.index("happy")] = 0.88 + rng.uniform(-0.02, 0.02, 100)  # wiggles under INTENSITY_MIN_RISE
    cfg = keyframes.Config(k=4, strategy="expression_apex")
    allowed = np.ones(100, bool)
    got = keyframes.choose(t, {"intensity": keyframes.intensity_curve(probs, t, cfg.smooth_s)}, cfg, allowed)
    assert got == keyframes.uniform_indices(t, 4, allowed)


def test_expression_apex_reads_the_expression_stage_and_the_other_strategies_do_not(clip_dir, astronaut, tmp_path):
    cache = (astronaut.run_dir / "cache_dir.txt").read_text().strip()
    path = clip_dir["pan.mp4"].path
    apex = run(path, tmp_path / "a", cache, "keyframes.strategy=expression_apex", until="keyframes")
    motion = run(path, tmp_path / "m", cache, "keyframes.strategy=motion_apex", until="keyframes")
    assert [r.stage for r in apex.reports] == ["faces", "expression", "keyframes"]
    assert [r.stage for r in motion.reports] == ["faces", "keyframes"]
    art = artifact(apex, "pan.mp4", "keyframes")
    assert art.meta()["upstream"] == {"faces": apex.keys["pan.mp4"]["faces"], "expression": apex.keys["pan.mp4"]["expression"]}
    assert artifact(motion, "pan.mp4", "keyframes").meta()["upstream"] == {"faces": motion.keys["pan.mp4"]["faces"]}
    assert "intensity" in art.npz(keyframes.MOTION_FILE)
    assert art.json(keyframes.KEYFRAMES_FILE)["strategy"] == "expression_apex"
