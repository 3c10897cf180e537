"""Model stages: load the model once, feed it batches of clips, store each clip's artifact.

If a whole batch raises, its clips are retried one by one so that one bad clip cannot fail the
others, unless what it raised is a failure of the run (:class:`RunStopError`, e.g. the model server is down):
then the runner stops on it at once. The model is freed before the next stage loads its own.
"""

from __future__ import annotations

from typing import Iterator

from pipeline.core.cache import Cache
from pipeline.core.errors import RunStopError
from pipeline.core.jobs import ClipTask, TaskResult, task_failure
from pipeline.engine.fingerprints import check_unchanged


def _store(cache: Cache, task: ClipTask, fill) -> TaskResult:
    try:
        art = cache.write(task.stage, task.key, task.meta, fill, replace=task.replace)
    except Exception as exc:  # noqa: BLE001 - recorded as the clip's failure
        return task_failure(task, exc)
    return TaskResult(True, meta=art.meta())


def _checked(stage, task: ClipTask, fill):
    """``fill``, then (a stage that reads the video) the check that the file did not change meanwhile."""
    if not getattr(stage, "reads_video", False):
        return fill

    def checked(out):
        extra = fill(out)
        check_unchanged(task.job, task.stage)
        return extra

    return checked


def run_batched(stage, cfg, todo: list[tuple[str, ClipTask]], cache: Cache, batch_size: int) -> Iterator[tuple[str, TaskResult]]:
    """Load the stage's model, run :func:`process_batches`, free the model."""
    resources = stage.open(cfg)
    try:
        yield from process_batches(stage, cfg, resources, todo, cache, batch_size)
    finally:
        stage.close(resources)


def process_batches(stage, cfg, resources, todo: list[tuple[str, ClipTask]], cache: Cache,
                    batch_size: int) -> Iterator[tuple[str, TaskResult]]:
    """Feed ``todo`` to ``stage.process_batch`` in batches of ``batch_size`` with already loaded ``resources``
    and store each clip's artifact; yields ``(video id, result)`` per clip."""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        jobs = [task.job for _, task in chunk]
        try:
            fills = stage.process_batch(jobs, cfg, resources)
        except RunStopError as exc:  # not a clip's fault: the runner stops on the first row
            yield chunk[0][0], task_failure(chunk[0][1], exc)
            return
        except Exception as exc:  # noqa: BLE001 - isolate the clip that broke the batch
            if len(chunk) == 1:
                fills = [exc]
            else:
                fills = []
                for vid, task in chunk:
                    try:
                        fills.extend(stage.process_batch([task.job], cfg, resources))
                    except RunStopError as one:
                        yield vid, task_failure(task, one)
                        return
                    except Exception as one:  # noqa: BLE001
                        fills.append(one)
        for (vid, task), fill in zip(chunk, fills):
            if isinstance(fill, BaseException):
                yield vid, task_failure(task, fill)
            else:
                yield vid, _store(cache, task, _checked(stage, task, fill))
