"""Every bad input yields exactly one failure row that names the file and the problem; good clips complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import media
from tests.conftest import copy_clip
from tests.runs import failures, manifest, run

EXPECTED = {
    "empty.mp4": ("UnreadableFileError", "empty (0 bytes)"),
    "notes.mp4": ("NotAVideoError", "not a video file"),
    "cut.mp4": ("DecodeError", "truncated"),
    "tone.mp4": ("NotAVideoError", "no video stream"),
    "tiny.mp4": ("NoFaceError", "2x2 pixels, smaller than the smallest face the detector finds"),
}


def _bad_folder(root: Path, good_spec) -> Path:
    folder = root / "in"
    copy_clip(good_spec, folder, "good.mp4")
    copy_clip(good_spec, folder, media.unicode_name)
    media.make_zero_byte(folder / "empty.mp4")
    media.make_text_as_video(folder / "notes.mp4")
    media.make_truncated(good_spec, folder / "cut.mp4", keep_fraction=0.5)
    media.make_audio_only(folder / "tone.mp4")
    media.make_tiny_video(folder / "tiny.mp4", size=(2, 2))
    return folder


def test_bad_inputs_are_recorded_and_good_clips_complete(clip_dir, tmp_path):
    folder = _bad_folder(tmp_path, clip_dir["pan.mp4"])
    res = run(folder, tmp_path / "run", tmp_path / "cache")
    rows = failures(tmp_path / "run")
    by_video = {}
    for r in rows:
        by_video.setdefault(r["video"], []).append(r)
    assert set(by_video) == set(EXPECTED), rows
    for vid, (err, words) in EXPECTED.items():
        assert len(by_video[vid]) == 1, by_video[vid]
        row = by_video[vid][0]
        assert row["error"] == err, row
        assert words in row["message"], row
        assert vid in row["message"], row  # names the file
    assert res.n_failed == len(EXPECTED)
    man = manifest(tmp_path / "run")
    for good in ("good.mp4", media.unicode_name):
        # the default models are not available here: context and classify run the embedded model
        assert set(man[good]["artifacts"]) == {"faces", "expression", "keyframes", "context", "classify"}
    # the two good clips share content, hence one faces artifact
    assert man["good.mp4"]["artifacts"] == man[media.unicode_name]["artifacts"]


def test_truncated_clip_can_be_kept_on_request(clip_dir, tmp_path):
    cut = media.make_truncated(clip_dir["pan.mp4"], tmp_path / "cut.mp4", keep_fraction=0.5)
    res = run(cut, tmp_path / "run", tmp_path / "cache", "faces.allow_truncated=true", until="faces")
    assert res.n_failed == 0, failures(tmp_path / "run")


def test_unreadable_file_through_the_cli(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "ok.avi")
    media.make_unreadable(folder / "locked.mp4", src=clip_dir["pan.mp4"].path)
    env = {**os.environ, "DFER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp_path / "run"), "-q", "--set", "run.workers=1"],
        capture_output=True, text=True, env=env, timeout=300, **media.unprivileged_subprocess_kwargs(),
    )
    assert proc.returncode == 1, proc.stderr
    rows = failures(tmp_path / "run")
    assert [r["video"] for r in rows] == ["locked.mp4"], rows
    assert "permission denied" in rows[0]["message"] and "locked.mp4" in rows[0]["message"]
    assert "1 failed" in proc.stderr
    assert (tmp_path / "cache" / "faces").is_dir()  # DFER_CACHE honoured


def test_an_unreadable_folder_is_named_and_the_rest_runs(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "ok.avi")
    copy_clip(clip_dir["pan.mp4"], folder / "locked", "inside.mp4")
    (folder / "locked").chmod(0)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp_path / "run"), "-q",
             "--until", "faces", "--cache", str(tmp_path / "cache")],
            capture_output=True, text=True, timeout=300, **media.unprivileged_subprocess_kwargs(),
        )
    finally:
        (folder / "locked").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert f"{folder / 'locked'}: cannot be read (Permission denied); clips inside it are left out" in proc.stderr
    assert list(manifest(tmp_path / "run")) == ["ok.avi"]
