"""Runner: cache keys stable under moves and YAML reordering, precise invalidation, reasons,
--force / --until / --shard, kill-and-resume, concurrent runs on one cache."""

from __future__ import annotations

import dataclasses

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import stages.keyframes
from pipeline.core.cache import Cache
from pipeline.engine.config import load_config
from stages.faces.facetrack import FaceTrack
from pipeline.report import write_report
from pipeline.engine.runner import run_pipeline
from pipeline.view import write_view
from tests import media
from tests.conftest import copy_clip
from tests.runs import failures, leftover_tmp, manifest, run


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("small")
    copy_clip(clip_dir["pan.mp4"], root / "clips", "a.mp4")
    copy_clip(clip_dir["odd.avi"], root / "clips" / "nested", "b.avi")
    return root / "clips"


def keys_of(result) -> dict:
    return result.keys


def test_moving_cache_and_input_root_keeps_keys(small_folder, tmp_path):
    first = run(small_folder, tmp_path / "r1", tmp_path / "cacheA")
    shutil.move(tmp_path / "cacheA", tmp_path / "cacheB")
    moved_input = tmp_path / "elsewhere" / "clips"
    shutil.copytree(small_folder, moved_input)
    second = run(moved_input, tmp_path / "r2", tmp_path / "cacheB")
    assert keys_of(first) == keys_of(second)
    assert [r.stage for r in second.reports] == [r.stage for r in first.reports]
    assert [(r.cached, r.computed) for r in second.reports] == [(2, 0)] * len(first.reports)


def test_yaml_key_order_does_not_change_keys(small_folder, tmp_path):
    (tmp_path / "a.yaml").write_text("keyframes:\n  k: 5\n  strategy: uniform\nfaces:\n  margin: 0.3\n  crop_size: 128\n")
    (tmp_path / "b.yaml").write_text("faces:\n  crop_size: 128\n  margin: 0.3\nkeyframes:\n  strategy: uniform\n  k: 5\n")
    cfg_a = load_config(tmp_path / "a.yaml", ["run.progress=false", "run.workers=1"])
    cfg_b = load_config(tmp_path / "b.yaml", ["run.progress=false", "run.workers=1"])
    ra = run_pipeline(small_folder, tmp_path / "ra", cfg_a, cache_dir=tmp_path / "c", log=io.StringIO())
    rb = run_pipeline(small_folder, tmp_path / "rb", cfg_b, cache_dir=tmp_path / "c", log=io.StringIO())
    assert ra.keys == rb.keys
    assert [r.computed for r in rb.reports] == [0] * len(ra.reports)


def test_non_output_settings_do_not_change_keys(small_folder, tmp_path):
    a = run(small_folder, tmp_path / "ra", tmp_path / "c")
    b = run(small_folder, tmp_path / "rb", tmp_path / "c", "faces.detect_batch=4", "faces.device=cpu", "run.batch_size=3")
    assert a.keys == b.keys


def test_config_change_and_version_bump_invalidate_only_downstream(small_folder, tmp_path, monkeypatch):
    base = run(small_folder, tmp_path / "r0", tmp_path / "c")
    log = io.StringIO()
    kf = run(small_folder, tmp_path / "r1", tmp_path / "c", "keyframes.k=6", log=log)
    for vid in base.keys:
        assert kf.keys[vid]["faces"] == base.keys[vid]["faces"]
        assert kf.keys[vid]["keyframes"] != base.keys[vid]["keyframes"]
    assert "faces: 2 cached, 0 computed" in log.getvalue()
    assert "keyframes: 0 cached, 2 computed (2 config changed)" in log.getvalue()

    log = io.StringIO()
    fc = run(small_folder, tmp_path / "r2", tmp_path / "c", "faces.margin=0.35", log=log)
    for vid in base.keys:
        assert fc.keys[vid]["faces"] != base.keys[vid]["faces"]
        assert fc.keys[vid]["keyframes"] != base.keys[vid]["keyframes"]
    assert "faces: 0 cached, 2 computed (2 config changed)" in log.getvalue()
    assert "keyframes: 0 cached, 2 computed (2 upstream changed)" in log.getvalue()

    bumped = dataclasses.replace(stages.STAGES["keyframes"], version=stages.STAGES["keyframes"].version + 1)
    monkeypatch.setitem(stages.STAGES, "keyframes", bumped)
    vb = run(small_folder, tmp_path / "r3", tmp_path / "c")
    for vid in base.keys:
        assert vb.keys[vid]["faces"] == base.keys[vid]["faces"]
        assert vb.keys[vid]["keyframes"] != base.keys[vid]["keyframes"]


