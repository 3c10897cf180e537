"""dfer finetune with a tiny random Qwen2-VL on a handful of synthetic clips: the loss goes down, a killed run
resumes to the same weights, the adapter changes classify's scores and its cache key, and bad inputs stop
before any training. Torch runs on one thread here (the test machines' cores are shared)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.engine.config import load_config
from pipeline.cli import main as dfer_main
from pipeline.finetune import finetune, trainer
from pipeline.backends.adapter import adapter_hash
from pipeline.finetune.data import class_weights, split_train_val
from pipeline.core.errors import FinetuneError, LabelError
from stages.modelstage import PreflightError
from pipeline.engine.rundir import RunDir
from tests import media
from tests.events import tensorboard_scalars
from tests.runs import run
from tests.tiny_models import shared_tiny_model_dir

# happy is the head class: 4 clips (3 train + 1 val), sad 2 (1 + 1)
CLIPS = [("h1.mp4", "pan", "happy"), ("h2.mp4", "zoom", "happy"), ("h3.mp4", "static", "happy"),
         ("h4.mp4", "pan", "happy"), ("s1.mp4", "static", "sad"), ("s2.mp4", "zoom", "sad")]
TRAIN = [
    "finetune.epochs=2", "finetune.samples_per_epoch=8", "finetune.batch_size=2", "finetune.grad_accum=1",
    "finetune.lr=5e-3", "finetune.lora_r=8", "finetune.warmup_ratio=0", "finetune.val_fraction=0.34",
    "finetune.sampling=sqrt", "finetune.loss_weights=effective", "finetune.cb_beta=0.9",
    "finetune.save_every_steps=2",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return {"qwen": shared_tiny_model_dir("qwen2vl"), "idefics": shared_tiny_model_dir("idefics3")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-clips")
    for i, (name, motion, _label) in enumerate(CLIPS):
        media.make_face_clip(root / name, motion=motion, seconds=1.0, seed=20 + i)
    lst = root / "list.csv"
    lst.write_text("path,label\n" + "".join(f"{n},{lab}\n" for n, _m, lab in CLIPS))
    return lst


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ft-cache")


def model_args(models, classifier="qwen"):
    return ["run.workers=1", "run.progress=false", f"context.model.model={models['idefics']}",
            "context.model.max_new_tokens=4", f"classify.model.model={models[classifier]}"]


def train(clips, out, cache, models, *extra, log=None, **kwargs):
    cfg = load_config(None, [*model_args(models), *TRAIN, *extra])
    return finetune(clips, None, out, cfg, cache_dir=cache, log=log or io.StringIO(), **kwargs)


@pytest.fixture(scope="module")
def trained(clips, cache, models, tmp_path_factory):
    log = io.StringIO()
    res = train(clips, tmp_path_factory.mktemp("ft") / "ckpt", cache, models, "finetune.report_to=[tensorboard]", log=log)
    res.log = log.getvalue()
    return res


def true_label_nll(run_dir) -> dict[str, float]:
    return {r["video"]: -r["raw"][r["label"]]["logprob"] for _, r in RunDir(run_dir).scores()}


def stages(res) -> dict:
    return {r.stage: (r.cached, r.computed) for r in res.reports}


# ---------------------------------------------------------------------------------------------- training


def test_training_reduces_the_loss(trained, clips, cache, models, tmp_path):
    assert (trained.n_train, trained.n_val) == (4, 2)
    assert trained.train_counts["happy"] == 3 and trained.train_counts["sad"] == 1
    assert trained.total_steps == trained.global_step == 8  # 2 epochs x 8 clips / batch 2
    losses = [s["loss"] for s in trained.steps]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses
    hist = trained.history
    assert [h["epoch"] for h in hist] == [0, 1, 2] and hist[0]["train_loss"] is None  # epoch 0: the base model
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] - 0.5, hist
    assert all(0 <= h["val_uar"] <= 1 and h["val_n"] == 2 for h in hist)
    assert trained.best["epoch"] in (1, 2) and trained.best["uar"] == max(h["val_uar"] for h in hist[1:])
    assert "epoch 2/2: train loss" in trained.log and "val UAR" in trained.log
    out = trained.out_dir
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "train_counts.json").read_text())["happy"] == 3
    split = json.loads((out / "split.json").read_text())
    assert sorted(e["label"] for e in split["val"]) == ["happy", "sad"]  # stratified
    assert all(set(e["upstream"]) == {"faces", "keyframes", "context"} for e in split["train"])  # summaries on

    # the same label-token loss, measured by classify itself on all six clips, without and with the adapter
    base = run(clips, tmp_path / "r0", cache, *model_args(models))
    tuned = run(clips, tmp_path / "r1", cache, *model_args(models), f"classify.adapter={out}", allow_overlap=True)
    assert stages(base)["context"][1] == 0 and stages(tuned)["faces"] == (6, 0)  # upstream came from the cache
    before, after = true_label_nll(tmp_path / "r0"), true_label_nll(tmp_path / "r1")
    # on the clips it trained on (the held-out ones are checked by val_loss above and below)
    val = [e["video"] for e in split["val"]]
    fitted = [v for v in before if v not in val]
    mean_before, mean_after = (sum(d[v] for v in fitted) / len(fitted) for d in (before, after))
    # the base model and an adapter that learned nothing score alike (difference ~0); trained: 0.83 nats lower with
    # the faces stage's crops of VERSION 2 (more than 1.0 with those of VERSION 1: the tiny model's numbers follow
    # the exact pixels)
    assert mean_after < mean_before - 0.5, (before, after)
    # validation saw exactly classify's prompts and scores: its loss is classify's, before and after training
    best = next(h for h in hist if h["epoch"] == trained.best["epoch"])
    assert hist[0]["val_loss"] == pytest.approx(sum(before[v] for v in val) / 2, abs=1e-5)
    assert best["val_loss"] == pytest.approx(sum(after[v] for v in val) / 2, abs=1e-3)  # adapter merged at inference


def test_tensorboard_holds_what_finetune_printed_and_saved(trained):
    """finetune.report_to=[tensorboard]: every step's loss and learning rate, and each epoch's train loss and validation
    metrics (epoch 0: the base model), equal the values of FinetuneResult / metrics.json and the printed lines."""
    scalars = tensorboard_scalars(trained.out_dir / "tracking" / "tensorboard" / "ckpt")
    assert scalars["train/loss"] == [(s["step"], pytest.approx(s["loss"], rel=1e-6)) for s in trained.steps]
    assert scalars["train/lr"] == [(s["step"], pytest.approx(s["lr"], rel=1e-6)) for s in trained.steps]
    saved = json.loads((trained.out_dir / "metrics.json").read_text())["history"]
    assert saved == trained.history and [h["step"] for h in saved] == [0, 4, 8]
    for tag, key in (("val/uar", "val_uar"), ("val/war", "val_war"), ("val/macro_f1", "val_macro_f1"),
                     ("val/loss", "val_loss")):
        assert scalars[tag] == [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in saved], tag
    assert scalars["train/epoch_loss"] == [(h["step"], pytest.approx(h["train_loss"], rel=1e-6)) for h in saved[1:]]
    printed = [float(x) for x in re.findall(r"epoch \d/2: train loss ([0-9.]+)", trained.log)]
    assert printed == [pytest.approx(v, abs=5e-4) for _, v in scalars["train/epoch_loss"]]


def test_experiment_trackers_need_their_packages(clips, cache, models, tmp_path, capsys, monkeypatch):
    """--report-to wandb / mlflow: without the package, exit code 2 and a message naming the setting and the package,
    before anything is prepared; with it (offline: WANDB_MODE=offline, an MLflow file store), the run logs there."""
    for name in ("wandb", "mlflow"):
        out = tmp_path / name
        args = ["finetune", str(clips), "--out", str(out), "--cache", str(cache), "-q", "--report-to", name]
        for s in [*model_args(models), *TRAIN, "finetune.epochs=1", "finetune.samples_per_epoch=2"]:
            args += ["--set", s]
        if importlib.util.find_spec(name) is None:
            assert dfer_main(args) == 2
            err = capsys.readouterr().err
            assert (f"finetune.report_to={name} needs the '{name}' package, which is not installed here: "
                    f"pip install {name}") in err
            assert not out.exists()  # nothing prepared, nothing trained
            continue
        monkeypatch.setenv("WANDB_MODE", "offline")
        assert dfer_main(args) == 0, capsys.readouterr().err
        if name == "wandb":
            assert list((out / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
        else:
            import mlflow

            client = mlflow.MlflowClient((out / "tracking" / "mlruns").resolve().as_uri())
            runs = client.search_runs([client.get_experiment_by_name("dfer-finetune").experiment_id])
            steps = json.loads((out / "metrics.json").read_text())["global_step"]
            assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == steps


def test_kill_and_resume_gives_the_same_adapter(trained, clips, cache, models, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    args = [str(clips), "--out", str(out), "--cache", str(cache), "-q", "--report-to", "tensorboard"]
    for s in [*model_args(models), *TRAIN]:
        args += ["--set", s]
    calls = []
    real_loss = trainer.Trainer.batch_loss

    def interrupted_in_step_8(self, batch):  # Ctrl-C during step 8 (grad_accum=1: one batch per step)
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_loss(self, batch)

    monkeypatch.setattr(trainer.Trainer, "batch_loss", interrupted_in_step_8)
    assert dfer_main(["finetune", *args]) == 130  # the last checkpoint is step 6 (save_every_steps=2)
    monkeypatch.setattr(trainer.Trainer, "batch_loss", real_loss)
    pointer = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert pointer == {"dir": "step-0000006"} and not (out / "adapter").exists()
    (out / "checkpoints" / ".tmp-step-0000008").mkdir()  # debris of a save killed half-way
    resumed = train(clips, out, cache, models, "finetune.report_to=[tensorboard]")
    assert resumed.resumed_from == 6 and resumed.global_step == 8
    # TensorBoard shows each step once: what the interrupted run logged after its checkpoint (step 7) is purged
    logged = tensorboard_scalars(out / "tracking" / "tensorboard" / "ckpt")["train/loss"]
    assert logged == [(s["step"], pytest.approx(s["loss"], rel=1e-6)) for s in resumed.steps]
    assert not (out / "checkpoints" / ".tmp-step-0000008").exists()
    a = load_file(str(trained.last_adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.last_adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert [s["loss"] for s in resumed.steps] == pytest.approx([s["loss"] for s in trained.steps], abs=1e-6)
    assert resumed.best == trained.best
    assert adapter_hash(resumed.adapter_dir) == adapter_hash(trained.adapter_dir)
    again = train(clips, out, cache, models)  # finished: nothing to do
    assert again.global_step == 8 and again.resumed_from is None


# ---------------------------------------------------------------------------------------------- the adapter in classify


def test_adapter_hash_is_in_the_classify_key(trained, clips, cache, models, tmp_path):
    ad = trained.adapter_dir
    r1 = run(clips, tmp_path / "r1", cache, *model_args(models), f"classify.adapter={trained.out_dir}",
             allow_overlap=True)  # the training clips, on purpose: their keys are what is compared
    # the adapter folder itself, moved elsewhere: same content, same key, nothing recomputed
    moved = tmp_path / "moved-adapter"
    shutil.copytree(ad, moved)
    r2 = run(clips, tmp_path / "r2", cache, *model_args(models), f"classify.adapter={moved}", allow_overlap=True)
    assert stages(r2)["classify"] == (6, 0)
    assert r2.keys == r1.keys
    # other adapter weights: classify only is recomputed
    w = load_file(str(moved / "adapter_model.safetensors"))
    save_file({k: (v + 0.05 if "lora_B" in k else v) for k, v in w.items()}, str(moved / "adapter_model.safetensors"))
    r3 = run(clips, tmp_path / "r3", cache, *model_args(models), f"classify.adapter={moved}", allow_overlap=True)
    assert stages(r3) == {"faces": (6, 0), "keyframes": (6, 0), "context": (6, 0), "classify": (0, 6)}
    base = run(clips, tmp_path / "r0", cache, *model_args(models))
    for vid in r1.keys:
        assert {s: r3.keys[vid][s] == r1.keys[vid][s] for s in r1.keys[vid]} == {
            "faces": True, "keyframes": True, "context": True, "classify": False}
        assert len({base.keys[vid]["classify"], r1.keys[vid]["classify"], r3.keys[vid]["classify"]}) == 3
    s1, s3 = true_label_nll(tmp_path / "r1"), true_label_nll(tmp_path / "r3")
    assert all(abs(s1[v] - s3[v]) > 1e-4 for v in s1)


def test_a_run_on_the_adapters_training_clips_stops_before_anything_unless_allowed(trained, clips, cache, models,
                                                                                 tmp_path, capsys):
    recorded = json.loads((trained.adapter_dir / "dfer_adapter.json").read_text())["clips"]
    split = json.loads((trained.out_dir / "split.json").read_text())
    assert recorded == {part: {e["video"]: e["fingerprint"] for e in split[part]} for part in ("train", "val")}
    assert len(recorded["train"]) == 4 and sorted([*recorded["train"], *recorded["val"]]) == sorted(c for c, *_ in CLIPS)
    one = sorted(recorded["train"])[0]
    # two clips: one of the training clips under another name, and a clip it never saw
    test = tmp_path / "test"
    test.mkdir()
    shutil.copy(clips.parent / one, test / "renamed.mp4")
    media.make_face_clip(test / "new.mp4", motion="pan", seconds=1.0, seed=99)
    args = ["run", str(test), "--cache", str(cache), "-q", *(x for o in [*model_args(models),
            f"classify.adapter={trained.out_dir}"] for x in ("--set", o))]
    assert dfer_main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert (f"dfer: error: 1 of the 2 clips of this run are also among the training and validation clips of the "
            f"adapter {trained.out_dir} (the same file content): renamed.mp4 (= {one})") in err
    assert "pass --allow-overlap to go on anyway" in err and not (tmp_path / "r").exists()
    assert dfer_main([*args, "--out", str(tmp_path / "r"), "--allow-overlap"]) == 0
    status = RunDir(tmp_path / "r").status()
    assert status["training_overlap"] == {"adapter": str(trained.out_dir), "clips": ["renamed.mp4"]}
    assert dfer_main(["report", str(tmp_path / "r")]) == 0
    assert "1 clip(s) of this run are among the training or validation clips of the adapter" in \
        (tmp_path / "r" / "report.md").read_text()
    (test / "renamed.mp4").unlink()  # the new clip alone: nothing to allow
    assert dfer_main([*args, "--out", str(tmp_path / "r2")]) == 0 and "training_overlap" not in RunDir(tmp_path / "r2").status()


def test_adapter_for_another_base_model_fails_before_any_clip(trained, clips, models, tmp_path):
    with pytest.raises(PreflightError, match=r"classify\.adapter: the adapter .*adapter was made for another base model"):
        run(clips, tmp_path / "r", tmp_path / "c", *model_args(models, classifier="idefics"),
            f"classify.adapter={trained.out_dir}")
    assert not (tmp_path / "c" / "faces").exists()
    with pytest.raises(PreflightError, match=r"no-such-adapter.*no such folder"):
        run(clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.adapter={tmp_path / 'no-such-adapter'}")
    with pytest.raises(PreflightError, match="not a PEFT adapter folder"):
        run(clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.adapter={tmp_path}")
    assert not (tmp_path / "c" / "faces").exists()


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_training_inputs_fail_before_training(clips, cache, models, tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text("video,label\nh1.mp4,happy\nh2.mp4,bored\ns1.mp4,sad\n")
    cfg = load_config(None, [*model_args(models), *TRAIN])
    with pytest.raises(LabelError, match=r"labels\.csv:3: unknown label 'bored'"):
        finetune(clips, bad, tmp_path / "a", cfg, cache_dir=cache)
    one = tmp_path / "one.csv"
    one.write_text("video,label\nh1.mp4,happy\nh2.mp4,Happy\nh3.mp4,happy\n")
    with pytest.raises(FinetuneError, match=r"one\.csv: the training set has only one class \('happy', 3 clips\)"):
        finetune(clips, one, tmp_path / "b", cfg, cache_dir=cache)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing prepared, nothing trained
    # the CLI turns them into exit code 2 and a message
    code = dfer_main(["finetune", str(clips), "--labels", str(bad), "--out", str(tmp_path / "c"), "--cache", str(cache), "-q"])
    assert code == 2 and "unknown label 'bored'" in capsys.readouterr().err
    code = dfer_main(["finetune", str(clips), "--out", str(tmp_path / "c"), "--set", "finetune.sampling=sometimes"])
    assert code == 2 and "finetune.sampling" in capsys.readouterr().err


def test_resuming_with_another_setup_is_refused(trained, clips, cache, models):
    with pytest.raises(FinetuneError, match=r"another setup.*finetune\.lr: 0\.005 -> 0\.001"):
        train(clips, trained.out_dir, cache, models, "finetune.lr=1e-3")


# ---------------------------------------------------------------------------------------------- pieces


def test_class_weights_and_split():
    counts = {"happy": 90, "sad": 10, "fear": 0}
    inv = class_weights(counts, "inverse")
    assert inv["fear"] == 0 and inv["sad"] == pytest.approx(9 * inv["happy"])
    assert inv["happy"] + inv["sad"] == pytest.approx(2)  # mean 1 over the classes with clips
    eff = class_weights(counts, "effective", beta=0.99)
    e_h, e_s = (1 - 0.99**90) / 0.01, (1 - 0.99**10) / 0.01  # effective numbers (Cui et al. 2019)
    assert eff["sad"] / eff["happy"] == pytest.approx(e_h / e_s)
    assert 1 < eff["sad"] / eff["happy"] < 9  # between no weighting and inverse frequency
    assert class_weights(counts, "none") == {"happy": 1.0, "sad": 1.0, "fear": 0.0}

    labels = {f"h{i}": "happy" for i in range(20)} | {f"s{i}": "sad" for i in range(5)} | {"f0": "fear"}
    train_a, val_a = split_train_val(labels, 0.2, seed=0)
    train_b, val_b = split_train_val(dict(reversed(list(labels.items()))), 0.2, seed=0)
    assert val_a == val_b and train_a == train_b  # deterministic, independent of list order
    assert sorted(val_a.values()) == ["happy"] * 4 + ["sad"]  # stratified; the single fear clip stays in training
    assert set(train_a) | set(val_a) == set(labels) and not set(train_a) & set(val_a)
    assert split_train_val(labels, 0.2, seed=1)[1] != val_a
    given = {"h0": "happy", "s0": "sad"}
    train_c, val_c = split_train_val(labels, 0.2, seed=0, val_labels=given)
    assert val_c == given and "h0" not in train_c
