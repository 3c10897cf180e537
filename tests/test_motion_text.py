"""The embedded captioner's sentence builder, on probability rows and landmarks whose changes are set here."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.expression import CLASSES
from pipeline.models.motion_text import (
    EXPRESSION_MIN_CHANGE,
    MOUTH_MIN_CHANGE,
    NO_CHANGE,
    NO_FACE,
    describe,
    geometry,
)

# landmarks of the astronaut's face (tests/media.py): eyes, nose, mouth corners, in pixels
FACE = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])


def rows(*dicts: dict, n_each: int = 1) -> np.ndarray:
    """Probability rows (classes in CLASSES order); what a dict leaves out is spread evenly over the other classes."""
    out = []
    for d in dicts:
        rest = (1.0 - sum(d.values())) / (len(CLASSES) - len(d))
        out += [[d.get(c, rest) for c in CLASSES]] * n_each
    return np.array(out, np.float32)


def still(n: int) -> np.ndarray:
    return np.repeat(FACE[None], n, axis=0)


def with_mouth_width(face: np.ndarray, scale: float) -> np.ndarray:
    """The face with its mouth corners moved apart (``scale`` > 1) or together about their midpoint."""
    out = face.copy()
    mid = face[3:5].mean(axis=0)
    out[3:5] = mid + (face[3:5] - mid) * scale
    return out


def test_a_change_of_expression_and_a_widening_mouth_are_both_named():
    probs = rows({"neutral": 0.62}, {"neutral": 0.4, "happy": 0.5}, {"happy": 0.81})
    landmarks = np.stack([FACE, with_mouth_width(FACE, 1.1), with_mouth_width(FACE, 1.25)])
    assert describe(probs, landmarks, CLASSES) == "Motion: expression shifts from neutral (0.62) to happy (0.81); the mouth widens."


def test_a_steady_face_with_jitter_below_the_thresholds_has_no_visible_change():
    rng = np.random.default_rng(0)
    probs = rows({"happy": 0.9}, n_each=6) + rng.uniform(-0.01, 0.01, (6, len(CLASSES))).astype(np.float32)
    landmarks = still(6) + rng.uniform(-0.5, 0.5, (6, 5, 2))  # half a pixel on a 42-pixel eye distance
    assert describe(probs, landmarks, CLASSES) == NO_CHANGE


def test_the_same_frames_with_the_expression_changed_get_a_different_sentence():
    landmarks = still(4)
    steady = describe(rows({"happy": 0.9}, n_each=4), landmarks, CLASSES)
    changed = describe(rows({"happy": 0.9}, {"happy": 0.9}, {"sad": 0.7}, {"sad": 0.8}), landmarks, CLASSES)
    assert steady == NO_CHANGE
    assert changed == "Motion: expression shifts from happy (0.90) to sad (0.80)."


def test_a_change_that_returns_within_the_window_is_named_as_brief():
    probs = rows({"neutral": 0.8}, {"surprise": 0.7}, {"neutral": 0.8})
    assert describe(probs, still(3), CLASSES) == "Motion: expression briefly shifts from neutral (0.80) to surprise (0.70) and back."


def test_a_change_just_below_the_threshold_is_not_named_and_one_just_above_is():
    below, above = EXPRESSION_MIN_CHANGE - 0.02, EXPRESSION_MIN_CHANGE + 0.02
    base = {"happy": 0.8, "neutral": 0.1}
    quiet = rows(base, {"happy": 0.8 - below, "neutral": 0.1 + below})
    loud = rows(base, {"happy": 0.8 - above, "neutral": 0.1 + above})
    assert describe(quiet, still(2), CLASSES) == NO_CHANGE
    assert describe(loud, still(2), CLASSES) == "Motion: happy weakens from 0.80 to 0.58."


@pytest.mark.parametrize("scale, phrase", [(1 + 2 * MOUTH_MIN_CHANGE, "the mouth widens"),
                                           (1 - 2 * MOUTH_MIN_CHANGE, "the mouth narrows")])
def test_the_mouth_width_is_measured_in_eye_distances(scale, phrase):
    landmarks = np.stack([FACE, with_mouth_width(FACE, scale)])
    assert describe(rows({"happy": 0.9}, n_each=2), landmarks, CLASSES) == f"Motion: {phrase}."


def test_moving_or_scaling_the_whole_face_changes_only_its_size():
    centre = FACE.mean(axis=0)
    moved = (FACE - centre) * 1.3 + centre + [40.0, -25.0]
    geo = geometry(np.stack([FACE, moved]))
    for measure in ("mouth_width", "mouth_drop", "tilt", "turn"):
        assert geo[measure][1] == pytest.approx(geo[measure][0], abs=1e-9), measure
    assert describe(rows({"happy": 0.9}, n_each=2), np.stack([FACE, moved]), CLASSES) == "Motion: the face comes closer."


def test_a_rotated_face_tilts_and_keeps_its_mouth_measures():
    angle = np.radians(10)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = FACE.mean(axis=0)
    tilted = (FACE - centre) @ rot.T + centre
    assert describe(rows({"happy": 0.9}, n_each=2), np.stack([FACE, tilted]), CLASSES) == "Motion: the head tilts clockwise."


def test_frames_without_a_face_are_left_out_and_a_window_without_any_says_so():
    probs = rows({"neutral": 0.62}, {"happy": 0.81}, {"happy": 0.81})
    probs[1] = np.nan
    landmarks = still(3)
    landmarks[1] = np.nan
    assert describe(probs, landmarks, CLASSES) == "Motion: expression shifts from neutral (0.62) to happy (0.81)."
    assert describe(np.full((3, 7), np.nan), np.full((3, 5, 2), np.nan), CLASSES) == NO_FACE
