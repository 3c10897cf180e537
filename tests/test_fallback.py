"""The main job completes anywhere: a model stage whose model cannot be had here (offline, not in the local
Hugging Face cache; the tests run with HF_HUB_OFFLINE=1) falls back to the embedded expression model, loudly,
and says so in its summary line, status.json, predictions.csv, report.md and the viewer."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from pipeline.models.expression import MODEL_ID
from pipeline.report import write_report
from pipeline.engine.rundir import RunDir
from pipeline.view import build_view
from tests.conftest import copy_clip
from tests.runs import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EMBEDDED = f"{MODEL_ID} (expression)"
CAPTIONER = "HuggingFaceTB/SmolVLM-256M-Instruct (transformers)"
CLASSIFIER = "Qwen/Qwen2.5-VL-3B-Instruct (transformers)"


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("fallback-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(clip_dir["odd.avi"], root, "b.avi")
    (root / "list.csv").write_text("path,label\na.mp4,happy\nb.avi,sad\n")
    return root / "list.csv"


@pytest.fixture(scope="module")
def fell_back(clips, tmp_path_factory):
    """A run with the default models, which are not available here."""
    root = tmp_path_factory.mktemp("fallback-run")
    log = io.StringIO()
    res = run(clips, root / "run", root / "cache", log=log)
    return res, log.getvalue()


def test_each_model_stage_that_cannot_get_its_model_runs_the_embedded_one_and_the_run_completes(fell_back):
    res, _ = fell_back
    assert res.status == "complete" and res.n_failed == 0
    assert [r.stage for r in res.reports] == ["faces", "expression", "keyframes", "context", "classify"]
    with open(res.run_dir / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["video"], r["prediction"], r["model"]) for r in rows] == [("a.mp4", "happy", EMBEDDED), ("b.avi", "happy", EMBEDDED)]
    assert all(row["model"] == EMBEDDED for _, row in RunDir(res.run_dir).scores())


def test_the_fallback_is_said_at_preflight_and_in_the_stage_summary_lines(fell_back):
    res, log = fell_back
    for stage, asked in (("context", CAPTIONER), ("classify", CLASSIFIER)):
        assert f"warning: stage '{stage}' falls back to the embedded model {EMBEDDED} instead of {asked}" in log
        line = next(r.line() for r in res.reports if r.stage == stage)
        assert line.endswith(f"; fallback: {EMBEDDED} instead of {asked}") and line in log
    assert "not in the local Hugging Face cache and offline mode is on" in log
    assert all("fallback" not in r.line() for r in res.reports if r.stage in ("faces", "expression", "keyframes"))


def test_status_json_records_which_stage_fell_back_from_which_model_to_which(fell_back):
    status = RunDir(fell_back[0].run_dir).status()
    assert [(f["stage"], f["asked"], f["ran"]) for f in status["fallbacks"]] == [
        ("context", CAPTIONER, EMBEDDED), ("classify", CLASSIFIER, EMBEDDED)]
    assert all("HF_HUB_OFFLINE" in f["reason"] for f in status["fallbacks"])
    assert RunDir(fell_back[0].run_dir).config()["classify"]["model"]["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"  # as asked


def test_the_cache_keys_are_those_of_the_embedded_model_that_ran(fell_back, clips, tmp_path):
    res, _ = fell_back
    cache = RunDir(res.run_dir).cache().root
    chosen = run(clips, tmp_path / "chosen", cache, "context.model.backend=expression", "classify.model.backend=expression")
    assert chosen.keys == res.keys
    assert all(r.computed == 0 for r in chosen.reports) and RunDir(chosen.run_dir).status()["fallbacks"] == []


def test_report_and_viewer_name_the_model_that_scored_the_clips(fell_back, tmp_path):
    res, _ = fell_back
    rep = write_report(res.run_dir, out_dir=tmp_path)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"Scored by: {EMBEDDED} (2 clips)." in text
    assert f"**Fallback:** stage `classify` ran the embedded model {EMBEDDED} in place of {CLASSIFIER}" in text
    assert rep["models"] == {EMBEDDED: 2}
    view = build_view(res.run_dir)
    assert view["summary"]["settings"]["classifier"].startswith(f"{EMBEDDED}, the fallback for {CLASSIFIER}")
    assert view["summary"]["settings"]["captioner"].startswith(f"{EMBEDDED}, the fallback for {CAPTIONER}")
    assert {c["model"] for c in view["cards"]} == {EMBEDDED}


def test_a_fallback_that_cannot_score_the_label_set_stops_the_run_before_classify(clips, fell_back, tmp_path):
    log = io.StringIO()
    res = run(clips, tmp_path / "run", RunDir(fell_back[0].run_dir).cache().root, "classify.labels=mafw", log=log)
    assert res.status == "stopped" and "classify" not in [r.stage for r in res.reports]
    assert "the embedded model cannot stand in for" in log.getvalue() and "contempt, anxiety" in log.getvalue()
    status = RunDir(res.run_dir).status()
    assert status["stopped_before"] == "classify" and [f["stage"] for f in status["fallbacks"]] == ["context"]


def test_a_run_with_lora_adapters_stops_instead_of_scoring_without_them(clips, fell_back, tmp_path):
    res = run(clips, tmp_path / "run", RunDir(fell_back[0].run_dir).cache().root, f"classify.adapter={tmp_path}")
    status = RunDir(res.run_dir).status()
    assert status["status"] == "stopped" and status["stopped_before"] == "classify"
    assert [f["stage"] for f in status["fallbacks"]] == ["context"]


def _cli(*args, cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DFER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "-q", "--set", "run.workers=1"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_run_with_report_ends_with_predictions_and_a_report(clips, fell_back, tmp_path):
    done = _cli(str(clips), "--out", str(tmp_path / "run"), "--report", cache=RunDir(fell_back[0].run_dir).cache().root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("UAR 50.00  WAR 50.00") and "wrote" in done.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["predictions"] == {"a.mp4": "happy", "b.avi": "happy"}
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "confusion_matrix.png").is_file()


def test_run_with_report_that_stopped_before_classify_says_there_is_nothing_to_report(clips, fell_back, tmp_path):
    done = _cli(str(clips), "--out", str(tmp_path / "run"), "--report", "--set", "run.fallback=stop",
                cache=RunDir(fell_back[0].run_dir).cache().root)
    assert done.returncode == 0, done.stderr
    assert "no report: the run did not reach classify" in done.stderr and not (tmp_path / "run" / "report.md").exists()


# ------------------------------------------------------------------------------------ no other classifier in the prompt


def test_a_vlm_classifier_never_gets_the_embedded_models_captions_unless_asked_by_name(clips, fell_back, tmp_path):
    """Issue 22: the captioner alone falling back would hand the VLM the embedded classifier's own answers ("Motion:
    happy weakens ...") as context. The run stops before any clip and says how to go on; asked for by name, the
    embedded captioner runs (no fallback then)."""
    from stages.modelstage import PreflightError
    from tests.tiny_models import shared_tiny_model_dir

    qwen = shared_tiny_model_dir("qwen2vl")
    cache = tmp_path / "cache"
    with pytest.raises(PreflightError) as err:
        run(clips, tmp_path / "run", cache, f"classify.model.model={qwen}")
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and CAPTIONER in msg and f"{qwen} (transformers)" in msg
    for way in ("--set context.model.backend=expression", "--set context.model=classify.model",
                "--set classify.use_summaries=false", "--set context.model.model="):
        assert way in msg
    assert not (tmp_path / "run").exists() and not (cache / "faces").exists()  # before any clip, nothing written

    asked = run(clips, tmp_path / "asked", cache, f"classify.model.model={qwen}", "context.model.backend=expression")
    status = RunDir(asked.run_dir).status()
    assert asked.status == "complete" and status["fallbacks"] == []
    assert status["models"] == {"context": EMBEDDED, "classify": f"{qwen} (transformers)"}


def test_a_run_that_scores_nothing_is_not_complete(fell_back, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("x.mp4", "y.mp4"):
        (tmp_path / "in" / name).write_bytes(b"not a video")
    done = _cli(str(tmp_path / "in"), "--out", str(tmp_path / "run"), "--report", cache=RunDir(fell_back[0].run_dir).cache().root)
    assert done.returncode == 4, done.stderr
    assert "2 clips, 2 failed and none scored: the run is not complete" in done.stderr
    assert "nothing scored: none of the 2 clips reached a classify score" in done.stderr
    assert "no report: no clip was scored" in done.stderr and not (tmp_path / "run" / "report.md").exists()
    status = RunDir(tmp_path / "run").status()
    assert status["status"] == "failed" and status["message"].startswith("nothing scored")
    assert status["scoring"]["scored"] == 0
