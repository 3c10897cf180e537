"""context + classify end to end with tiny random models of two families (Qwen2-VL, Idefics3),
what each change recomputes, ablation switches, and bad model/template/label inputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from pipeline.modelstage import PreflightError
from pipeline.prompts import BUILTIN_DIR
from tests.conftest import copy_clip
from tests.runs import artifact, failures, run
from tests.tiny_models import tiny_model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"qwen": tiny_model_dir("qwen2vl", root), "idefics": tiny_model_dir("idefics3", root)}


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory, clip_dir, special_clips):
    root = tmp_path_factory.mktemp("vlm-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(special_clips["expr"], root, "b.mp4")
    lst = root / "list.csv"
    lst.write_text("path,label\na.mp4,happy\nb.mp4,Surprise\n")
    return lst


def model_args(models, captioner="idefics", classifier="qwen"):
    return [
        f"context.model.model={models[captioner]}",
        "context.model.max_new_tokens=6",
        f"classify.model.model={models[classifier]}",
    ]


def reports(res) -> dict:
    return {r.stage: (r.cached, r.computed) for r in res.reports}


def test_run_scores_every_label_of_every_clip(models, two_clips, tmp_path):
    log = io.StringIO()
    res = run(two_clips, tmp_path / "run", tmp_path / "c", *model_args(models), log=log)
    assert res.status == "complete" and res.n_failed == 0, failures(tmp_path / "run")
    assert [r.stage for r in res.reports] == ["faces", "keyframes", "context", "classify"]
    labels = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "predictions.csv", encoding="utf-8")))
    assert [r["video"] for r in rows] == ["a.mp4", "b.mp4"]
    assert [r["label"] for r in rows] == ["happy", "surprise"]  # "Surprise" resolved through the label set
    for r in rows:
        probs = [float(r[f"p_{lab}"]) for lab in labels]
        assert abs(sum(probs) - 1) < 1e-4 and r["prediction"] in labels
    scores = [json.loads(line) for line in open(tmp_path / "run" / "scores.jsonl", encoding="utf-8")]
    for s in scores:
        assert set(s["scores"]) == set(labels) and all(v < 0 for v in s["scores"].values())
        assert s["prediction"] == max(s["scores"], key=s["scores"].get)
    text = log.getvalue()
    assert "prompt tokens:" in text and "dense 5 fps" in text

    ctx = artifact(res, "b.mp4", "context").json("context.json")
    kf = artifact(res, "b.mp4", "keyframes").json("keyframes.json")
    assert len(ctx["gaps"]) == len(kf["gaps"]) == 3
    for gap, kgap in zip(ctx["gaps"], kf["gaps"]):
        assert (gap["t_start"], gap["t_end"]) == (kgap["t_start"], kgap["t_end"])
        assert isinstance(gap["summary"], str)
        sampled = [i for w in gap["windows"] for i in w["indices"]]
        assert set(sampled) <= set(kgap["between"] or [kgap["start_index"], kgap["end_index"]])
        # density: at least 4 frames and at least 5 fps of the gap (when the gap has that many)
        need = max(4, int((kgap["t_end"] - kgap["t_start"]) * 5))
        assert len(sampled) >= min(need, len(kgap["between"]))
        for w in gap["windows"]:
            assert w["timestamps"] == sorted(w["timestamps"]) and isinstance(w["caption"], str)
    sc = artifact(res, "b.mp4", "classify").json("scores.json")
    assert sc["prompt_tokens"] > 0 and sc["dense_tokens"] > 0 and sc["dense_frames"] >= 14


def test_what_each_change_recomputes(models, two_clips, tmp_path):
    base = model_args(models)
    run(two_clips, tmp_path / "r0", tmp_path / "c", *base)

    # a classify prompt change: classify only
    pdir = tmp_path / "prompts"
    shutil.copytree(BUILTIN_DIR, pdir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (pdir / "classify.j2").write_text((pdir / "classify.j2").read_text().replace("Answer with one word.", "Answer in one word."))
    res = run(two_clips, tmp_path / "r1", tmp_path / "c", *base, f"classify.prompt_dir={pdir}")
    assert reports(res) == {"faces": (2, 0), "keyframes": (2, 0), "context": (2, 0), "classify": (0, 2)}

    # a captioning prompt change: context and classify, never faces
    (pdir / "caption.j2").write_text((pdir / "caption.j2").read_text().replace("one short sentence", "a short sentence"))
    res = run(two_clips, tmp_path / "r2", tmp_path / "c", *base, f"context.prompt_dir={pdir}")
    assert reports(res) == {"faces": (2, 0), "keyframes": (2, 0), "context": (0, 2), "classify": (0, 2)}

    # another captioner: context and classify
    res = run(two_clips, tmp_path / "r3", tmp_path / "c", *model_args(models, captioner="qwen"))
    assert reports(res) == {"faces": (2, 0), "keyframes": (2, 0), "context": (0, 2), "classify": (0, 2)}

    # score post-processing (length normalisation) recomputes nothing
    res = run(two_clips, tmp_path / "r4", tmp_path / "c", *base, "classify.length_norm=mean", "classify.model.batch_size=1")
    assert reports(res) == {"faces": (2, 0), "keyframes": (2, 0), "context": (2, 0), "classify": (2, 0)}


def test_ablation_switches_change_only_what_they_must(models, two_clips, tmp_path):
    base = model_args(models)
    r0 = run(two_clips, tmp_path / "r0", tmp_path / "c", *base)
    k0 = r0.keys["b.mp4"]

    shuffled = run(two_clips, tmp_path / "s", tmp_path / "c", *base, "classify.shuffle=true")
    ks = shuffled.keys["b.mp4"]
    assert {s: ks[s] == k0[s] for s in k0} == {"faces": True, "keyframes": True, "context": True, "classify": False}

    no_sum = run(two_clips, tmp_path / "n", tmp_path / "c", *base, "classify.use_summaries=false")
    assert [r.stage for r in no_sum.reports] == ["faces", "keyframes", "classify"]  # context not even run
    assert no_sum.keys["b.mp4"]["classify"] not in (k0["classify"], ks["classify"])

    dense = run(two_clips, tmp_path / "d", tmp_path / "c", *base, "classify.dense_fps=5")
    assert [r.stage for r in dense.reports] == ["faces", "keyframes", "classify"]
    d_scores = artifact(dense, "b.mp4", "classify").json("scores.json")
    assert len(d_scores["frame_indices"]) >= 14  # 3 s at 5 fps

    no_kf = run(two_clips, tmp_path / "t", tmp_path / "c", *base, "classify.use_keyframes=false")
    assert artifact(no_kf, "b.mp4", "classify").json("scores.json")["frame_indices"] == []

    k6 = run(two_clips, tmp_path / "k", tmp_path / "c", *base, "keyframes.k=6")
    kk = k6.keys["b.mp4"]
    assert kk["faces"] == k0["faces"] and all(kk[s] != k0[s] for s in ("keyframes", "context", "classify"))
    assert len(artifact(k6, "b.mp4", "classify").json("scores.json")["frame_indices"]) == 6


def test_bad_model_template_and_labels_fail_before_any_clip(models, two_clips, tmp_path):
    with pytest.raises(PreflightError, match="classify.model: .*no/such/checkpoint"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models)[:2], "classify.model.model=/no/such/checkpoint")
    assert not (tmp_path / "c" / "faces").exists()  # nothing was processed

    pdir = tmp_path / "p"
    shutil.copytree(BUILTIN_DIR, pdir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (pdir / "classify.j2").write_text("{{ keyframes }} Which emotion? {{ labels | join(', ') }}")
    with pytest.raises(PreflightError, match=r"classify\.j2: 'keyframes' is undefined"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.prompt_dir={pdir}")

    lab = tmp_path / "labels.yaml"
    lab.write_text("name: mine\nlabels:\n  - name: happy\n  - name: sad\n  - name: Happy\n")
    with pytest.raises(PreflightError, match=r"labels\.yaml.*(duplicate|twice).*happy"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.labels={lab}")
    assert not (tmp_path / "c" / "faces").exists()


def test_cli_reports_bad_model_and_offline_default(two_clips, tmp_path, monkeypatch):
    import subprocess
    import sys

    env = {"DFER_CACHE": str(tmp_path / "c"), "HF_HUB_OFFLINE": "1"}
    import os

    full_env = {**os.environ, **env}
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(two_clips), "--out", str(tmp_path / "r"), "-q",
         "--set", "context.model.model=./missing-model"],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    assert bad.returncode == 2 and "context.model" in bad.stderr and "missing-model" in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(two_clips), "--out", str(tmp_path / "r"), "-q", "--set", "run.workers=1"],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    # default hub models cannot be downloaded here: model-free stages complete, then a clear stop
    assert ok.returncode == 0, ok.stderr
    assert "stopped before a model stage" in ok.stderr and "--set classify.model.model=" in ok.stderr
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["status"] == "stopped" and status["stopped_before"] == "context"
    assert status["stages"] == ["faces", "keyframes"]
    strict = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(two_clips), "--out", str(tmp_path / "r"), "-q", "--strict"],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    assert strict.returncode == 3 and "faces: 2 cached" in strict.stderr
