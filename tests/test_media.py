"""The synthetic media of tests/media.py are what their ClipSpec claims."""

from __future__ import annotations

import os
import subprocess

import av
import cv2
import numpy as np
import pytest

from tests import media


@pytest.fixture(scope="module")
def detector():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


@pytest.fixture(scope="module")
def reference_face() -> np.ndarray:
    from skimage import data

    x1, y1, x2, y2 = (int(round(v)) for v in media.REFERENCE_FACE_BOX)
    return cv2.cvtColor(data.astronaut()[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def detect(detector, rgb: np.ndarray):
    boxes, _ = detector.detect(np.ascontiguousarray(rgb))
    return [] if boxes is None else [tuple(map(float, b)) for b in boxes]


def face_similarity(rgb: np.ndarray, box, reference: np.ndarray) -> float:
    """Normalised cross-correlation of the face crop at ``box`` with the photo's face."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    crop = cv2.cvtColor(np.ascontiguousarray(rgb[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    ref = cv2.resize(reference, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = crop.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def stream_info(path):
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name) for s in container.streams]


# --------------------------------------------------------------------------
# Codecs, containers, sizes, timestamps
# --------------------------------------------------------------------------

CODEC_CASES = [
    ("h264", "clip.mp4", "h264"),
    ("vp9", "clip.webm", "vp9"),
    ("mpeg4", "clip.avi", "mpeg4"),
    ("mpeg4", "clip_m4v.mp4", "mpeg4"),
    ("hevc", "clip.mkv", "hevc"),
]


@pytest.mark.parametrize("codec,name,decoder", CODEC_CASES)
def test_codec_frames_and_timestamps(tmp_path, codec, name, decoder):
    spec = media.make_face_clip(tmp_path / name, codec=codec, seconds=1.0)
    assert stream_info(spec.path) == [("video", decoder)]
    frames, times, rotations = media.decode_all(spec.path)
    assert spec.n_frames == 25 == len(frames) == len(spec.timestamps)
    np.testing.assert_allclose(times, spec.timestamps, atol=1e-6)
    assert frames[0].shape == (spec.height, spec.width, 3) == (240, 320, 3)
    assert set(rotations) == {0}
    with av.open(str(spec.path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


@pytest.mark.parametrize("codec,name", [("vp9", "odd.webm"), ("mpeg4", "odd.avi")])
def test_odd_size_round_trips(tmp_path, codec, name):
    spec = media.make_face_clip(tmp_path / name, codec=codec, size=(321, 243), seconds=0.4)
    frames, _, _ = media.decode_all(spec.path)
    assert (spec.width, spec.height) == (321, 243)
    assert {f.shape for f in frames} == {(243, 321, 3)}


@pytest.mark.parametrize("kwargs,name", [
    ({"codec": "h264", "size": (321, 243)}, "odd.mp4"),
    ({"codec": "vp9"}, "wrong_suffix.mp4"),
    ({"codec": "mpeg4", "rotation": 90}, "rotated.avi"),
    ({"motion": "pan", "expression": (0.2, 0.6)}, "moving_expression.mp4"),
    ({"faces": 0, "motion": "static", "expression": (0.2, 0.6)}, "faceless_expression.mp4"),
    ({"rotation": 45}, "diagonal.mp4"),
])
def test_invalid_arguments_are_rejected(tmp_path, kwargs, name):
    with pytest.raises(ValueError):
        media.make_face_clip(tmp_path / name, seconds=0.2, **kwargs)


@pytest.mark.parametrize("codec,name", [("h264", "vfr.mp4"), ("vp9", "vfr.webm")])
def test_vfr_timestamps_round_trip(tmp_path, codec, name):
    spec = media.make_face_clip(tmp_path / name, codec=codec, vfr=True, seconds=1.0)
    intervals = np.round(np.diff(spec.timestamps), 4)
    assert set(intervals) == {0.02, 0.0667}
    assert spec.n_frames == len(spec.timestamps) == 24
    _, times, _ = media.decode_all(spec.path)
    atol = 1e-6 if codec == "h264" else 5e-4  # WebM stores milliseconds
    assert len(times) == spec.n_frames
    np.testing.assert_allclose(times, spec.timestamps, atol=atol)


def test_same_seed_same_bytes(tmp_path):
    a = media.make_face_clip(tmp_path / "a.mp4", seconds=0.4, seed=3)
    b = media.make_face_clip(tmp_path / "b.mp4", seconds=0.4, seed=3)
    c = media.make_face_clip(tmp_path / "c.mp4", seconds=0.4, seed=4)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    assert a.face_boxes == b.face_boxes


# --------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rotation,codec,name", [
    (0, "h264", "r0.mp4"), (90, "h264", "r90.mp4"), (180, "h264", "r180.mp4"),
    (270, "h264", "r270.mp4"), (90, "vp9", "r90.webm"),
])
def test_rotation_metadata_and_upright_rule(tmp_path, detector, reference_face, rotation, codec,
                                            name):
    spec = media.make_face_clip(tmp_path / name, codec=codec, rotation=rotation, seconds=0.4,
                                motion="pan")
    frames, _, rotations = media.decode_all(spec.path)
    assert set(rotations) == {spec.rotation}
    assert spec.rotation in (0, 90, -180, -90)
    assert spec.rotation % 360 == rotation
    stored, box = frames[0], spec.face_boxes[0]
    if rotation in (90, 270):
        assert stored.shape[:2] == (spec.display_width, spec.display_height)
    assert (spec.display_width, spec.display_height) == (320, 240)

    # The documented rule: np.rot90(stored, k=round(frame.rotation / 90)).
    k = round(rotations[0] / 90)
    shown = media.upright(stored, rotations[0])
    np.testing.assert_array_equal(shown, np.rot90(stored, k))
    assert shown.shape[:2] == (spec.display_height, spec.display_width)
    found = detect(detector, shown)
    assert len(found) == 1 and iou(found[0], box) > 0.6

    # Of all orientations with the display shape, only the rule's shows the photo's face
    # at the ground-truth box.
    scores = {j: face_similarity(np.rot90(stored, j), box, reference_face)
              for j in range(4) if np.rot90(stored, j).shape == shown.shape}
    assert max(scores, key=scores.get) == k % 4
    assert scores[k % 4] > 0.8 and all(s < 0.6 for j, s in scores.items() if j != k % 4)

    # An independent decoder that honours the display matrix agrees.
    capture = cv2.VideoCapture(str(spec.path))
    ok, bgr = capture.read()
    capture.release()
    assert ok and bgr[:, :, ::-1].shape == shown.shape
    assert np.abs(bgr[:, :, ::-1].astype(int) - shown).mean() < 2.0


# --------------------------------------------------------------------------
# Faces and motion
# --------------------------------------------------------------------------

SAMPLE_FRAMES = (0, 12, 24, 37, 49)


@pytest.mark.parametrize("faces", [0, 1, 2])
def test_mtcnn_finds_the_claimed_faces(tmp_path, detector, faces):
    spec = media.make_face_clip(tmp_path / f"faces{faces}.mp4", faces=faces, motion="pan_zoom")
    frames, _, _ = media.decode_all(spec.path)
    assert spec.n_frames == len(frames) == 50
    for i in SAMPLE_FRAMES:
        found = detect(detector, frames[i])
        assert len(found) == faces, f"frame {i}: {found}"
        if faces == 0:
            continue
        largest = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        assert iou(largest, spec.face_boxes[i]) > 0.6
        if faces == 2:
            smaller = min(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            assert iou(smaller, spec.second_face_boxes[i]) > 0.5
    if faces == 0:
        assert spec.face_boxes is None and spec.second_face_boxes is None


def box_centre_and_height(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[3] - box[1]


@pytest.mark.parametrize("motion", ["static", "pan", "zoom", "pan_zoom"])
def test_motion_kinds(tmp_path, detector, motion):
    spec = media.make_face_clip(tmp_path / f"{motion}.mp4", motion=motion, seconds=1.0)
    geometry = np.array([box_centre_and_height(b) for b in spec.face_boxes])
    x_span = np.ptp(geometry[:, 0])
    zoom_ratio = geometry[:, 2].max() / geometry[:, 2].min()
    assert (x_span > 80) == ("pan" in motion)
    assert (zoom_ratio > 1.8) == ("zoom" in motion)
    if motion == "static":
        assert x_span == 0 and zoom_ratio == 1
    frames, _, _ = media.decode_all(spec.path)
    for i in (0, len(frames) // 2):
        found = detect(detector, frames[i])
        assert len(found) == 1 and iou(found[0], spec.face_boxes[i]) > 0.6


def test_expression_changes_only_the_mouth(tmp_path, detector):
    spec = media.make_face_clip(tmp_path / "expr.mp4", motion="static", seconds=2.0,
                                expression=(0.6, 1.4))
    assert spec.expression == (0.6, 1.4) and spec.apex == pytest.approx(1.0)
    times = np.array(spec.timestamps)
    apex_index = int(np.argmax(spec.expression_intensity))
    assert times[apex_index] == pytest.approx(spec.apex, abs=0.5 / spec.fps)
    inside = (times > 0.6) & (times < 1.4)
    assert all(v == 0 for v, keep in zip(spec.expression_intensity, inside) if not keep)

    frames = [f.astype(np.float32) for f in media.decode_all(spec.path)[0]]
    before = int(np.flatnonzero(times <= 0.6)[-1])
    after = int(np.flatnonzero(times >= 1.4)[0])
    x1, y1, x2, y2 = (int(round(v)) for v in spec.face_boxes[apex_index])
    face = np.zeros(frames[0].shape[:2], bool)
    face[y1:y2, x1:x2] = True
    lower = face.copy()
    lower[: (y1 + y2) // 2] = False

    def change(i, j, region):
        return float(np.abs(frames[i] - frames[j]).mean(axis=2)[region].mean())

    assert change(apex_index, before, lower) > 10
    assert change(apex_index, before, ~face) < 0.5
    assert max(change(i, i - 1, ~face) for i in range(before + 1, after + 1)) < 0.5
    assert change(after, before, face) < 1.0  # back to neutral after the event
    assert len(detect(detector, frames[apex_index].astype(np.uint8))) == 1


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------


def test_zero_byte_and_text_do_not_open(tmp_path):
    for path in (media.make_zero_byte(tmp_path / "empty.mp4"),
                 media.make_text_as_video(tmp_path / "notes.mp4")):
        assert path.suffix == ".mp4"
        with pytest.raises(av.error.FFmpegError):
            with av.open(str(path)) as container:
                list(container.decode(video=0))
    assert (tmp_path / "empty.mp4").stat().st_size == 0


def test_audio_only_has_no_video(tmp_path):
    path = media.make_audio_only(tmp_path / "tone.m4a")
    assert stream_info(path) == [("audio", "aac")]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert float(stream.duration * stream.time_base) == pytest.approx(1.0, abs=0.05)
        assert not container.streams.video


def test_truncated_clip_ends_early(tmp_path):
    spec = media.make_face_clip(tmp_path / "full.mp4", seconds=2.0)
    path = media.make_truncated(spec, tmp_path / "cut.mp4", keep_fraction=0.4)
    assert path.stat().st_size == int(spec.path.stat().st_size * 0.4)
    decoded, error = 0, None
    try:
        with av.open(str(path)) as container:
            assert container.streams.video[0].frames == spec.n_frames  # index intact
            for _ in container.decode(video=0):
                decoded += 1
    except av.error.FFmpegError as exc:
        error = exc
    assert decoded < spec.n_frames
    assert error is not None or decoded < spec.n_frames


def test_unreadable_file(tmp_path):
    bad = media.make_unreadable(tmp_path / "locked.mp4")
    good = media.make_face_clip(tmp_path / "open.mp4", codec="mpeg4", seconds=0.2)
    assert bad.stat().st_mode & 0o777 == 0
    kwargs = media.unprivileged_subprocess_kwargs()
    if media.is_root() and not media.file_modes_enforced(bad):
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    assert media.file_modes_enforced(bad)
    assert not media.file_modes_enforced(good.path)
    denied = subprocess.run(["cat", str(bad)], capture_output=True, **kwargs)
    allowed = subprocess.run(["cat", str(good.path)], capture_output=True, **kwargs)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert allowed.returncode == 0 and allowed.stdout == good.path.read_bytes()


def test_unicode_name(tmp_path):
    assert " " in media.unicode_name and not media.unicode_name.isascii()
    spec = media.make_face_clip(tmp_path / media.unicode_name, seconds=0.4)
    assert spec.path.name == media.unicode_name and os.path.exists(spec.path)
    assert len(media.decode_all(spec.path)[0]) == spec.n_frames
