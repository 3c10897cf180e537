"""Representation diagnostics (pipeline/diagnostics): linear probes, gradient conflict, the frozen-encoder +
connector + LM model (SocialFusion baseline) and its classify backend, cached feature extraction from real
synthetic clips, and bad inputs. Every model is tiny, random and built here from real transformers classes."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.cache import Cache
from pipeline.cli import main as dfer_main
from pipeline.diagnostics.conflict import ConflictLog, pairwise_cosines, task_gradients
from pipeline.backends import ModelConfig, model_identity
from pipeline.backends.socialfusion import SocialFusionBackend
from pipeline.engine.config import load_config
from pipeline.diagnostics.features import FeatureConfig, clips_of, extract
from pipeline.core.errors import EncoderError, LayerError, SocialFusionError
from pipeline.diagnostics.probe import (
    TaskError, probe_table, read_task_table, run_probes, train_probe, write_probe_report,
)
from pipeline.diagnostics.socialfusion import FeatureClip, TrainSettings, train, write_training_report
from pipeline.models.socialfusion import SocialFusionModel
from pipeline.models.vision import VisionEncoder, check_encoder
from pipeline.engine.rundir import RunDir
from pipeline.training.split import stratified_split
from tests.events import tensorboard_scalars
from tests.runs import failures, run

LABELS = ["happy", "sad", "angry"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A tiny random CLIP vision tower (2 layers, 32x32 images) with its image processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    out = tmp_path_factory.mktemp("enc") / "clip-vision"
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A tiny random Qwen2 causal LM with a byte-level BPE tokenizer trained on the spot (tests/tiny_models.py)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.tiny_models import QWEN_SPECIAL_TOKENS, train_tokenizer, wrap_tokenizer

    out = tmp_path_factory.mktemp("lm") / "qwen2-tiny"
    tok = wrap_tokenizer(train_tokenizer(QWEN_SPECIAL_TOKENS), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.2)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def keyframed(clip_dir, tmp_path_factory):
    """The three conftest clips run through faces + keyframes once; (run dir, cache dir)."""
    root = tmp_path_factory.mktemp("diag-run")
    res = run(clip_dir["root"], root / "run", root / "cache", until="keyframes")
    assert res.n_failed == 0, failures(root / "run")
    return root / "run", root / "cache"


def _features(n: int, dim: int, classes: int, seed: int, noise: float):
    """Clip-level features with class means 5 * e_y (first ``classes`` dims) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0.0, noise, size=(n, dim)).astype(np.float32)
    x[np.arange(n), y] += 5.0
    return x, [f"c{k}" for k in y]


# ------------------------------------------------------------------------------------------------ probes


def test_probe_is_near_perfect_on_separable_features_and_at_chance_on_shuffled_labels():
    x, y = _features(400, 16, 4, seed=0, noise=0.5)
    videos = [f"v{i:03d}" for i in range(400)]
    tr, va = stratified_split(videos, y, val_fraction=0.5, seed=0)
    assert len(va) == 200 and not set(tr) & set(va)
    good = train_probe(x[tr], [y[i] for i in tr], x[va], [y[i] for i in va], n_boot=200)
    # Class means 5*sqrt(2) apart with noise sd 0.5: the Bayes error is ~1e-12, so every miss is the fit's. 2% of
    # the 200 validation clips (4 clips) is ample room; the CI's lower end must clear chance by far.
    assert good.metrics["uar"] >= 0.98 and good.metrics["war"] >= 0.98
    assert good.metrics["ci"]["uar"][0] > 0.9
    shuffled = [str(v) for v in np.random.default_rng(1).permutation(y)]
    bad = train_probe(x[tr], [shuffled[i] for i in tr], x[va], [shuffled[i] for i in va], n_boot=200)
    # Labels independent of the features: each class recall ~ Binomial(50, p)/50 (sd <= 0.071), so UAR (mean of 4)
    # has sd ~0.035 and WAR (200 clips) sd ~0.031 around 1/4. +-0.12 is more than 3.4 sd: a seed change fails
    # with probability < 1e-3.
    assert abs(bad.metrics["uar"] - 0.25) < 0.12, bad.metrics["uar"]
    assert abs(bad.metrics["war"] - 0.25) < 0.12, bad.metrics["war"]


