"""RayExecutor on a local Ray instance started here: the same artifacts and failures as the local
executor (per-clip stages and model stages), a worker killed mid-task is retried, a driver killed
mid-run resumes from the cache, and bad cluster settings fail before any clip is scheduled."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pipeline.engine import executor_ray  # noqa: E402
from pipeline.core.cache import Cache  # noqa: E402
from pipeline.engine.executor import run_task  # noqa: E402
from pipeline.engine.executor_ray import ClusterError, RayExecutor  # noqa: E402
from tests import media  # noqa: E402
from tests.conftest import copy_clip  # noqa: E402
from pipeline.engine.rundir import RunDir  # noqa: E402
from tests.runs import failures, manifest, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCAL_WORKERS = 2
# MTCNN's floats depend on torch's thread count: give the Ray tasks the local workers' count
# (LocalExecutor: cpu_count // workers), so that the two executors' artifacts are byte-identical.
TASK_THREADS = max(1, (os.cpu_count() or 1) // LOCAL_WORKERS)
# meta.json fields that differ from one computation to the next
VOLATILE_META = {"created", "compute_seconds", "host", "meta_sha256"}  # meta_sha256: a hash of the others


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir):
    """Three good clips (h264, mpeg4/odd size, vp9) and a text file named .mp4."""
    root = tmp_path_factory.mktemp("ray-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(clip_dir["odd.avi"], root / "sub", "b.avi")
    copy_clip(clip_dir["sub/zoom.webm"], root, "c.webm")
    media.make_text_as_video(root / "bad.mp4")
    return root


@pytest.fixture(scope="module")
def local_ref(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-ref")
    res = run(clips, out / "run", out / "cache", workers=LOCAL_WORKERS)
    return res, out / "run", out / "cache"


def ray_executor(**kw) -> RayExecutor:
    return RayExecutor(task_threads=TASK_THREADS, **kw)


def artifact_files(cache: Path, stage: str, key: str) -> dict[str, bytes]:
    art = Cache(cache).get(stage, key)
    assert art is not None, f"{stage} {key[:12]} missing"
    files = {p.name: p.read_bytes() for p in sorted(art.root.iterdir())}
    meta = json.loads(files.pop("meta.json"))
    for k in VOLATILE_META:
        meta.pop(k, None)
    files["meta.json (without timings)"] = json.dumps(meta, sort_keys=True).encode()
    return files


def assert_same_outputs(run_a: Path, cache_a: Path, run_b: Path, cache_b: Path) -> None:
    ma, mb = manifest(run_a), manifest(run_b)
    assert list(ma) == list(mb)
    assert {v: r["artifacts"] for v, r in ma.items()} == {v: r["artifacts"] for v, r in mb.items()}
    key = lambda row: (row["video"], row["stage"])  # noqa: E731 - completion order may differ
    assert sorted(failures(run_a), key=key) == sorted(failures(run_b), key=key)
    n = 0
    for vid, row in ma.items():
        for stage, k in row["artifacts"].items():
            if Cache(cache_a).get(stage, k) is None:  # keyed, then failed: absent in both
                assert Cache(cache_b).get(stage, k) is None
                continue
            fa, fb = artifact_files(cache_a, stage, k), artifact_files(cache_b, stage, k)
            assert sorted(fa) == sorted(fb), (vid, stage)
            for name in fa:
                assert fa[name] == fb[name], f"{vid} {stage}/{name} differs"
            n += 1
    assert n > 0


def test_same_artifacts_and_failures_as_the_local_executor(cluster, clips, local_ref, tmp_path):
    ref, ref_run, ref_cache = local_ref
    assert [f["video"] for f in failures(ref_run)] == ["bad.mp4"]
    res = run(clips, tmp_path / "run", tmp_path / "cache", workers=LOCAL_WORKERS, executor=ray_executor())
    assert res.n_failed == ref.n_failed == 1
    # the default models are not available here: context and classify run the embedded model (on Ray actors)
    assert [(r.stage, r.computed, r.failed) for r in res.reports] == [
        ("faces", 3, 1), ("expression", 3, 0), ("keyframes", 3, 0), ("context", 3, 0), ("classify", 3, 0)]
    assert_same_outputs(ref_run, ref_cache, tmp_path / "run", tmp_path / "cache")
    # no temporary directories left behind, and every artifact was written on the worker side
    assert not [p for p in (tmp_path / "cache").rglob(".tmp-*")]
    assert ray.is_initialized()  # the executor leaves a connection it did not open alone


# --- a worker process that dies in the middle of a task --------------------------------------------


def _die_once_then_run(task):
    """Test hook run in the Ray worker: the first time it sees a clip named in ``die-for.json`` next to
    the cache, it leaves a marker and kills its own process, halfway through the faces stage."""
    base = Path(task.cache_root).parent
    plan = base / "die-for.json"
    if plan.is_file() and task.job.video_id in json.loads(plan.read_text()) and task.stage == "faces":
        marker = base / f"died-{task.job.video_id.replace('/', '_')}"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return run_task(task)


def test_a_worker_killed_mid_task_is_retried(cluster, clips, local_ref, tmp_path):
    _, ref_run, ref_cache = local_ref
    (tmp_path / "die-for.json").write_text(json.dumps(["a.mp4", "sub/b.avi"]))
    res = run(
        clips, tmp_path / "run", tmp_path / "cache", workers=LOCAL_WORKERS,
        executor=ray_executor(task_fn=_die_once_then_run, max_retries=2),
    )
    assert (tmp_path / "died-a.mp4").is_file() and (tmp_path / "died-sub_b.avi").is_file()
    assert res.n_failed == 1 and [f["video"] for f in failures(tmp_path / "run")] == ["bad.mp4"]
    assert_same_outputs(ref_run, ref_cache, tmp_path / "run", tmp_path / "cache")


def _always_die(task):
    if task.job.video_id == "a.mp4":
        os._exit(1)
    return run_task(task)


def test_a_clip_whose_worker_keeps_dying_is_a_recorded_failure(cluster, clips, tmp_path):
    res = run(clips, tmp_path / "run", tmp_path / "cache", until="faces",
              executor=ray_executor(task_fn=_always_die, max_retries=1))
    rows = {f["video"]: f for f in failures(tmp_path / "run")}
    assert set(rows) == {"a.mp4", "bad.mp4"} and res.n_failed == 2
    assert rows["a.mp4"]["error"] == "WorkerDied" and "died 2 times" in rows["a.mp4"]["message"]


# --- model stages on actors --------------------------------------------------------------------------


def test_model_stages_on_actors_match_the_local_run(cluster, clip_dir, tmp_path):
    import torch

    from tests.tiny_models import tiny_model_dir

    model = tiny_model_dir("qwen2vl", tmp_path / "models")
    folder = tmp_path / "in"
    copy_clip(clip_dir["pan.mp4"], folder, "a.mp4")
    copy_clip(clip_dir["odd.avi"], folder, "b.avi")
    args = [
        f"context.model.model={model}", f"classify.model.model={model}", "context.model.max_new_tokens=4",
        "context.condense=join", "run.batch_size=1",  # two batches: one per actor
    ]
    local = run(folder, tmp_path / "r-local", tmp_path / "c-local", *args, workers=LOCAL_WORKERS)
    assert local.n_failed == 0, failures(tmp_path / "r-local")
    # model stages run in the driver locally; give the actors the driver's thread count
    ex = ray_executor(actors=2, actor_threads=torch.get_num_threads())
    res = run(folder, tmp_path / "r-ray", tmp_path / "c-ray", *args, workers=LOCAL_WORKERS, executor=ex)
    assert res.n_failed == 0, failures(tmp_path / "r-ray")
    assert [r.stage for r in res.reports] == ["faces", "keyframes", "context", "classify"]
    assert_same_outputs(tmp_path / "r-local", tmp_path / "c-local", tmp_path / "r-ray", tmp_path / "c-ray")
    for name in ("predictions.csv", "scores.jsonl"):
        assert (tmp_path / "r-local" / name).read_bytes() == (tmp_path / "r-ray" / name).read_bytes()

    # a model actor that dies in the middle of a batch is restarted (model reloaded) and the batch retried
    ex = ray_executor(actors=2, actor_threads=torch.get_num_threads(), batch_fn=_die_once_in_classify)
    again = run(folder, tmp_path / "r-ray2", tmp_path / "c-ray", *args, workers=LOCAL_WORKERS, executor=ex, force="classify")
    assert (tmp_path / "actor-died").is_file()
    assert again.n_failed == 0 and {r.stage: r.computed for r in again.reports} == {
        "faces": 0, "keyframes": 0, "context": 0, "classify": 2}
    assert_same_outputs(tmp_path / "r-local", tmp_path / "c-local", tmp_path / "r-ray2", tmp_path / "c-ray")


def test_segments_run_on_the_cluster_like_clips(cluster, clip_dir, tmp_path):
    """A segmented run (issue 24): every segment's keyframes, context and classify go to Ray as tasks and actor
    batches, with the same artifacts and the same timeline as the local executor."""
    folder = tmp_path / "in"
    copy_clip(clip_dir["pan.mp4"], folder, "a.mp4")
    args = ["faces.segments=0.5s", "classify.model.backend=expression", "context.model.backend=expression"]
    local = run(folder, tmp_path / "r-local", tmp_path / "c-local", *args, workers=LOCAL_WORKERS)
    assert local.n_failed == 0, failures(tmp_path / "r-local")
    res = run(folder, tmp_path / "r-ray", tmp_path / "c-ray", *args, workers=LOCAL_WORKERS,
              executor=ray_executor(actors=1))
    assert res.n_failed == 0, failures(tmp_path / "r-ray")
    assert {r.stage: r.computed for r in res.reports} == {
        "faces": 1, "expression": 1, "keyframes": 4, "context": 4, "classify": 4}
    rows_a = [r.to_json() for r in RunDir(tmp_path / "r-local").manifest()]
    rows_b = [r.to_json() for r in RunDir(tmp_path / "r-ray").manifest()]
    assert rows_a == rows_b and len(rows_b) == 5  # the clip (faces, expression) and its 4 segments
    for row in rows_b[1:]:
        for stage in ("keyframes", "context", "classify"):
            k = row["artifacts"][stage]
            assert artifact_files(tmp_path / "c-local", stage, k) == artifact_files(tmp_path / "c-ray", stage, k)
    for name in ("timeline.csv", "timeline_summary.csv", "predictions.csv"):
        assert (tmp_path / "r-local" / name).read_bytes() == (tmp_path / "r-ray" / name).read_bytes()


def _die_once_in_classify(stage, cfg, resources, chunk, cache, batch_size):
    """Test hook run in a model actor: the first classify batch that holds b.avi kills the actor's process."""
    from pipeline.engine.batching import process_batches

    marker = Path(cache.root).parent / "actor-died"
    if chunk[0][1].stage == "classify" and "b.avi" in [vid for vid, _ in chunk] and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return process_batches(stage, cfg, resources, chunk, cache, batch_size)


