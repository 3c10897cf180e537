"""Fingerprints remembered in the cache: an unchanged file is not read again, a changed one is, keys never move."""

from __future__ import annotations

import os

import pytest

from pipeline.cli import main as dfer_main
from pipeline.engine.fingerprints import FingerprintMemo
from pipeline.engine.inputs import fingerprint
from tests.conftest import copy_clip
from tests.runs import manifest, run


def rewrite_in_place_keeping_size_and_mtime(path, data: bytes) -> None:
    """New content, same inode, size and modification time: what the memo cannot see."""
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_unchanged_file_is_answered_from_the_memo_without_reading_it(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"A" * 1000)
    memo = FingerprintMemo(tmp_path / "cache")
    first = memo.fingerprint(f)
    assert first == fingerprint(f)
    rewrite_in_place_keeping_size_and_mtime(f, b"B" * 1000)
    # the stale answer proves that the file was not read
    assert FingerprintMemo(tmp_path / "cache").fingerprint(f) == first != fingerprint(f)


@pytest.mark.parametrize("change", ["touch", "append"])
def test_a_changed_file_is_rehashed(tmp_path, change):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"A" * 1000)
    memo = FingerprintMemo(tmp_path / "cache")
    first = memo.fingerprint(f)
    if change == "touch":  # new content, same size; the modification time moves on
        rewrite_in_place_keeping_size_and_mtime(f, b"B" * 1000)
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    else:  # new size, same modification time
        st = os.stat(f)
        with open(f, "ab") as fh:
            fh.write(b"B")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert memo.fingerprint(f) == fingerprint(f) != first


def test_rehash_reads_the_file_and_renews_the_memo(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"A" * 1000)
    FingerprintMemo(tmp_path / "cache").fingerprint(f)
    rewrite_in_place_keeping_size_and_mtime(f, b"B" * 1000)
    assert FingerprintMemo(tmp_path / "cache", rehash=True).fingerprint(f) == fingerprint(f)
    assert FingerprintMemo(tmp_path / "cache").fingerprint(f) == fingerprint(f)


def test_a_broken_memo_entry_counts_as_missing(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"A" * 1000)
    memo = FingerprintMemo(tmp_path / "cache")
    memo.fingerprint(f)
    entries = list((tmp_path / "cache" / "fingerprints").rglob("*.json"))
    assert len(entries) == 1
    entries[0].write_text('{"path": "half a record', encoding="utf-8")
    assert memo.fingerprint(f) == fingerprint(f)
    assert '"sha256"' in entries[0].read_text(encoding="utf-8")  # rewritten whole


def test_a_memo_entry_never_changes_a_cache_key(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["pan.mp4"], folder)
    copy_clip(clip_dir["odd.avi"], folder)
    cold = run(folder, tmp_path / "r1", tmp_path / "cache", until="keyframes")
    assert list((tmp_path / "cache" / "fingerprints").rglob("*.json"))  # the cold run remembered them
    warm = run(folder, tmp_path / "r2", tmp_path / "cache", until="keyframes")
    rehashed = run(folder, tmp_path / "r3", tmp_path / "cache", until="keyframes", rehash=True)
    fresh = run(folder, tmp_path / "r4", tmp_path / "other-cache", until="keyframes")
    assert cold.keys == warm.keys == rehashed.keys == fresh.keys
    assert [r.cached for r in warm.reports] == [2, 2]


def test_dfer_run_rehash_sees_a_file_changed_behind_the_memo(clip_dir, tmp_path):
    folder = tmp_path / "in"
    clip = copy_clip(clip_dir["pan.mp4"], folder)
    args = [str(folder), "--until", "faces", "--cache", str(tmp_path / "cache"), "--set", "run.workers=1", "-q"]
    assert dfer_main(["run", *args, "--out", str(tmp_path / "r1")]) == 0
    before = manifest(tmp_path / "r1")["pan.mp4"]["fingerprint"]
    rewrite_in_place_keeping_size_and_mtime(clip, bytes(clip.stat().st_size))  # zeros: no longer a video
    assert dfer_main(["run", *args, "--out", str(tmp_path / "r2")]) == 0  # the memo still answers
    assert manifest(tmp_path / "r2")["pan.mp4"]["fingerprint"] == before
    assert dfer_main(["run", *args, "--out", str(tmp_path / "r3"), "--rehash"]) == 1  # read again: not a video
    assert manifest(tmp_path / "r3")["pan.mp4"]["fingerprint"] == fingerprint(clip) != before