def test_run_probes_puts_encoders_and_layers_side_by_side(tmp_path):
    x, y = _features(240, 8, 3, seed=2, noise=0.5)
    noise = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    videos = [f"clip{i}" for i in range(240)]
    feats = {"good-encoder": {3: dict(zip(videos, x))}, "blind-encoder": {1: dict(zip(videos, noise)), 2: dict(zip(videos, noise * 2))}}
    results = run_probes(feats, {"emotion": dict(zip(videos, y))}, val_fraction=0.5, n_boot=100)
    rows = {(r.encoder, r.layer): r.row() for r in results}
    assert set(rows) == {("good-encoder", 3), ("blind-encoder", 1), ("blind-encoder", 2)}
    assert rows[("good-encoder", 3)]["uar"] >= 0.97
    # 120 validation clips, 40 per class: UAR sd ~0.043 around 1/3 under the null; 0.15 is 3.5 sd.
    assert abs(rows[("blind-encoder", 1)]["uar"] - 1 / 3) < 0.15
    assert all(r["n_val"] == 120 for r in rows.values())  # one split for every encoder and layer
    table = probe_table(results)
    assert "| emotion | good-encoder | 3 |" in table and "blind-encoder" in table
    jp, mp = write_probe_report(results, tmp_path)
    doc = json.loads(jp.read_text())
    assert doc["unit"].startswith("clip") and len(doc["rows"]) == 3 and doc["rows"][0]["uar_ci"]