# --- the driver killed mid-run ----------------------------------------------------------------------


def _complete(cache: Path, stage: str) -> list[Path]:
    return sorted(p.parent for p in (cache / stage).glob("*/*/meta.json"))


def test_driver_killed_mid_run_resumes_from_the_cache(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    n = 8
    for i in range(n):
        media.make_face_clip(folder / f"c{i}.mp4", seconds=1.2, seed=40 + i)
    cache = tmp_path / "cache"
    env = {**os.environ, "DFER_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp_path / "r1"), "-q",
           "--executor", "ray", "--ray-address", cluster]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and len(_complete(cache, "faces")) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # tasks of the dead driver are cancelled by Ray; let in-flight renames land
    done = _complete(cache, "faces")
    assert 2 <= len(done) < n, "the kill must land in the middle of the faces stage"
    for p in (cache / "faces").glob("*/*"):  # nothing half-written looks complete
        if p.is_dir() and not p.name.startswith("."):
            assert (p / "meta.json").is_file(), f"half-written artifact visible: {p}"
    stamps = {p: (p / "meta.json").stat().st_mtime_ns for p in done}

    res = run(folder, tmp_path / "r2", cache, executor=ray_executor())
    assert res.n_failed == 0
    faces = res.reports[0]
    assert faces.cached >= len(done) and faces.cached + faces.computed == n
    for p, mtime in stamps.items():
        assert (p / "meta.json").stat().st_mtime_ns == mtime, "a finished artifact was recomputed"


# --- bad cluster settings: clear errors before any clip ---------------------------------------------


def test_unreachable_address_is_a_usage_error_naming_it(clips, tmp_path):
    env = {**os.environ, "DFER_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(clips), "--out", str(tmp_path / "r"), "-q",
         "--executor", "ray", "--ray-address", "127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "127.0.0.1:1" in proc.stderr and "dfer: error:" in proc.stderr
    assert not (tmp_path / "cache" / "faces").exists()


def _node_local_probe(root: str, token: str) -> dict:
    """Stands in for a worker on another node whose ``root`` is a node-local directory, not the
    driver's: it looks for the driver's probe file in a different place and does not find it."""
    return executor_ray._probe_worker(root + "-on-another-node", token)


def test_cache_that_workers_cannot_see_is_an_error_before_any_clip(cluster, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(executor_ray, "_probe_worker", _node_local_probe)
    cache = tmp_path / "cache"
    with pytest.raises(ClusterError, match=rf"cache directory {cache}.*not shared.*same path"):
        run(clips, tmp_path / "r", cache, executor=ray_executor())
    assert not (cache / "faces").exists() and not list(cache.iterdir())  # probe cleaned up, nothing computed
    assert ray.is_initialized()


def test_gpu_request_the_cluster_cannot_satisfy(cluster, clips, tmp_path):
    with pytest.raises(ClusterError, match=r"2 model actor\(s\) x 1 GPU.*need 2 GPU\(s\).*0 GPUs"):
        run(clips, tmp_path / "r", tmp_path / "cache", "run.ray_num_gpus_per_actor=1", "run.ray_actors=2",
            executor=RayExecutor.from_config(_run_section("run.ray_num_gpus_per_actor=1", "run.ray_actors=2")))
    with pytest.raises(ClusterError, match=r"run.ray_num_gpus_per_task=0.5: no node .* has that many GPUs"):
        run(clips, tmp_path / "r", tmp_path / "cache", executor=ray_executor(num_gpus_per_task=0.5))
    with pytest.raises(ClusterError, match=r"run.ray_num_cpus_per_task=4: no node"):
        run(clips, tmp_path / "r", tmp_path / "cache", executor=ray_executor(num_cpus_per_task=4))
    with pytest.raises(ClusterError, match=r"3 model actor\(s\) x 1 CPU\(s\) each .* do not fit"):
        run(clips, tmp_path / "r", tmp_path / "cache", executor=ray_executor(actors=3))
    assert not (tmp_path / "cache" / "faces").exists()


def _run_section(*overrides):
    from pipeline.engine.config import load_config

    return load_config(None, list(overrides)).run


def test_address_parsing():
    assert executor_ray._host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert executor_ray._host_port("ray://head:10001") == ("head", 10001)
    assert executor_ray._host_port("auto") is None
    with pytest.raises(ClusterError, match="HOST:PORT"):
        executor_ray._host_port("head-without-port")