def test_force_until_and_new_clip_reasons(small_folder, tmp_path, clip_dir):
    log = io.StringIO()
    first = run(small_folder, tmp_path / "r", tmp_path / "c", until="faces", log=log)
    assert [r.stage for r in first.reports] == ["faces"]
    assert "faces: 0 cached, 2 computed (2 new clip)" in log.getvalue()
    meta_before = Cache(tmp_path / "c").get("faces", first.keys["a.mp4"]["faces"]).meta()["created"]

    log = io.StringIO()
    time.sleep(1.1)
    forced = run(small_folder, tmp_path / "r", tmp_path / "c", force="faces", log=log)
    assert "faces: 0 cached, 2 computed (2 forced)" in log.getvalue()
    assert "keyframes: 0 cached, 2 computed (2 forced)" in log.getvalue()
    assert forced.keys["a.mp4"]["faces"] == first.keys["a.mp4"]["faces"]
    assert Cache(tmp_path / "c").get("faces", first.keys["a.mp4"]["faces"]).meta()["created"] != meta_before

    log = io.StringIO()
    run(small_folder, tmp_path / "r", tmp_path / "c", force="keyframes", log=log)
    assert "faces: 2 cached, 0 computed" in log.getvalue()
    assert "keyframes: 0 cached, 2 computed (2 forced)" in log.getvalue()


def test_shards_partition_the_clips(tmp_path, clip_dir):
    folder = tmp_path / "many"
    names = [f"clip{i:02d}.avi" for i in range(8)]
    for n in names:
        copy_clip(clip_dir["odd.avi"], folder, n)
    seen = []
    for i in range(3):
        res = run(folder, tmp_path / f"s{i}", tmp_path / "c", until="faces", shard=f"{i}/3")
        seen += list(manifest(tmp_path / f"s{i}"))
        again = run(folder, tmp_path / f"t{i}", tmp_path / "c", until="faces", shard=f"{i}/3")
        assert list(manifest(tmp_path / f"t{i}")) == list(manifest(tmp_path / f"s{i}"))
        assert res.n_clips == again.n_clips
    assert sorted(seen) == names


def test_parallel_workers_match_in_process(small_folder, tmp_path):
    one = run(small_folder, tmp_path / "r1", tmp_path / "c1", workers=1)
    two = run(small_folder, tmp_path / "r2", tmp_path / "c2", workers=2)
    assert one.keys == two.keys
    assert one.n_failed == two.n_failed == 0
    for vid, keys in one.keys.items():
        a = FaceTrack.load(Cache(tmp_path / "c1").get("faces", keys["faces"]))
        b = FaceTrack.load(Cache(tmp_path / "c2").get("faces", keys["faces"]))
        # MTCNN's float sums depend on the torch thread count (1 per worker vs 2 in-process),
        # so boxes agree to a small fraction of a pixel rather than bit for bit
        np.testing.assert_allclose(a.arrays["box"], b.arrays["box"], atol=0.05)
        np.testing.assert_array_equal(a.arrays["t"], b.arrays["t"])
        np.testing.assert_array_equal(a.arrays["detected"], b.arrays["detected"])