def test_split_is_by_video_and_keeps_groups_together():
    videos = [f"src{i // 3}/clip{i}" for i in range(60)]  # 20 source videos cut into 3 clips each
    groups = [v.split("/")[0] for v in videos]
    labels = [["a", "b"][(i // 3) % 2] for i in range(60)]
    tr, va = stratified_split(videos, labels, 0.25, seed=4, groups=groups)
    assert sorted([*tr, *va]) == list(range(60))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}  # no source video on both sides
    assert {labels[i] for i in va} == {"a", "b"}  # stratified
    again = stratified_split(videos, labels, 0.25, seed=4, groups=groups)
    assert (again[0] == tr).all() and (again[1] == va).all()


# ------------------------------------------------------------------------------------------------ gradient conflict


def _examples(n: int = 48, dim: int = 32, seed: int = 0) -> list[FeatureClip]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = i % 3
        f = rng.normal(size=(3, dim)).astype(np.float32)
        f[:, y] += 3.0
        out.append(FeatureClip(f"v{i:02d}", f, {"emotion": LABELS[y], "valence": "positive" if y == 0 else "negative"}))
    return out


def test_gradient_cosine_of_identical_tasks_is_one_and_of_opposed_tasks_negative(tiny_lm, tmp_path):
    import torch

    model = SocialFusionModel.create(encoder=tiny_lm, feature_dim=32, lm=tiny_lm, connector_hidden=32,
                                     tasks={"emotion": LABELS}, lora={"r": 4}, seed=0)
    model.train()
    params = [p for g in model.trainable_groups().values() for p in g]
    ex = _examples()[:8]
    feats, ys = [e.feats for e in ex], [e.labels["emotion"] for e in ex]
    same = task_gradients({"a": model.loss(feats, "emotion", ys), "b": model.loss(feats, "emotion", ys)}, params)
    assert pairwise_cosines(same)[("a", "b")] == pytest.approx(1.0, abs=1e-6)
    loss = model.loss(feats, "emotion", ys)
    opposed = task_gradients({"a": loss, "b": -loss}, params)
    assert pairwise_cosines(opposed)[("a", "b")] == pytest.approx(-1.0, abs=1e-6)
    log = ConflictLog()
    for step in range(3):
        log.record(step, same, "all")
        log.record(step, opposed, "all")
    assert torch.linalg.vector_norm(same["a"]) > 0
    summary = {(s["task_a"], s["task_b"]): s for s in log.summary()}
    assert summary[("a", "b")]["steps"] == 6 and summary[("a", "b")]["conflict_share"] == pytest.approx(0.5)
    paths = log.write(tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "conflicting steps" in paths["md"].read_text()


# ------------------------------------------------------------------------------------------------ the model


def test_socialfusion_trains_with_falling_loss_and_round_trips(tiny_lm, tiny_clip, tmp_path):
    from PIL import Image

    from pipeline.backends.base import Prompt

    model = SocialFusionModel.create(encoder=tiny_clip, feature_dim=32, lm=tiny_lm, layer=2, image_size=32,
                                     connector_hidden=32, lora={"r": 4}, seed=0,
                                     tasks={"emotion": LABELS, "valence": ["positive", "negative"]})
    settings = TrainSettings(steps=30, batch_size=6, lr=2e-2, sampler="progressive", conflict_every=5,
                             val_fraction=0.25, n_boot=50)
    report = train(model, _examples(), settings)
    totals = [r["total"] for r in report.losses]
    assert np.mean(totals[-5:]) < 0.8 * np.mean(totals[:5]), totals
    assert [r["step"] for r in report.conflict.rows if r["group"] == "all"] == [1, 6, 11, 16, 21, 26]
    assert {r["group"] for r in report.conflict.rows} == {"all", "connector", "lora"}
    assert set(report.validation) == {"emotion", "valence"} and not set(report.train_videos) & set(report.val_videos)
    paths = write_training_report(report, tmp_path / "training")
    assert paths["png"].is_file() and json.loads(paths["training"].read_text())["losses"]

    folder = model.save(tmp_path / "sf")
    names = {p.name for p in folder.iterdir()}
    assert {"socialfusion.json", "connector.safetensors", "adapter_model.safetensors", "adapter_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]  # no pickle
    loaded = SocialFusionModel.load(folder)
    feats = [e.feats for e in _examples(seed=9)[:4]]
    model.eval()
    assert loaded.label_scores(feats, LABELS) == model.label_scores(feats, LABELS)
    assert loaded.predict(feats, "valence") == model.predict(feats, "valence")

    # the classify backend: images -> frozen CLIP features -> the loaded model
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    sf_cfg = ModelConfig(model=str(folder), backend="socialfusion", device="cpu")
    backend = SocialFusionBackend(sf_cfg)
    prompt = Prompt([images[0], "some text the model ignores", images[1], "Which emotion?"])
    scores = backend.score_labels([prompt], ["happy", "sad"])[0]
    enc = VisionEncoder(tiny_clip)
    direct = loaded.label_scores([enc.encode(images, [2])[2]], ["happy", "sad"])[0]
    for lab in ("happy", "sad"):
        assert scores[lab].logprob == pytest.approx(direct[lab][0], abs=1e-5)
        assert scores[lab].end_logprob == pytest.approx(direct[lab][2], abs=1e-5)
        assert scores[lab].n_tokens == 1
    assert backend.count_prompt_tokens(prompt) == loaded.n_prompt_tokens(2)
    assert isinstance(backend.generate([prompt], max_new_tokens=3)[0], str)
    ident = model_identity(sf_cfg)
    assert ident["backend"] == "socialfusion" and ident["local"].startswith("local-sha256:")
    assert str(tmp_path) not in json.dumps(ident)
    backend.close()


def test_socialfusion_training_resumes_from_its_checkpoint_to_the_same_weights(tiny_lm, tmp_path, monkeypatch):
    import torch

    def model():
        return SocialFusionModel.create(encoder=tiny_lm, feature_dim=32, lm=tiny_lm, connector_hidden=16, seed=0,
                                        lora={"r": 2}, tasks={"emotion": LABELS, "valence": ["positive", "negative"]})

    settings = TrainSettings(steps=6, batch_size=4, lr=1e-2, conflict_every=2, val_fraction=0.25, n_boot=0, save_every=2,
                             report_to=["tensorboard"])
    whole = model()
    done = train(whole, _examples(), settings, out_dir=tmp_path / "a")
    calls = []
    real_loss = SocialFusionModel.loss

    def interrupted_in_step_5(self, *args):  # two tasks: two losses per step
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(SocialFusionModel, "loss", interrupted_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(model(), _examples(), settings, out_dir=tmp_path / "b")
    monkeypatch.setattr(SocialFusionModel, "loss", real_loss)
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text()) == {"dir": "step-0000004"}
    resumed_model = model()
    resumed = train(resumed_model, _examples(), settings, out_dir=tmp_path / "b")
    assert resumed.resumed_from == 4 and [r["step"] for r in resumed.losses] == list(range(1, 7))
    assert [r["total"] for r in resumed.losses] == pytest.approx([r["total"] for r in done.losses], abs=1e-6)
    # TensorBoard (report_to): every step once, the interrupted run's step 5 purged; the losses and validation metrics
    # of the report
    logged = tensorboard_scalars(tmp_path / "b" / "tracking" / "tensorboard" / "b")
    for key in ("total", "emotion", "valence"):
        tag = "train/loss" if key == "total" else f"train/loss_{key}"
        assert logged[tag] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in resumed.losses], tag
    for task, metrics in resumed.validation.items():
        assert logged[f"val/{task}/uar"] == [(6, pytest.approx(metrics["uar"], rel=1e-6))]
        assert logged[f"val/{task}/war"] == [(6, pytest.approx(metrics["war"], rel=1e-6))]
    for (name, a), (_, b) in zip(whole.connector.state_dict().items(), resumed_model.connector.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(SocialFusionError, match="another model, settings or set of clips"):
        train(model(), _examples(seed=3), settings, out_dir=tmp_path / "b")


# ------------------------------------------------------------------------------------------------ real clips


def _extract(run_dir, fcfg, cache, out, **kwargs):
    clips, _ = clips_of(run_dir)
    cfg = load_config(None, ["run.progress=false", "run.workers=1"])
    return extract(clips, fcfg, cfg, out, cache_dir=cache, log=io.StringIO(), **kwargs)


def test_probe_features_are_a_cached_stage_of_the_runner(keyframed, tiny_clip, tmp_path):
    run_dir, cache_dir = keyframed
    cfg = FeatureConfig(encoder=tiny_clip, layers=[0, -1], image_size=32, batch_size=5)
    loads = VisionEncoder.loads
    first = _extract(run_dir, cfg, cache_dir, tmp_path / "f1")
    assert (first.report.computed, first.report.cached, first.failed) == (3, 0, {})
    assert first.layers == [0, 2] and VisionEncoder.loads == loads + 1
    videos = sorted(first.keys)
    cache = Cache(cache_dir)
    kf = cache.get("keyframes", RunDir(run_dir).find(videos[0]).artifacts["keyframes"]).json("keyframes.json")["indices"]
    f = first.load(videos[0])
    assert list(f.frame_indices) == kf and f.layers[2].shape == (len(kf), 32) and f.layers[2].dtype == np.float32
    assert first.clip_level(2, videos).shape == (3, 32)
    assert first.frame_level(0, [videos[1]])[0].shape[1] == 32
    # a run directory of its own: the features section in its config, the stage line with its counts
    assert RunDir(tmp_path / "f1").config()["features"]["layers"] == [0, -1] and RunDir(tmp_path / "f1").status()["stages"][-1] == "features"

    # same settings (layer -1 spelled 2, other batch size and device): nothing computed, no encoder loaded, same keys
    again = _extract(run_dir, cfg.model_copy(update={"layers": [2, 0], "batch_size": 1, "device": "cpu"}), cache_dir,
                     tmp_path / "f2")
    assert (again.report.computed, again.report.cached) == (0, 3) and again.keys == first.keys
    assert VisionEncoder.loads == loads + 1
    forced = _extract(run_dir, cfg, cache_dir, tmp_path / "f3", force=True)
    assert forced.report.computed == 3 and forced.report.reasons == {"forced": 3} and forced.keys == first.keys

    # another layer set or frame choice is another artifact
    other = _extract(run_dir, cfg.model_copy(update={"layers": [1]}), cache_dir, tmp_path / "f4")
    assert other.report.computed == 3 and set(other.keys.values()).isdisjoint(first.keys.values())
    dense = _extract(run_dir, cfg.model_copy(update={"frames": "all", "max_frames": 5}), cache_dir, tmp_path / "f5")
    assert dense.report.computed == 3
    assert all(len(dense.load(v).frame_indices) == 5 for v in dense.keys)
    assert len(list((Path(cache_dir) / "features").glob("*/*/meta.json"))) == 9


def test_a_clip_whose_features_fail_is_recorded_and_the_others_go_on(keyframed, tiny_clip, tmp_path):
    run_dir, cache_dir = keyframed
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    victim = sorted(RunDir(run_dir).manifest(), key=lambda r: r.video)[0]
    kf = Cache(cache).get("keyframes", victim.artifacts["keyframes"])
    doc, motion, meta = kf.json("keyframes.json"), kf.npz("motion.npz"), kf.meta()

    def no_keyframes(out):  # a sound artifact (as the cache checks it) from which features cannot be computed
        out.json("keyframes.json", {**doc, "indices": []})
        out.npz("motion.npz", **motion)

    Cache(cache).write("keyframes", kf.key, {"video_id": meta["video_id"]}, no_keyframes, replace=True)
    res = _extract(run_dir, FeatureConfig(encoder=tiny_clip, image_size=32), cache, tmp_path / "f")
    assert set(res.failed) == {victim.video} and len(res.keys) == 2
    rows = [r for _, r in RunDir(tmp_path / "f").failures()]
    assert [(r["video"], r["stage"], r["error"]) for r in rows] == [(victim.video, "features", "StageInputError")]
    assert rows[0]["message"].endswith(": no frame to encode")


def test_probe_and_socialfusion_commands_on_clips(keyframed, clip_dir, tiny_clip, tiny_lm, tmp_path):
    """``dfer probe`` and ``dfer socialfusion train`` end to end, then the trained model as the classify
    backend of a normal run and report, scoring exactly what it was trained on."""
    from pipeline.report import write_report

    _, cache_dir = keyframed
    table = tmp_path / "tasks.csv"
    table.write_text("video,emotion,valence\npan.mp4,happy,positive\nodd.avi,happy,negative\nsub/zoom.webm,sad,negative\n")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = dfer_main(["probe", str(clip_dir["root"]), "--encoder", tiny_clip, "--layers", "all", "--labels",
                              str(table), "--image-size", "32", "--out", str(tmp_path / "probe"), "--cache",
                              str(cache_dir), "-q", "--n-boot", "50", "--val-fraction", "0.5"])
    assert code == 0, err.getvalue()
    rows = json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"]
    assert {(r["task"], r["layer"]) for r in rows} == {(t, k) for t in ("emotion", "valence") for k in (0, 1, 2)}
    assert "faces: 0 cached" not in err.getvalue()  # the module fixture's faces/keyframes were reused
    assert "| emotion |" in out.getvalue()

    # a run directory as INPUT: its manifest and cache are reused, and the features come from the cache
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = dfer_main(["probe", str(keyframed[0]), "--encoder", tiny_clip, "--layers", "0,1,-1", "--labels",
                              str(table), "--tasks", "emotion", "--image-size", "32", "--out", str(tmp_path / "probe2"),
                              "--n-boot", "10", "--val-fraction", "0.5"])
    assert code == 0 and "3 cached, 0 computed" in err.getvalue(), err.getvalue()

    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = dfer_main(["conflict", str(keyframed[0]), "--encoder", tiny_clip, "--lm", tiny_lm, "--labels",
                              str(table), "--image-size", "32", "--steps", "3", "--train-batch", "2",
                              "--connector-hidden", "16", "--val-fraction", "0.5", "--n-boot", "10",
                              "--out", str(tmp_path / "conflict")])
    assert code == 0, err.getvalue()
    summary = json.loads((tmp_path / "conflict" / "conflict.json").read_text())["summary"]
    assert [(s["group"], s["task_a"], s["task_b"], s["steps"]) for s in summary] == [("all", "emotion", "valence", 3)]
    assert not (tmp_path / "conflict" / "socialfusion.json").exists()  # a diagnosis, no model saved

    model_dir = tmp_path / "sf-model"
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = dfer_main(["socialfusion", "train", str(clip_dir["root"]), "--encoder", tiny_clip, "--layer", "-1",
                              "--lm", tiny_lm, "--lora", "--lora-r", "2", "--labels", str(table), "--label-set", "dfew",
                              "--image-size", "32", "--steps", "4", "--train-batch", "2", "--connector-hidden", "16",
                              "--val-fraction", "0.5", "--n-boot", "20", "--out", str(model_dir),
                              "--cache", str(cache_dir), "-q", "--report-to", "tensorboard"])
    assert code == 0, err.getvalue()
    assert (model_dir / "training" / "conflict.png").is_file()
    # --report-to tensorboard: the losses of training.json, step by step
    losses = json.loads((model_dir / "training" / "training.json").read_text())["losses"]
    logged = tensorboard_scalars(model_dir / "training" / "tracking" / "tensorboard" / "sf-model")
    assert logged["train/loss"] == [(r["step"], pytest.approx(r["total"], rel=1e-6)) for r in losses] and len(losses) == 4
    sf_cfg = json.loads((model_dir / "socialfusion.json").read_text())
    assert sf_cfg["layer"] == 2 and sf_cfg["tasks"]["emotion"][:2] == ["happy", "sad"] and len(sf_cfg["tasks"]["emotion"]) == 7

    res = run(clip_dir["root"], tmp_path / "run", cache_dir, "classify.model.backend=socialfusion",
              f"classify.model.model={model_dir}", "classify.use_summaries=false", "classify.image_size=32",
              "classify.model.device=cpu")
    assert res.n_failed == 0, failures(tmp_path / "run")
    scores = {r["video"]: r for _, r in RunDir(tmp_path / "run").scores()}
    assert set(scores) == {"pan.mp4", "odd.avi", "sub/zoom.webm"}
    # the classify stage fed the model the same crops as training: its scores equal scoring the cached features
    model = SocialFusionModel.load(model_dir)
    feats = _extract(tmp_path / "run", FeatureConfig(encoder=tiny_clip, layers=[2], image_size=32), cache_dir,
                     tmp_path / "feats")
    assert feats.report.computed == 0
    direct = model.label_scores(feats.frame_level(2, ["pan.mp4"]), ["happy", "fear"])[0]
    stage = res.keys["pan.mp4"]["classify"]
    stored = Cache(cache_dir).get("classify", stage).json("scores.json")["scores"]
    assert stored["happy"]["logprob"] == pytest.approx(direct["happy"][0], abs=1e-4)
    assert stored["fear"]["end_logprob"] == pytest.approx(direct["fear"][2], abs=1e-4)
    labels = tmp_path / "labels.csv"
    labels.write_text("video,label\npan.mp4,happy\nodd.avi,happy\nsub/zoom.webm,sad\n")
    rep = write_report(tmp_path / "run", labels_file=labels)
    assert rep["metrics"]["n"] == 3 and (tmp_path / "run" / "metrics.json").is_file()


def test_socialfusion_validation_reports_the_uar_dfer_report_computes(clip_dir, special_clips, tiny_clip, tiny_lm,
                                                                       tmp_path):
    """One scoring rule: the validation of ``dfer socialfusion train`` and ``dfer report`` on a run of the saved model
    over the same clips rank labels alike (pipeline/eval/ranking.py), so they report the same predictions and UAR."""
    from pipeline.report import build_report
    from tests.conftest import copy_clip

    clips = tmp_path / "clips"
    named = {"pan.mp4": clip_dir["pan.mp4"], "odd.avi": clip_dir["odd.avi"], "zoom.webm": clip_dir["sub/zoom.webm"],
             **{f"{k}.mp4": special_clips[k] for k in ("rotated", "vfr", "two", "expr")}}
    for name, spec in named.items():
        copy_clip(spec, clips, name)
    truth = dict(zip(sorted(named), ["happy", "sad", "happy", "sad", "angry", "happy", "sad"]))
    table = tmp_path / "tasks.csv"
    table.write_text("video,emotion\n" + "".join(f"{v},{lab}\n" for v, lab in truth.items()))
    model_dir, cache_dir = tmp_path / "sf-model", tmp_path / "cache"
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = dfer_main(["socialfusion", "train", str(clips), "--encoder", tiny_clip, "--layer", "-1", "--lm", tiny_lm,
                          "--labels", str(table), "--label-set", "dfew", "--image-size", "32", "--steps", "3",
                          "--train-batch", "2", "--connector-hidden", "16", "--val-fraction", "0.5", "--n-boot", "0",
                          "--out", str(model_dir), "--cache", str(cache_dir), "-q"])
    assert code == 0, err.getvalue()
    training = json.loads((model_dir / "training" / "training.json").read_text())
    val, val_videos = training["validation"]["emotion"], training["val_videos"]
    assert len(val_videos) >= 3

    res = run(clips, tmp_path / "run", cache_dir, "classify.model.backend=socialfusion", f"classify.model.model={model_dir}",
              "classify.use_summaries=false", "classify.image_size=32", "classify.model.device=cpu")
    assert res.n_failed == 0, failures(tmp_path / "run")
    val_labels = tmp_path / "val.csv"
    val_labels.write_text("video,label\n" + "".join(f"{v},{truth[v]}\n" for v in val_videos))
    rep = build_report(tmp_path / "run", labels_file=val_labels, n_boot=0)
    assert rep["metrics"]["n"] == len(val_videos)
    assert rep["metrics"]["uar"] == pytest.approx(val["uar"], abs=1e-12)
    # on every clip: the model's own prediction (what validation calls) is the run's
    model = SocialFusionModel.load(model_dir)
    feats = _extract(tmp_path / "run", FeatureConfig(encoder=tiny_clip, layers=[2], image_size=32), cache_dir,
                     tmp_path / "feats")
    assert feats.report.computed == 0  # training's features, from the cache
    videos = sorted(named)
    assert dict(zip(videos, model.predict(feats.frame_level(2, videos), "emotion"))) == rep["predictions"]
    assert val["predictions"] == {v: rep["predictions"][v] for v in val_videos}  # training.json lists them


# ------------------------------------------------------------------------------------------------ bad inputs


def test_text_only_model_is_not_an_encoder_and_nothing_is_extracted(keyframed, tiny_lm, tmp_path):
    with pytest.raises(EncoderError, match=r"qwen2-tiny.*is not a vision model \(model_type 'qwen2'"):
        _extract(keyframed[0], FeatureConfig(encoder=tiny_lm), tmp_path / "fresh-cache", tmp_path / "out")
    assert not (tmp_path / "fresh-cache").exists() and not (tmp_path / "out").exists()


def test_layer_out_of_range_is_refused_before_extraction(keyframed, tiny_clip, tmp_path):
    loads = VisionEncoder.loads
    with pytest.raises(LayerError, match=r"clip-vision.*layer 3 is out of range; its vision tower has 2 layers"):
        _extract(keyframed[0], FeatureConfig(encoder=tiny_clip, layers=[-1, 3]), tmp_path / "fresh-cache", tmp_path / "o")
    with pytest.raises(LayerError, match=r"layer -4 is out of range"):
        _extract(keyframed[0], FeatureConfig(encoder=tiny_clip, layers=[-4]), tmp_path / "fresh-cache", tmp_path / "o")
    assert VisionEncoder.loads == loads and not (tmp_path / "fresh-cache").exists()
    assert check_encoder(tiny_clip).n_layers == 2


def test_task_column_with_one_value_is_refused(tmp_path):
    table = tmp_path / "tasks.csv"
    table.write_text("video,emotion,valence\na.mp4,happy,positive\nb.mp4,sad,positive\nc.mp4,sad,\n")
    with pytest.raises(TaskError, match=r"task column 'valence' has a single value 'positive'"):
        read_task_table(table)
    assert set(read_task_table(table, ["emotion"])) == {"emotion"}
    with pytest.raises(TaskError, match=r"task column\(s\) \['arousal'\] not in the header"):
        read_task_table(table, ["arousal"])


def test_cli_refuses_bad_inputs_before_running_anything(clip_dir, tiny_lm, tiny_clip, tmp_path):
    table = tmp_path / "tasks.csv"
    table.write_text("video,emotion,valence\npan.mp4,happy,positive\nodd.avi,sad,positive\n")
    cases = [
        (["--encoder", tiny_lm], "is not a vision model"),
        (["--encoder", tiny_clip, "--layers", "0,5"], "layer 5 is out of range"),
        (["--encoder", tiny_clip], "task column 'valence' has a single value"),
    ]
    for extra, message in cases:
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = dfer_main(["probe", str(clip_dir["root"]), "--labels", str(table), "--out", str(tmp_path / "out"),
                                  "--cache", str(tmp_path / "cache"), *extra])
        assert code == 2 and message in err.getvalue(), err.getvalue()
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing ran, nothing cached
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = dfer_main(["conflict", str(clip_dir["root"]), "--encoder", tiny_clip, "--lm", tiny_clip,
                              "--labels", str(table), "--tasks", "emotion", "--out", str(tmp_path / "c")])
    assert code == 2 and "is not a causal language model (model_type 'clip_vision_model')" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------ encoder families


@pytest.fixture(scope="module")
def encoder_zoo(tmp_path_factory, tiny_clip) -> dict[str, str]:
    """One tiny checkpoint per family: CLIP vision, full CLIP (dual), SigLIP vision, and the vision towers of the
    tiny Qwen2-VL and Idefics3 VLMs of tests/tiny_models.py."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from tests.tiny_models import shared_tiny_model_dir

    root = tmp_path_factory.mktemp("zoo")
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(1)
    CLIPModel(CLIPConfig(vision_config=vc, projection_dim=16, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    SiglipVisionModel(SiglipVisionConfig(**vc)).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    return {"clip_vision": tiny_clip, "clip_dual": str(root / "clip"), "siglip": str(root / "siglip"),
            "qwen2vl": shared_tiny_model_dir("qwen2vl"), "idefics3": shared_tiny_model_dir("idefics3")}


@pytest.mark.parametrize("family,kind,tower,layers,dim,has_cls", [
    ("clip_vision", "vision", "CLIPVisionModel", 2, 32, True),
    ("clip_dual", "dual", "CLIPVisionModel", 2, 32, True),
    ("siglip", "vision", "SiglipVisionModel", 2, 32, False),
    ("qwen2vl", "vlm", "Qwen2VisionTransformerPretrainedModel", 1, 16, False),
    ("idefics3", "vlm", "Idefics3VisionTransformer", 1, 16, False),
])
def test_vision_tower_of_every_family(encoder_zoo, family, kind, tower, layers, dim, has_cls):
    from PIL import Image

    info = check_encoder(encoder_zoo[family])
    assert (info.kind, info.n_layers) == (kind, layers)
    enc = VisionEncoder(encoder_zoo[family])
    assert type(enc.tower).__name__ == tower and enc.has_cls == has_cls
    assert not any(p.requires_grad for p in enc.tower.parameters())
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    feats = enc.encode(images, [0, layers])
    assert {k: v.shape for k, v in feats.items()} == {0: (3, dim), layers: (3, dim)}
    alone = enc.encode(images[1:2], [layers])[layers]
    np.testing.assert_allclose(alone[0], feats[layers][1], atol=1e-5)  # one image's features do not depend on the batch
    assert not np.allclose(feats[layers][0], feats[layers][2])
    if not has_cls:
        with pytest.raises(EncoderError, match="pooling 'cls' needs a class token"):
            enc.encode(images, [layers], "cls")
