"""--preset msce: the paper's setup (uniform keyframes, four in-between frames per gap whatever its length, the
classifier as captioner, the paper's label sets), and ``context.model: classify.model`` on its own."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.engine.config import load_config
from pipeline.engine.rundir import RunDir
from pipeline.engine.runner import run_pipeline
from stages import classify, context, keyframes
from tests.conftest import copy_clip
from tests.runs import artifact, failures
from tests.tiny_models import shared_tiny_model_dir


@pytest.mark.parametrize("seconds", [1.0, 2.0, 4.0, 10.0, 30.0])
def test_msce_gives_every_gap_one_window_of_four_in_between_frames_whatever_its_length(seconds):
    cfg = load_config(preset="msce")
    t = np.arange(int(seconds * 25)) / 25
    still = {"expression": np.zeros(len(t)), "motion": np.zeros(len(t))}
    picks = keyframes.choose(t, still, cfg.keyframes, np.ones(len(t), bool))
    gaps = keyframes.gaps(picks, t, cfg.keyframes.edge_gap_min_s)
    plan = context.plan_windows(t, {"gaps": gaps}, cfg.context)
    assert len(picks) == 4 and [g["kind"] for g in plan].count("between") == 3
    for gap, kgap in zip(plan, gaps):
        (window,) = gap["windows"]
        inner = window["indices"][1:-1]
        assert window["indices"][0] == kgap["start_index"] and window["indices"][-1] == kgap["end_index"]
        assert len(inner) == min(4, len(kgap["between"])) and set(inner) <= set(kgap["between"]), (seconds, gap)


def test_the_captioner_is_whatever_classifier_is_set_after_the_preset(tmp_path):
    cfg = load_config(None, ["classify.model.model=org/other-vlm", "classify.model.revision=abc123"], preset="msce")
    assert cfg.context.model == cfg.classify.model and cfg.context.model.model == "org/other-vlm"
    assert context.key_extras(cfg.context)["model"] == classify.key_extras(cfg.classify)["model"] == \
        {"backend": "transformers", "model": "org/other-vlm", "revision": "abc123"}
    f = tmp_path / "mine.yaml"
    f.write_text("context:\n  model: classify.model\nclassify:\n  model: org/third\n")
    assert load_config(f).context.model.model == "org/third"  # the words work in any config file, not only presets
    assert load_config(preset="msce", overrides=["context.model=org/captioner"]).context.model.model == "org/captioner"
    assert load_config().context.model.model != load_config().classify.model.model  # dfer's default: a small captioner


def test_the_paper_label_sets_are_picked_with_classify_labels():
    assert load_config(preset="msce").classify.labels == "dfew"
    assert load_config(None, ["classify.labels=mafw"], preset="msce").classify.labels == "mafw"


def test_setting_the_captioner_under_msce_says_the_captioner_is_the_classifier_and_how_to_choose_another(capsys):
    assert main(["config", "show", "--preset", "msce", "--set", "context.model.model=org/captioner"]) == 2
    err = capsys.readouterr().err
    assert ("--set context.model.model: here context.model is 'classify.model' (as --preset msce sets it): the "
            "captioner is the classifier and has no settings of its own. --set classify.model.model=... changes both; "
            "to caption with another model, give the captioner its own: --set context.model=org/captioner") in err
    assert main(["config", "show", "--preset", "msce", "--set", "context.model=org/captioner"]) == 0  # as it says
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["context"]["model"]["model"] == "org/captioner"
    assert shown["classify"]["model"]["model"] == load_config().classify.model.model

    assert main(["config", "show", "--preset", "msce", "--set", "context.model.max_new_tokens=9"]) == 2
    assert ("give the captioner its own: --set 'context.model={model: MODEL}', then --set "
            "context.model.max_new_tokens=...") in capsys.readouterr().err
    assert main(["config", "show", "--preset", "msce", "--set", "context.model={model: org/captioner}",
                 "--set", "context.model.max_new_tokens=9"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["context"]["model"]["max_new_tokens"] == 9


def test_an_msce_run_captions_with_the_classifier_given_on_the_command_line(tmp_path, clip_dir):
    qwen = shared_tiny_model_dir("qwen2vl")
    copy_clip(clip_dir["pan.mp4"], tmp_path / "in", "a.mp4")
    cfg = load_config(None, ["run.progress=false", "run.workers=1", f"classify.model.model={qwen}",
                             "classify.model.max_new_tokens=6"], preset="msce")
    res = run_pipeline(tmp_path / "in", tmp_path / "run", cfg, cache_dir=tmp_path / "c", log=io.StringIO())
    assert res.status == "complete" and res.n_failed == 0, failures(tmp_path / "run")
    captioner = artifact(res, "a.mp4", "context").meta()["extras"]["model"]
    assert captioner == artifact(res, "a.mp4", "classify").meta()["extras"]["model"]
    assert "local" in captioner and RunDir(tmp_path / "run").config()["context"]["model"]["model"] == qwen
    gaps = artifact(res, "a.mp4", "context").json("context.json")["gaps"]
    assert all(len(g["windows"]) == 1 and 2 <= len(g["windows"][0]["indices"]) <= 6 for g in gaps)