def _cli(args, cache, **kw):
    env = {**os.environ, "DFER_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _complete_artifacts(cache: Path, stage: str) -> list[Path]:
    # a temporary folder (.tmp-*) may hold its meta.json already: it is not an artifact until it is renamed
    return sorted(p.parent for p in (cache / stage).glob("*/*/meta.json") if not p.parent.name.startswith("."))


def test_sigkill_mid_stage_resumes_without_recomputing(tmp_path, clip_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):  # distinct content per clip so each is its own artifact
        media.make_face_clip(folder / f"c{i}.mp4", seconds=1.6, seed=i)
    cache = tmp_path / "cache"
    proc = _cli(["run", str(folder), "--out", str(tmp_path / "r1"), "-q", "--set", "run.workers=1"], cache)
    deadline = time.time() + 240
    while time.time() < deadline and len(_complete_artifacts(cache, "faces")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _complete_artifacts(cache, "faces")
    assert 2 <= len(done) < 8, "the kill must land in the middle of the faces stage"
    stamps = {p: (p / "meta.json").stat().st_mtime_ns for p in done}
    # every directory that looks final is complete and loads
    for p in (cache / "faces").glob("*/*"):
        if p.is_dir() and not p.name.startswith("."):
            assert (p / "meta.json").is_file(), f"half-written artifact visible: {p}"

    log = io.StringIO()
    res = run(folder, tmp_path / "r2", cache, log=log)
    assert res.n_failed == 0
    faces_report = res.reports[0]
    assert faces_report.cached == len(done) and faces_report.computed == 8 - len(done)
    for p, mtime in stamps.items():
        assert (p / "meta.json").stat().st_mtime_ns == mtime, "a finished artifact was recomputed"
    for vid, keys in res.keys.items():
        track = FaceTrack.load(Cache(cache).get("faces", keys["faces"]))
        assert track.crops([0, len(track) - 1]).shape[0] == 2


def test_two_concurrent_runs_share_one_cache(tmp_path, clip_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        media.make_face_clip(folder / f"c{i}.mp4", seconds=1.2, seed=10 + i)
    cache = tmp_path / "cache"
    procs = [_cli(["run", str(folder), "--out", str(tmp_path / f"r{j}"), "-q", "--set", "run.workers=1"], cache) for j in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    m0, m1 = manifest(tmp_path / "r0"), manifest(tmp_path / "r1")
    assert {v: r["artifacts"] for v, r in m0.items()} == {v: r["artifacts"] for v, r in m1.items()}
    assert failures(tmp_path / "r0") == failures(tmp_path / "r1") == []
    # exactly one complete artifact per key, no leftovers that look complete, all readable
    for stage in ("faces", "keyframes"):
        dirs = _complete_artifacts(cache, stage)
        assert len(dirs) == 4
    for v, row in m0.items():
        track = FaceTrack.load(Cache(cache).get("faces", row["artifacts"]["faces"]))
        assert len(track.crops(range(len(track)))) == len(track)
        kf = Cache(cache).get("keyframes", row["artifacts"]["keyframes"]).json("keyframes.json")
        assert len(kf["indices"]) == 4
    # a third run with its own cache computes the same bytes
    run(folder, tmp_path / "r2", tmp_path / "cache2")
    for v, row in m0.items():
        a = Cache(cache).get("faces", row["artifacts"]["faces"])
        b = Cache(tmp_path / "cache2").get("faces", row["artifacts"]["faces"])
        assert a.bytes("track.npz") == b.bytes("track.npz")


def test_a_run_clears_week_old_leftovers_of_killed_runs_but_not_fresh_ones(small_folder, tmp_path):
    cache = tmp_path / "cache"
    old = leftover_tmp(cache / "faces" / "00" / ".tmp-dead-1-x", age_s=7 * 24 * 3600)
    fresh = leftover_tmp(cache / "keyframes" / "00" / ".tmp-live-2-y")
    res = run(small_folder, tmp_path / "run", cache, until="keyframes")
    assert res.n_failed == 0
    assert not old.exists(), "a temporary folder untouched for a week was left in the cache"
    assert fresh.exists(), "a temporary folder that a concurrent run may still be writing was removed"


def test_a_new_run_in_a_used_directory_leaves_nothing_of_the_earlier_run(small_folder, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    run(small_folder, out, cache)  # scored by the embedded model (no VLM weights here)
    write_report(out)
    write_view(out)
    earlier = {p.name for p in out.iterdir()}
    assert {"predictions.csv", "scores.jsonl", "report.md", "metrics.json", "view.html"} <= earlier
    log = io.StringIO()
    run(small_folder, out, cache, until="keyframes", log=log)
    left = {p.name for p in out.iterdir()}
    assert left == {"dfer-run.json", "config.yaml", "failures.jsonl", "cache_dir.txt", "manifest.jsonl", "status.json",
                    "runcard.json"}
    said = log.getvalue()
    assert "removed" in said and "predictions.csv" in said and "view.html" in said and "manifest.jsonl" not in said
    assert "runcard.json" not in said  # rewritten, not removed


def test_a_clip_that_failed_for_good_is_not_tried_again_until_asked(special_clips, tmp_path):
    noface = special_clips["noface"].path
    first = run(noface, tmp_path / "r1", tmp_path / "cache", until="faces")
    assert (first.reports[0].failed, first.reports[0].remembered) == (1, 0)
    log = io.StringIO()
    again = run(noface, tmp_path / "r2", tmp_path / "cache", until="faces", log=log)
    assert (again.reports[0].failed, again.reports[0].remembered) == (1, 1)
    assert failures(tmp_path / "r2") == failures(tmp_path / "r1")  # the same row, naming the file and the problem
    assert "1 failed (1 as in an earlier run: --retry-failed tries them again)" in log.getvalue()
    retried = run(noface, tmp_path / "r3", tmp_path / "cache", until="faces", retry_failed=True)
    assert (retried.reports[0].failed, retried.reports[0].remembered) == (1, 0)
    kept = run(noface, tmp_path / "r4", tmp_path / "cache", "faces.no_face=full_frame", until="faces")
    assert (kept.reports[0].computed, kept.reports[0].failed) == (1, 0)  # other settings: tried, and kept
