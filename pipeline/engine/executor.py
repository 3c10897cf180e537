"""Where per-clip work runs. The runner hands jobs to an executor; stages never know where they run.

``LocalExecutor`` uses a pool of *spawned* worker processes (never forked: each worker imports
its own libraries and opens its own decoders), loads a stage's resources (e.g. MTCNN) once per
worker, and writes artifacts straight into the cache from the worker, so frames and crops never
travel between processes. ``workers=1`` runs in the calling process.
"""

from __future__ import annotations

import abc
import contextlib
import json
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

from pipeline.engine.batching import run_batched
from pipeline.engine.workers import WorkerPlan, auto_workers, usable_cores
from pipeline.engine.fingerprints import check_unchanged
from pipeline.core.cache import Cache
from pipeline.core.jobs import ClipTask, TaskResult, task_failure


_RESOURCES: dict = {}


def _resources(stage, cfg, cfg_json: str):
    """The stage's resources in this worker process, loaded once per stage and config."""
    key = (stage.name, cfg_json)
    if key not in _RESOURCES:
        for old in [k for k in _RESOURCES if k[0] == stage.name]:
            stage.close(_RESOURCES.pop(old))
        _RESOURCES[key] = stage.open(cfg)
    return _RESOURCES[key]


def run_task(task: ClipTask) -> TaskResult:
    """Compute one clip's artifact for one stage and store it; errors become a TaskResult. A stage that reads the
    video is checked not to have read another file than the one fingerprinted, before its artifact is stored."""
    from stages import STAGES  # start-up order: init_worker set the thread limits before the stages load cv2/torch

    stage = STAGES[task.stage]

    def fill(out):
        extra = stage.process(task.job, cfg, res, out)
        if stage.reads_video:
            check_unchanged(task.job, task.stage)
        return extra

    try:
        cfg = stage.Config.model_validate(task.config)
        res = _resources(stage, cfg, json.dumps(task.config, sort_keys=True))
        art = Cache(task.cache_root, create_root=False).write(task.stage, task.key, task.meta, fill, replace=task.replace)
        return TaskResult(True, meta=art.meta())
    except Exception as exc:  # noqa: BLE001 - recorded as the clip's failure; the batch goes on
        return task_failure(task, exc)


def init_worker(threads: int) -> None:
    """Worker process set-up: thread counts of OpenMP/MKL/OpenBLAS, torch and OpenCV."""
    # OpenMP/MKL pools size themselves at first use from these; without them each worker's pool takes every
    # core and the workers' threads wait on each other (the Ray executor's tasks get the same treatment).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)


class Executor(abc.ABC):
    """Where per-clip work and model stages run. The runner calls exactly these methods, on every executor."""

    def start(self, cache_root) -> None:
        """Connect and check, before any clip is scheduled (default: nothing to do)."""

    @abc.abstractmethod
    def map(self, tasks: list[ClipTask]) -> Iterator[tuple[int, TaskResult]]:
        """Run per-clip tasks; yield ``(task index, result)`` as they finish (any order)."""

    def map_batched(self, stage, cfg, todo: list[tuple[str, ClipTask]], cache: Cache,
                    batch_size: int) -> Iterator[tuple[str, TaskResult]]:
        """A model stage over ``todo`` in batches; yield ``(video id, result)`` per clip. Default: in this process,
        the model loaded once (:func:`pipeline.engine.batching.run_batched`)."""
        yield from run_batched(stage, cfg, todo, cache, batch_size)

    def close(self) -> None:
        """Free workers and connections (idempotent; default: nothing to free)."""

    def note(self, stage: str) -> str | None:
        """What the stage line of ``stage`` should say about where it ran (default: nothing)."""
        return None


class LocalExecutor(Executor):
    """Per-clip tasks in a pool of spawned local processes (``workers=1``: in this process; ``"auto"``: as many as
    :func:`pipeline.engine.workers.auto_workers` says for each stage). The pool is freed before a model stage runs in
    this process, so that its memory (and the workers' GPU memory) is the model's."""

    def __init__(self, workers: int | str = 1):
        self.setting = workers
        self.workers = 1 if workers == "auto" else max(1, workers)
        self.plans: dict[str, WorkerPlan] = {}  # stage -> how many workers "auto" started, and why
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            threads = max(1, usable_cores() // self.workers)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=init_worker, initargs=(threads,))
        return self._pool

    def _size_for(self, tasks: list[ClipTask]) -> None:
        """``workers=auto``: the pool's size for this stage's tasks (a pool of another size is freed first)."""
        if self.setting != "auto" or not tasks:
            return
        plan = auto_workers(tasks[0].config, len(tasks))
        self.plans[tasks[0].stage] = plan
        if plan.workers != self.workers:
            self.close()
            self.workers = plan.workers

    def note(self, stage: str) -> str | None:
        plan = self.plans.get(stage)
        if plan is None:
            return None
        return f"{plan.workers} worker{'s' if plan.workers != 1 else ''} (run.workers=auto: {plan.why})"

    def map_batched(self, stage, cfg, todo, cache, batch_size):
        self.close()  # idle workers would hold memory (host, and GPU where they ran a detector there) the model needs
        yield from super().map_batched(stage, cfg, todo, cache, batch_size)

    def map(self, tasks: list[ClipTask]) -> Iterator[tuple[int, TaskResult]]:
        """If a worker process dies (killed, out of memory), the pool is rebuilt and unfinished clips are retried
        once; a clip that was in flight during two deaths is recorded as failed."""
        self._size_for(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                yield i, run_task(t)
            return
        todo = set(range(len(tasks)))
        deaths = {i: 0 for i in todo}
        while todo:
            pool = self._get_pool()
            futures = {pool.submit(run_task, tasks[i]): i for i in sorted(todo)}
            remaining = set(futures)
            try:
                while remaining:
                    done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for fut in done:
                        result = fut.result()  # raises BrokenProcessPool before the clip leaves ``todo``
                        todo.discard(futures[fut])
                        yield futures[fut], result
            except BrokenProcessPool:
                self._pool = None
                for i in sorted(todo):
                    deaths[i] += 1
                    if deaths[i] >= 2:
                        todo.discard(i)
                        yield i, TaskResult(False, error_type="WorkerDied",
                                            message=f"{tasks[i].job.path}: the worker process died twice while computing "
                                            f"stage {tasks[i].stage} (killed, or out of memory)")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
