"""Motion-to-text without a language model: one sentence from the expression trajectory and face geometry of a
few frames, e.g. ``Motion: expression shifts from neutral (0.62) to happy (0.81); the mouth widens.``

The embedded captioner (``context.model.backend=expression``) writes one per captioning window, per gap and per
clip. A change is named only when it reaches its threshold below, either between the first frame and the last (a
lasting change: "shifts from ... to ...") or between the first frame and the frame farthest from it while the last
frame is back within the threshold (a brief one: "briefly ... and back"). When nothing reaches its threshold the
sentence is ``Motion: no visible change.``

What is measured, per frame with a face (geometry from the faces stage's 5 landmarks, in units of the eye distance,
so that moving or scaling the face changes none of it but the face size):

============= ================================================================= ===========================
measure       per frame                                                         named when it changes by
============= ================================================================= ===========================
expression    the 7 class probabilities                                         :data:`EXPRESSION_MIN_CHANGE`
                                                                                (total variation distance)
mouth width   distance between the mouth corners / eye distance                 :data:`MOUTH_MIN_CHANGE`
mouth corners distance from the eye line down to the mouth corners' midpoint    :data:`MOUTH_MIN_CHANGE`
              / eye distance (smaller: the corners rise)
head tilt     angle of the eye line in the image, degrees                       :data:`TILT_MIN_CHANGE_DEG`
head turn     offset of the nose from the eyes' midpoint along the eye line     :data:`TURN_MIN_CHANGE`
              / eye distance
face size     log of the eye distance in pixels                                 :data:`SIZE_MIN_CHANGE`
============= ================================================================= ===========================

The thresholds sit above the jitter of the faces stage's landmarks (detected on every 5th frame of a downscaled
copy, smoothed and interpolated in between): over the whole of each example clip (``examples/clips``, still,
panning, zooming, rotated, two faces) the mouth measures move by at most 0.05 eye distances, the head's tilt by
1.5 degrees and its turn by 0.04 eye distances, and the face size by 6 % where the clip does not zoom. The 5 points hold no eyelid, brow or lip point, so
the eyes, the brows and the mouth opening are not described.
"""

from __future__ import annotations

import numpy as np

EXPRESSION_MIN_CHANGE = 0.2
"""Total variation distance (half the L1 distance) between two frames' class probabilities that counts as a change
of expression: 0.2 is a fifth of the probability mass moving from some classes to others."""
MOUTH_MIN_CHANGE = 0.08
"""Change of the mouth width, or of the eye-line-to-mouth-corners distance, in eye distances (about 3 pixels on a
face whose eyes are 40 pixels apart)."""
TILT_MIN_CHANGE_DEG = 5.0
"""Change of the eye line's angle (degrees)."""
TURN_MIN_CHANGE = 0.1
"""Change of the nose's offset from the eyes' midpoint along the eye line, in eye distances."""
SIZE_MIN_CHANGE = float(np.log(1.15))
"""Change of the log eye distance: the face 15 % larger or smaller in the frame."""

NO_CHANGE = "Motion: no visible change."
NO_FACE = "Motion: no face visible."
NO_FRAMES = "Motion: no frames to describe."
ONE_FACE = "Motion: the face is visible in one frame only, too few to see a change."

# measure: (subject, verb when it grows, verb when it shrinks, threshold)
_GEOMETRY = {
    "mouth_width": ("the mouth", "widens", "narrows", MOUTH_MIN_CHANGE),
    "mouth_drop": ("the mouth corners", "drop", "rise", MOUTH_MIN_CHANGE),
    "tilt": ("the head", "tilts clockwise", "tilts counter-clockwise", TILT_MIN_CHANGE_DEG),
    "turn": ("the head", "turns to the image's right", "turns to the image's left", TURN_MIN_CHANGE),
    "size": ("the face", "comes closer", "moves away", SIZE_MIN_CHANGE),
}


