"""Find the face where it is expected: MTCNN's output network (O-net) on one small crop.

Between two whole-frame detections the primary face moves little, and the faces stage knows where
it is before *and* after (frames wait in the stage's window for their boxes anyway). So for the
detection frames in between it does not search the frame: it takes the box interpolated in time
between the two (:func:`expected_box`), crops the square around it from the frame at 48x48 pixels
and lets MTCNN's last stage, the O-net, score the crop as a face and regress the box and the five
landmarks from it, twice (the second pass starts from the first one's box). That is what MTCNN
itself does to its own candidates after the P- and R-nets have found them; here the track provides
the candidate. Cost: one 48x48 forward pass per iteration instead of a full image pyramid.

Box arithmetic follows MTCNN's conventions (Zhang et al. 2016; facenet-pytorch's ``detect_face``):
a candidate is made square around its centre, the O-net's 4 outputs are offsets in units of the
candidate's side + 1, its 10 landmark outputs are fractions of it.
"""

from __future__ import annotations

import cv2
import numpy as np

ONET_INPUT = 48
ITERATIONS = 2
KEEP_PAD = 0.3  # of the square's side, kept converted around it: covers the later passes and the stage's crop


def expected_box(t: float, t0: float, box0: np.ndarray, t1: float, box1: np.ndarray) -> np.ndarray:
    """The box at time ``t`` interpolated linearly between ``box0`` at ``t0`` and ``box1`` at ``t1``."""
    w = 0.0 if t1 <= t0 else min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return ((1 - w) * box0 + w * box1).astype(np.float32)


def _squares(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x0, y0 = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _crop(pixels, square: np.ndarray) -> np.ndarray:
    """``square`` (frame pixels, may reach past the frame: black there) at ONET_INPUT x ONET_INPUT, RGB."""
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in np.trunc(square))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    roi = pixels[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        if roi.size == 0:
            roi = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        else:
            roi = cv2.copyMakeBorder(np.ascontiguousarray(roi), *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return cv2.resize(roi, (ONET_INPUT, ONET_INPUT), interpolation=cv2.INTER_AREA)


def refine(onet, items: list[tuple[object, np.ndarray]], iterations: int = ITERATIONS):
    """For each ``(pixels, box)`` (an object indexable like an upright RGB frame, and the box where the face is
    expected): the O-net's face probability, box and landmarks after ``iterations`` passes.

    Returns ``boxes`` (N, 4), ``probs`` (N,), ``landmarks`` (N, 5, 2), float32, frame pixels."""
    import torch

    boxes = np.array([b for _, b in items], np.float32).reshape(-1, 4)
    probs = np.zeros(len(items), np.float32)
    landmarks = np.zeros((len(items), 5, 2), np.float32)
    if not items:
        return boxes, probs, landmarks
    device = next(onet.parameters()).device
    for (pixels, _), sq in zip(items, _squares(boxes)):  # one conversion per frame for every pass (and the crop)
        if hasattr(pixels, "keep"):
            pad = (sq[2] - sq[0]) * KEEP_PAD
            pixels.keep(*(int(v) for v in (sq[0] - pad, sq[1] - pad, np.ceil(sq[2] + pad), np.ceil(sq[3] + pad))))
    for _ in range(iterations):
        sq = _squares(boxes)
        crops = np.stack([_crop(pixels, s) for (pixels, _), s in zip(items, sq)])
        x = torch.as_tensor(crops, device=device).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            reg, points, prob = onet((x - 127.5) * 0.0078125)
        reg, points, probs = reg.cpu().numpy(), points.cpu().numpy(), prob[:, 1].cpu().numpy()
        side = (sq[:, 2] - sq[:, 0] + 1)[:, None]  # MTCNN measures a box's side with +1
        landmarks = np.stack([side * points[:, :5] + sq[:, :1] - 1, side * points[:, 5:] + sq[:, 1:2] - 1], axis=2)
        boxes = sq + reg * np.concatenate([side, side, side, side], axis=1)
    return boxes.astype(np.float32), probs.astype(np.float32), landmarks.astype(np.float32)
