"""Failure rows of per-clip and model stages: one rule (``pipeline.core.jobs.task_failure``) for both."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

import stages

from pipeline.engine.batching import process_batches
from pipeline.core.cache import Cache
from pipeline.core.errors import DiskFullError, NoFaceError
from pipeline.core.jobs import ClipJob, ClipTask, task_failure
from tests.conftest import copy_clip
from tests.runs import failures, run


def _task(vid: str) -> ClipTask:
    return ClipTask("classify", {}, ClipJob(vid, Path(f"/data/{vid}"), "fp"), "/nowhere", "k" * 64, {})


def _broken_model(jobs, cfg, resources):
    if any(j.video_id == "bad.mp4" for j in jobs):
        raise IndexError("list index out of range")
    return [lambda out: None for _ in jobs]


def test_an_unexpected_error_in_a_model_stage_names_the_clip_the_stage_and_where_it_came_from(tmp_path):
    stage = SimpleNamespace(process_batch=_broken_model)
    todo = [("good.mp4", _task("good.mp4")), ("bad.mp4", _task("bad.mp4"))]
    rows = dict(process_batches(stage, None, None, todo, Cache(tmp_path), batch_size=2))
    assert rows["good.mp4"].ok  # the clip that broke the batch is isolated, the other is stored
    bad = rows["bad.mp4"]
    assert not bad.ok and bad.error_type == "IndexError"
    assert bad.message.startswith("/data/bad.mp4: unexpected error in stage classify at test_failure_rows.py:")
    assert bad.message.endswith(": list index out of range")


def test_a_clip_error_keeps_its_own_message():
    row = task_failure(_task("a.mp4"), NoFaceError("/data/a.mp4: no face in any frame"))
    assert (row.error_type, row.message) == ("NoFaceError", "/data/a.mp4: no face in any frame")


def test_out_of_memory_is_named_as_such():
    row = task_failure(_task("a.mp4"), MemoryError())
    assert (row.error_type, row.message) == ("MemoryError", "/data/a.mp4: out of memory in stage classify")


def test_a_full_disk_is_not_blamed_on_the_clip():
    row = task_failure(_task("a.mp4"), OSError(errno.ENOSPC, "No space left on device"))
    assert row.error_type == "DiskFullError" and "No space left on device" in row.message


def test_a_full_disk_stops_the_run_keeping_what_is_finished(clip_dir, tmp_path, monkeypatch):
    for name in ("a.mp4", "b.mp4"):
        copy_clip(clip_dir["pan.mp4" if name == "a.mp4" else "odd.avi"], tmp_path / "in", name)
    keyframes = stages.STAGES["keyframes"]

    def fill_up(job, cfg, resources, out):  # the disk fills up while the second clip's artifact is written
        if job.video_id == "b.mp4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return keyframes.process(job, cfg, resources, out)

    monkeypatch.setitem(stages.STAGES, "keyframes", dataclasses.replace(keyframes, process=fill_up))
    with pytest.raises(DiskFullError, match=r"disk is full .*b\.mp4: stage keyframes .*run the same command again"):
        run(tmp_path / "in", tmp_path / "run", tmp_path / "cache", until="keyframes")
    assert failures(tmp_path / "run") == []  # no clip is blamed for it
    monkeypatch.undo()
    res = run(tmp_path / "in", tmp_path / "run", tmp_path / "cache", until="keyframes")
    assert [(r.stage, r.cached) for r in res.reports] == [("faces", 2), ("keyframes", 1)]  # finished work was kept
