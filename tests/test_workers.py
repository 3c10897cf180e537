"""run.workers=auto: worker processes for the per-clip stages, one per usable CPU core, bounded by memory and by the
clips to compute, said in the stage line; the pool is gone before a model stage runs in the run's process."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.engine import workers
from pipeline.engine.config import load_config
from pipeline.engine.executor import LocalExecutor
from pipeline.engine.inputs import discover
from pipeline.engine.runner import Runner
from tests.conftest import copy_clip

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ("classify.model.backend=expression", "context.model.backend=expression")


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("three")
    for name in ("pan.mp4", "odd.avi", "sub/zoom.webm"):
        copy_clip(clip_dir[name], root)
    return root


def _dfer_run(folder: Path, tmp: Path, cores: set[int], *sets: str) -> subprocess.CompletedProcess:
    """``dfer run --until faces`` with the default run.workers (auto), pinned to ``cores`` (its CPU affinity)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp / "run"),
           "--cache", str(tmp / "cache"), "-q", "--until", "faces", *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))


def test_auto_starts_a_worker_per_usable_core_and_no_more_than_clips(three_clips, tmp_path):
    one = _dfer_run(three_clips, tmp_path / "one-core", {0})
    assert one.returncode == 0, one.stderr
    line = r"^faces: 0 cached, 3 computed .*; 1 worker \(run\.workers=auto: 1 CPU core\)$"
    assert re.search(line, one.stderr, re.M), one.stderr
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs a machine with 2 CPU cores or more")
    assert workers.available_memory() > 3 * workers.RAM_PER_WORKER_GIB * workers.GIB / workers.MEMORY_SHARE
    two = _dfer_run(three_clips, tmp_path / "two-cores", {0, 1})
    assert two.returncode == 0, two.stderr
    assert re.search(r"^faces: .*; 2 workers \(run\.workers=auto: 2 CPU cores\)$", two.stderr, re.M), two.stderr
    # the same artifacts either way (not part of any key: how many processes computed them)
    assert sorted(p.name for p in (tmp_path / "one-core" / "cache" / "faces").iterdir()) == \
        sorted(p.name for p in (tmp_path / "two-cores" / "cache" / "faces").iterdir())


def test_auto_plan_follows_clips_and_memory(monkeypatch):
    cores = workers.usable_cores()
    assert workers.auto_workers({"device": "cpu"}, 1) == workers.WorkerPlan(1, "1 clip to compute")
    plan = workers.auto_workers({}, 10_000)
    assert plan.workers <= cores
    # a worker that needs more than the memory there is: one worker, and the stage line says why
    monkeypatch.setattr(workers, "RAM_PER_WORKER_GIB", 4 * workers.available_memory() / workers.GIB)
    plan = workers.auto_workers({"device": "cpu"}, 10_000)
    assert plan.workers == 1 and re.fullmatch(r"[0-9.]+ GiB of memory available, [0-9.]+ GiB per worker", plan.why)


def test_run_workers_setting():
    assert load_config(None, ["run.workers=auto"]).run.workers == "auto"
    assert load_config().run.workers == "auto"
    assert load_config(None, ["run.workers=3"]).run.workers == 3
    for bad in ("0", "two"):
        with pytest.raises(ConfigError, match="run.workers"):
            load_config(None, [f"run.workers={bad}"])


class _Watching(LocalExecutor):
    """Records the worker processes of each per-clip stage, and whether any is alive when a model stage starts."""

    def __init__(self, n):
        super().__init__(n)
        self.seen, self.alive_at_model_stage = [], []

    def map(self, tasks):
        yield from super().map(tasks)
        if self._pool is not None:
            self.seen += list(self._pool._processes.values())

    def map_batched(self, stage, cfg, todo, cache, batch_size):
        batches = super().map_batched(stage, cfg, todo, cache, batch_size)
        first = next(batches)  # the model stage has started
        self.alive_at_model_stage.append(any(p.is_alive() for p in self.seen))
        yield first
        yield from batches


def test_workers_exit_before_a_model_stage(three_clips, tmp_path):
    cfg = load_config(None, ["run.progress=false", *EMBEDDED])
    ex = _Watching(2)
    runner = Runner(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", log=io.StringIO(), executor=ex)
    res = runner.run(discover(three_clips))
    assert res.n_failed == 0 and res.status == "complete"
    assert len(ex.seen) >= 2  # faces (and expression, keyframes) ran in worker processes
    assert ex.alive_at_model_stage == [False, False]  # context, classify: the workers had exited
