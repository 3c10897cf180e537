"""context + classify end to end with tiny random models of two families (Qwen2-VL, Idefics3),
what each change recomputes, ablation switches, and bad model/template/label inputs."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
import shutil

import pytest

from stages.modelstage import PreflightError
from stages.templates import BUILTIN_DIR
from pipeline.engine.rundir import RunDir
from tests.conftest import copy_clip
from stages.classify import dense_indices, strip_times
from tests.runs import artifact, failures, run, track_of
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
    scores = [r for _, r in RunDir(tmp_path / "run").scores()]
    for s in scores:
        assert set(s["scores"]) == set(labels) and all(v < 0 for v in s["scores"].values())
        assert s["prediction"] == max(s["scores"], key=s["scores"].get)
    text = log.getvalue()
    assert "prompt tokens:" in text and "dense 5 fps" in text

    ctx = artifact(res, "b.mp4", "context").json("context.json")
    kf = artifact(res, "b.mp4", "keyframes").json("keyframes.json")
    assert len(ctx["gaps"]) == len(kf["gaps"])
    for gap, kgap in zip(ctx["gaps"], kf["gaps"]):
        assert (gap["t_start"], gap["t_end"]) == (kgap["t_start"], kgap["t_end"])
        assert isinstance(gap["summary"], str)
        wins = [w["indices"] for w in gap["windows"]]
        # windows run from the gap's first bounding frame to its last, each of 2..4 frames and of even sizes,
        # each starting on the frame the previous one ended on: every consecutive pair is seen together
        assert wins[0][0] == kgap["start_index"] and wins[-1][-1] == kgap["end_index"], wins
        assert all(2 <= len(w) <= 4 for w in wins) and max(map(len, wins)) - min(map(len, wins)) <= 1, wins
        assert all(a[-1] == b[0] for a, b in zip(wins[:-1], wins[1:])), wins
        sampled = {i for w in wins for i in w} - {kgap["start_index"], kgap["end_index"]}
        assert sampled <= set(kgap["between"])
        # density: at least 4 frames and at least 5 fps of the gap (when the gap has that many)
        need = max(4, int((kgap["t_end"] - kgap["t_start"]) * 5))
        assert len(sampled) >= min(need, len(kgap["between"]))
        for w in gap["windows"]:
            assert w["timestamps"] == sorted(w["timestamps"]) and isinstance(w["caption"], str)
    # the clip's start and end are described too (the keyframes' lead-in and lead-out gaps)
    assert [g["kind"] for g in ctx["gaps"]] == [g["kind"] for g in kf["gaps"]]
    assert ctx["gaps"][0]["kind"] == "lead_in" and ctx["gaps"][0]["windows"][0]["indices"][0] == 0
    assert ctx["gaps"][-1]["kind"] == "lead_out" and ctx["gaps"][-1]["windows"][-1]["indices"][-1] == kf["n_frames"] - 1
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

    # the dense baseline on its own: the dense frames and nothing else (no keyframes, no summaries)
    dense = run(two_clips, tmp_path / "d", tmp_path / "c", *base, "classify.dense_fps=5")
    assert [r.stage for r in dense.reports] == ["faces", "keyframes", "classify"]
    t = track_of(dense, "b.mp4").t
    d_scores = artifact(dense, "b.mp4", "classify").json("scores.json")
    assert d_scores["frame_indices"] == dense_indices(t, 5) and len(d_scores["frame_indices"]) >= 14  # 3 s at 5 fps
    kf = artifact(dense, "b.mp4", "keyframes").json("keyframes.json")["indices"]
    assert set(kf) - set(d_scores["frame_indices"])  # some keyframe is not a dense frame, so the check has teeth
    # ... unless keyframes are asked for too
    both = run(two_clips, tmp_path / "d2", tmp_path / "c", *base, "classify.dense_fps=5", "classify.use_keyframes=true")
    assert artifact(both, "b.mp4", "classify").json("scores.json")["frame_indices"] == sorted(set(kf) | set(dense_indices(t, 5)))

    no_kf = run(two_clips, tmp_path / "t", tmp_path / "c", *base, "classify.use_keyframes=false")
    assert artifact(no_kf, "b.mp4", "classify").json("scores.json")["frame_indices"] == []

    k6 = run(two_clips, tmp_path / "k", tmp_path / "c", *base, "keyframes.k=6")
    kk = k6.keys["b.mp4"]
    assert kk["faces"] == k0["faces"] and all(kk[s] != k0[s] for s in ("keyframes", "context", "classify"))
    assert len(artifact(k6, "b.mp4", "classify").json("scores.json")["frame_indices"]) == 6


TIME = re.compile(r"\d+\.\d+\s*s\b|\d+\.\d+\s*[–-]\s*\d+\.\d+")  # "0.48 s", "0.00–0.48"


@pytest.fixture(scope="module")
def described(models, two_clips, tmp_path_factory):
    """The two clips through context (window captions joined into summaries, plus a trajectory sentence)."""
    root = tmp_path_factory.mktemp("described")
    res = run(two_clips, root / "run", root / "cache", *model_args(models), "context.condense=join",
              "context.trajectory=true", until="context")
    assert res.n_failed == 0, failures(root / "run")
    return res


def _render(res, video: str, **classify_settings):
    from pipeline.backends.base import ModelConfig
    from pipeline.core.jobs import ClipJob
    from stages.templates import PromptRenderer
    from stages import classify

    job = ClipJob(video, Path(video), f"fingerprint-of-{video}",
                  upstream={s: artifact(res, video, s) for s in ("faces", "keyframes", "context")})
    cfg = classify.Config(model=ModelConfig(model="unused"), **classify_settings)
    prompt, _track, frames = classify.render(job, cfg, PromptRenderer(None, cfg.template), ["happy", "sad"])
    text = "".join(p for p in prompt.parts if isinstance(p, str))
    return prompt, text, frames


def test_classify_prompt_describes_the_clip_start_and_end(described):
    kf = artifact(described, "b.mp4", "keyframes").json("keyframes.json")
    ctx = artifact(described, "b.mp4", "context").json("context.json")
    prompt, text, frames = _render(described, "b.mp4")
    assert frames == kf["indices"] and len(prompt.images) == len(kf["indices"])
    lead_in, lead_out = ctx["gaps"][0], ctx["gaps"][-1]
    assert (lead_in["kind"], lead_out["kind"]) == ("lead_in", "lead_out")
    # before the first keyframe's image: the lead-in's interval and summary; after the last image: the lead-out's
    first_image = prompt.parts.index(prompt.images[0])
    before = "".join(p for p in prompt.parts[:first_image] if isinstance(p, str))
    assert f"[0.00–{lead_in['t_end']:.2f} s] {lead_in['summary']}" in before
    last_image = len(prompt.parts) - 1 - prompt.parts[::-1].index(prompt.images[-1])
    after = "".join(p for p in prompt.parts[last_image + 1 :] if isinstance(p, str))
    assert f"[{lead_out['t_start']:.2f}–{lead_out['t_end']:.2f} s] {lead_out['summary']}" in after


def test_shuffled_prompt_shows_no_timestamps(described):
    ctx = artifact(described, "b.mp4", "context").json("context.json")
    _, plain, plain_frames = _render(described, "b.mp4")
    assert TIME.search(plain) and "Overall:" in plain  # the ordered prompt has them: the check below has teeth
    prompt, shuffled, frames = _render(described, "b.mp4", shuffle=True)
    assert not TIME.search(shuffled), shuffled
    assert "Overall:" not in shuffled  # the trajectory sentence tells the order: left out
    assert sorted(frames) == sorted(plain_frames) and frames != plain_frames  # same frames, another order
    for g in ctx["gaps"]:  # every summary is still there (with time expressions removed)
        assert strip_times(g["summary"]) in shuffled


def test_time_expressions_are_removed_from_shuffled_summaries():
    assert strip_times("Motion: between 0.48 s and 1.2 s the brows rise.") == "Motion: the brows rise."
    assert strip_times("[0.48–1.48 s] Motion: at 2 seconds the mouth opens") == "Motion: the mouth opens"
    assert strip_times("Motion: lips part, 3 s later a smile.") == "Motion: lips part, later a smile."
    assert strip_times("Motion: no visible change.") == "Motion: no visible change."


def test_dense_frames_as_native_video_input(models, two_clips, tmp_path):
    base = model_args(models)
    res = run(two_clips, tmp_path / "v", tmp_path / "c", *base, "classify.dense_fps=4", "classify.dense_input=video")
    assert res.n_failed == 0, failures(tmp_path / "v")
    assert [r.stage for r in res.reports] == ["faces", "keyframes", "classify"]
    sc = artifact(res, "b.mp4", "classify").json("scores.json")
    assert sc["frame_indices"] == dense_indices(track_of(res, "b.mp4").t, 4)
    images = run(two_clips, tmp_path / "i", tmp_path / "c", *base, "classify.dense_fps=4")
    si = artifact(images, "b.mp4", "classify").json("scores.json")
    assert si["frame_indices"] == sc["frame_indices"]
    assert sc["prompt_tokens"] < si["prompt_tokens"]  # pairs of frames share video tokens (temporal patch 2)
    assert images.keys["b.mp4"]["classify"] != res.keys["b.mp4"]["classify"]


def test_video_input_on_a_model_without_it_fails_before_any_clip(models, two_clips, tmp_path):
    with pytest.raises(PreflightError, match=r"dense_input=video: model '.*idefics3'.*dense_input=images"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models, classifier="idefics"),
            "classify.dense_fps=4", "classify.dense_input=video")
    assert not (tmp_path / "c" / "faces").exists()  # nothing was processed


def test_bad_model_template_and_labels_fail_before_any_clip(models, two_clips, tmp_path):
    with pytest.raises(PreflightError, match="classify.model: .*no/such/checkpoint"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models)[:2], "classify.model.model=/no/such/checkpoint")
    assert not (tmp_path / "c" / "faces").exists()  # nothing was processed

    pdir = tmp_path / "p"
    shutil.copytree(BUILTIN_DIR, pdir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (pdir / "classify.j2").write_text("{{ keyframes }} Which emotion? {{ labels | join(', ') }}")
    with pytest.raises(PreflightError, match=r"classify\.j2: 'keyframes' is undefined"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.prompt_dir={pdir}")

    # a template that prints timestamps whatever the `timestamps` variable says would undo classify.shuffle
    (pdir / "classify.j2").write_text((BUILTIN_DIR / "classify.j2").read_text().replace("{% if timestamps %}", "{% if true %}"))
    with pytest.raises(PreflightError, match=r"classify\.j2: prints timestamps although classify\.shuffle is on"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.prompt_dir={pdir}",
            "classify.shuffle=true")

    lab = tmp_path / "labels.yaml"
    lab.write_text("name: mine\nlabels:\n  - name: happy\n  - name: sad\n  - name: Happy\n")
    with pytest.raises(PreflightError, match=r"labels\.yaml.*(duplicate|twice).*happy"):
        run(two_clips, tmp_path / "r", tmp_path / "c", *model_args(models), f"classify.labels={lab}")
    assert not (tmp_path / "c" / "faces").exists()


def test_cli_reports_bad_model_and_stops_offline_when_told_not_to_fall_back(two_clips, tmp_path, monkeypatch):
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
    stop = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(two_clips), "--out", str(tmp_path / "r"), "-q", "--set", "run.workers=1",
         "--set", "run.fallback=stop"],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    # run.fallback=stop: default hub models cannot be downloaded here: model-free stages complete, then a clear stop
    assert stop.returncode == 0, stop.stderr
    assert "stopped before a model stage" in stop.stderr and "--set classify.model.model=" in stop.stderr
    status = RunDir(tmp_path / "r").status()
    assert status["status"] == "stopped" and status["stopped_before"] == "context"
    assert status["stages"] == ["faces", "keyframes"] and status["fallbacks"] == []
    strict = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(two_clips), "--out", str(tmp_path / "r"), "-q", "--strict"],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    assert strict.returncode == 3 and "faces: 2 cached" in strict.stderr


def test_a_run_with_the_models_at_hand_recomputes_what_the_embedded_fallback_computed(models, two_clips, tmp_path):
    fell_back = run(two_clips, tmp_path / "r1", tmp_path / "c")  # the default models are not available here
    assert [f["stage"] for f in RunDir(fell_back.run_dir).status()["fallbacks"]] == ["context", "classify"]
    real = run(two_clips, tmp_path / "r2", tmp_path / "c", *model_args(models))
    assert RunDir(real.run_dir).status()["fallbacks"] == []
    assert reports(real) == {"faces": (2, 0), "keyframes": (2, 0), "context": (0, 2), "classify": (0, 2)}
    for video in ("a.mp4", "b.mp4"):
        assert real.keys[video]["classify"] != fell_back.keys[video]["classify"]
    rows = list(csv.DictReader(open(real.run_dir / "predictions.csv", encoding="utf-8")))
    assert {r["model"] for r in rows} == {f"{models['qwen']} (transformers)"}
