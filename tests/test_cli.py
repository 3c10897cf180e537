"""The `dfer` command: run, exit codes, inspect PNG, console script installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import copy_clip


def dfer(*args, cache, check=False, cwd=None):
    env = {**os.environ, "DFER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env, timeout=600,
                          check=check, cwd=cwd)


def test_run_then_inspect_writes_a_readable_png(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["pan.mp4"], folder / "sub", "my clip.mp4")
    proc = dfer("run", str(folder), "--out", str(tmp_path / "run"), "--set", "run.workers=1", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert "faces: 0 cached, 1 computed (1 new clip), 0 failed" in proc.stderr
    assert (tmp_path / "run" / "config.yaml").is_file()
    proc = dfer("inspect", str(tmp_path / "run"), "my clip", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "run" / "inspect" / "sub__my clip.mp4.png"
    assert proc.stdout.strip() == str(png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 400
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 10  # not a blank canvas


def test_inspect_takes_the_path_of_a_clip_as_the_manifest_gives_it(clip_dir, tmp_path):
    """The run is given a list file in ``real_in/``: the clip's id is ``clip.mov`` (relative to the list file), its
    path ``real_in/clip.mov``; ``dfer inspect`` takes either, and the same file by another path."""
    copy_clip(clip_dir["pan.mp4"], tmp_path / "real_in", "clip.mov")
    (tmp_path / "real_in" / "list.csv").write_text("path,label\nclip.mov,happy\n")
    proc = dfer("run", "real_in/list.csv", "--out", "run", "--until", "keyframes", "-q", cache=tmp_path / "c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "run" / "manifest.jsonl").read_text())
    assert (row["video"], row["path"]) == ("clip.mov", "real_in/clip.mov")
    png = tmp_path / "run" / "inspect" / "clip.mov.png"
    for given in ("real_in/clip.mov", "clip.mov", "./real_in/clip.mov", str(tmp_path / "real_in" / "clip.mov")):
        png.unlink(missing_ok=True)
        proc = dfer("inspect", "run", given, cache=tmp_path / "c", cwd=tmp_path)
        assert proc.returncode == 0, (given, proc.stderr)
        assert proc.stdout.strip() == "run/inspect/clip.mov.png" and png.is_file(), given
    proc = dfer("inspect", "run", "real_in/other.mov", cache=tmp_path / "c", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no video 'real_in/other.mov' in run/manifest.jsonl (1 clips listed)" in proc.stderr


def test_cache_dir_is_another_name_for_cache(clip_dir, tmp_path):
    copy_clip(clip_dir["pan.mp4"], tmp_path / "in", "a.mp4")
    proc = dfer("run", str(tmp_path / "in"), "--out", str(tmp_path / "run"), "--until", "faces",
                "--cache-dir", str(tmp_path / "mine"), cache=tmp_path / "env")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mine" / "faces").is_dir() and not (tmp_path / "env").exists()


def test_inspect_unknown_video_and_bad_run_dir(clip_dir, tmp_path):
    proc = dfer("inspect", str(tmp_path), "x.mp4", cache=tmp_path / "c")
    assert proc.returncode == 2 and "manifest.jsonl not found" in proc.stderr


def test_exit_codes_failures_and_strict(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "a.avi")
    (folder / "b.mp4").write_text("not video")
    proc = dfer("run", str(folder), "--out", str(tmp_path / "r"), "-q", "--set", "run.workers=1", cache=tmp_path / "c")
    assert proc.returncode == 1
    assert "1 failed" in proc.stderr and "failures.jsonl" in proc.stderr
    proc = dfer("run", str(folder), "--out", str(tmp_path / "r2"), "-q", "--strict", cache=tmp_path / "c")
    assert proc.returncode == 3 and "b.mp4" in proc.stderr and "NotAVideoError" in proc.stderr
    proc = dfer("run", str(tmp_path / "nope"), "--out", str(tmp_path / "r3"), cache=tmp_path / "c")
    assert proc.returncode == 2 and "argument input:" in proc.stderr and "nope: not found" in proc.stderr


def test_console_script_is_installed():
    from pathlib import Path

    beside = Path(sys.executable).parent / "dfer"
    exe = str(beside) if beside.exists() else shutil.which("dfer")
    assert exe, "the `dfer` console script is not on PATH; install the package with pip install -e ."
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    listed = out.split("positional arguments:")[0]
    for cmd in ("run", "config", "inspect", "report", "compare", "finetune", "probe", "conflict", "socialfusion"):
        assert cmd in listed, f"`dfer --help` does not list {cmd}"
    for cmd in ("finetune", "probe", "conflict", "socialfusion"):
        sub = subprocess.run([exe, cmd, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and f"usage: dfer {cmd}" in sub.stdout, sub.stderr


def _fake_run(d, shift):
    from pipeline.engine.rundir import RunDir

    run = RunDir(d)
    run.create()
    labels = ["happy", "sad", "neutral"]
    run.write_labelset("mine", labels)
    run.write_config(f"classify:\n  shuffle: {str(bool(shift)).lower()}\n")
    rows = []
    for i, true in enumerate(["happy"] * 6 + ["sad"] * 3 + ["neutral"]):
        s = {lab: -3.0 for lab in labels}
        s[true] = -1.0 if i % 2 == 0 else -3.5
        s["happy"] += shift  # head-class bias
        rows.append({"video": f"v{i}.mp4", "label": true, "labels": labels, "scores": s, "prediction": max(s, key=s.get)})
    scores, predictions = run.score_writers(labels)
    for r in rows:
        scores.write(r)
    scores.close()
    predictions.close()
    with run.failure_log() as log:
        log.write({"video": "bad.mp4", "stage": "faces", "error": "NoFaceError", "message": "x"})


def test_report_and_compare_commands(tmp_path):
    _fake_run(tmp_path / "A", 0.0)
    _fake_run(tmp_path / "B", 2.0)
    proc = dfer("report", str(tmp_path / "B"), "--calibration", "estimated", "--tau-sweep", "0,1", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert "UAR" in proc.stdout and "failed 1" in proc.stdout and "tau  1.00" in proc.stdout
    for f in ("metrics.json", "report.md", "confusion_matrix.png"):
        assert (tmp_path / "B" / f).is_file()
    proc = dfer("compare", str(tmp_path / "A"), str(tmp_path / "B"), cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| A ") or ln.startswith("| B ")]
    assert len(lines) == 4 and "classify.shuffle" in proc.stdout  # each run in the headline and scored-clips tables
    proc = dfer("compare", str(tmp_path / "A"), str(tmp_path / "nope"), cache=tmp_path / "c")
    assert proc.returncode == 2 and "nope" in proc.stderr