def geometry(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame face geometry (see the module docstring) from landmarks (N, 5, 2): left eye, right eye, nose,
    left and right mouth corner, in image pixels. NaN where a frame has no landmarks."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    left_eye, right_eye, nose, mouth_l, mouth_r = (lm[:, i] for i in range(5))
    eye = right_eye - left_eye
    dist = np.linalg.norm(eye, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        along = eye / dist[:, None]  # unit vector along the eye line
        down = np.stack([-along[:, 1], along[:, 0]], axis=1)  # perpendicular, towards the mouth (image y grows down)
        eye_mid = (left_eye + right_eye) / 2
        mouth_mid = (mouth_l + mouth_r) / 2
        return {
            "mouth_width": np.linalg.norm(mouth_r - mouth_l, axis=1) / dist,
            "mouth_drop": np.einsum("ij,ij->i", mouth_mid - eye_mid, down) / dist,
            "tilt": np.degrees(np.arctan2(eye[:, 1], eye[:, 0])),
            "turn": np.einsum("ij,ij->i", nose - eye_mid, along) / dist,
            "size": np.log(dist),
        }


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def _name(classes, p: np.ndarray, k: int) -> str:
    return f"{classes[k]} ({p[k]:.2f})"


def expression_change(probs: np.ndarray, classes) -> str | None:
    """The phrase for the change of expression over these frames' probabilities (rows in time order, NaN rows:
    no face), or None when none reaches :data:`EXPRESSION_MIN_CHANGE`."""
    rows = np.asarray(probs, np.float64)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    if _tv(first, last) >= EXPRESSION_MIN_CHANGE:
        other, brief = last, False
    else:
        other = rows[int(np.argmax([_tv(first, r) for r in rows]))]
        if _tv(first, other) < EXPRESSION_MIN_CHANGE:
            return None
        brief = True
    a, b = int(np.argmax(first)), int(np.argmax(other))
    if a != b:
        phrase = f"expression {'briefly ' if brief else ''}shifts from {_name(classes, first, a)} to {_name(classes, other, b)}"
    else:  # the same class leads: name the class whose probability moved most
        k = int(np.argmax(np.abs(other - first)))
        up = other[k] > first[k]
        verb = ("strengthens" if up else "weakens") if k == a else ("rises" if up else "falls")
        lead = "" if k == a else f"{classes[a]} stays dominant while "
        phrase = f"{lead}{classes[k]} {'briefly ' if brief else ''}{verb} from {first[k]:.2f} to {other[k]:.2f}"
    return phrase + (" and back" if brief else "")


def geometry_changes(landmarks: np.ndarray) -> list[str]:
    """Phrases for the geometry measures that change over these frames (see the module docstring)."""
    geo = geometry(landmarks)
    out = []
    for measure, (subject, grows, shrinks, threshold) in _GEOMETRY.items():
        s = geo[measure][np.isfinite(geo[measure])]
        if len(s) < 2:
            continue
        delta = s[-1] - s[0]
        brief = ""
        if abs(delta) < threshold:
            delta = s[int(np.argmax(np.abs(s - s[0])))] - s[0]
            if abs(delta) < threshold:
                continue
            brief = "briefly "
        out.append(f"{subject} {brief}{grows if delta > 0 else shrinks}")
    return out


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe(probs: np.ndarray, landmarks: np.ndarray, classes) -> str:
    """One sentence for frames in time order: ``probs`` (N, C) class probabilities (NaN rows: no face) in
    ``classes`` order, ``landmarks`` (N, 5, 2) (NaN: no face)."""
    probs = np.asarray(probs, np.float64).reshape(-1, len(classes))
    seen = int(np.isfinite(probs).all(axis=1).sum())
    if not len(probs):
        return NO_FRAMES
    if seen == 0:
        return NO_FACE
    if seen == 1:
        return ONE_FACE
    expression = expression_change(probs, classes)
    shapes = geometry_changes(landmarks)
    if expression is None and not shapes:
        return NO_CHANGE
    text = "; ".join(p for p in (expression, _join(shapes) if shapes else None) if p)
    return f"Motion: {text}."
