"""Cache: canonical keys, atomic artifacts, no pickle."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.core.cache import Cache, artifact_key, canonical_json, default_cache_dir
from pipeline.core.errors import DamagedArtifactError


def test_canonical_json_ignores_dict_order_and_rejects_non_json():
    assert canonical_json({"b": 1, "a": [1, {"y": 2, "x": 1}]}) == canonical_json({"a": [1, {"x": 1, "y": 2}], "b": 1})
    with pytest.raises(TypeError, match="cannot hash object of type set"):
        canonical_json({"a": {1, 2}})
    with pytest.raises(TypeError, match="non-finite"):
        canonical_json({"a": float("nan")})


def test_key_depends_on_each_input():
    base = dict(stage="faces", version=1, config={"k": 1}, upstream={}, fingerprint="f" * 64)
    k0 = artifact_key(**base)
    assert artifact_key(**{**base, "config": {"k": 1}}) == k0
    for change in ({"version": 2}, {"config": {"k": 2}}, {"upstream": {"faces": "x"}}, {"fingerprint": "0" * 64}, {"stage": "x"}):
        assert artifact_key(**{**base, **change}) != k0


def test_failed_fill_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)

    def boom(out):
        out.json("partial.json", {"a": 1})
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        cache.write("faces", "ab" * 32, {}, boom)
    assert cache.get("faces", "ab" * 32) is None
    assert list((tmp_path / "faces" / "ab").iterdir()) == []


def test_artifact_roundtrip_and_meta(tmp_path):
    cache = Cache(tmp_path)
    key = "cd" * 32

    def fill(out):
        out.npz("a.npz", x=np.arange(3, dtype=np.float32))
        out.json("b.json", {"z": [1, 2]})
        return {"extra": 5}

    art = cache.write("keyframes", key, {"video_id": "v"}, fill)
    assert art.root == tmp_path / "keyframes" / "cd" / key
    meta = json.loads((art.root / "meta.json").read_text())
    assert meta["extra"] == 5 and meta["stage"] == "keyframes" and meta["format_version"] == 2
    assert "packages" in meta and "compute_seconds" in meta
    # every file's size and sha256, as written
    for name in ("a.npz", "b.json"):
        data = (art.root / name).read_bytes()
        assert meta["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(meta["files"]) == {"a.npz", "b.json"}
    assert art.npz("a.npz")["x"].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="object array"):
        cache.write("keyframes", "ef" * 32, {}, lambda out: out.npz("o.npz", x=np.array([None, 1], dtype=object)))
    # an existing artifact is kept when another writer finishes second
    again = cache.write("keyframes", key, {"video_id": "v"}, lambda out: out.json("b.json", {"z": "other"}))
    assert again.json("b.json") == {"z": [1, 2]}


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DFER_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dfer"


def test_sweep_removes_only_old_leftovers(tmp_path):
    from tests.runs import leftover_tmp

    cache = Cache(tmp_path)
    old = leftover_tmp(tmp_path / "faces" / "ab" / ".tmp-abcdef-1-x", age_s=2 * 24 * 3600)
    new = leftover_tmp(tmp_path / "faces" / "ab" / ".tmp-abcdef-2-y")
    assert cache.sweep_stale("faces") == 1
    assert not old.exists() and new.exists()


def _crops_artifact(tmp_path, payload: bytes):
    cache = Cache(tmp_path)
    key = "ef" * 32

    def fill(out):
        out.bytes("crops.bin", payload)

    cache.write("faces", key, {}, fill)
    return cache.get("faces", key), cache.dir_for("faces", key) / "crops.bin"


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: more than one of SequentialRead's blocks


def test_a_byte_range_is_read_alone_and_a_damaged_file_is_named(tmp_path):
    art, path = _crops_artifact(tmp_path, PAYLOAD)
    assert art.byte_range("crops.bin", 1000, 1010) == PAYLOAD[1000:1010]
    with pytest.raises(DamagedArtifactError, match=r"crops.bin: has 1048576 bytes, bytes 5-2000000 were asked for"):
        art.byte_range("crops.bin", 5, 2_000_000)
    with pytest.raises(DamagedArtifactError, match="other.bin: is not one of the artifact's files"):
        art.byte_range("other.bin", 0, 1)
    path.write_bytes(PAYLOAD[:1000])
    with pytest.raises(DamagedArtifactError, match=r"crops.bin: has 1000 bytes, 1048576 were written \(truncated\)"):
        art.byte_range("crops.bin", 0, 10)
    path.unlink()
    with pytest.raises(DamagedArtifactError, match="crops.bin: is missing"):
        art.byte_range("crops.bin", 0, 10)


def test_a_sequential_read_gives_the_ranges_and_checks_the_whole_file_at_the_end(tmp_path):
    art, path = _crops_artifact(tmp_path, PAYLOAD)
    reader = art.sequential("crops.bin")
    assert reader.take(10, 20) == PAYLOAD[10:20] and reader.take(20, 1_048_000) == PAYLOAD[20:1_048_000]
    with pytest.raises(ValueError, match="ranges must ascend"):
        reader.take(0, 5)
    reader.close()  # the rest read, size and sha256 as recorded

    flipped = bytearray(PAYLOAD)
    flipped[-1] ^= 1  # past every range taken: only the check of the whole file can see it
    path.write_bytes(bytes(flipped))
    reader = art.sequential("crops.bin")
    assert reader.take(0, 10) == PAYLOAD[:10]
    with pytest.raises(DamagedArtifactError, match="crops.bin: its bytes differ from those written"):
        reader.close()

    path.write_bytes(PAYLOAD[:500])
    reader = art.sequential("crops.bin")
    with pytest.raises(DamagedArtifactError, match=r"crops.bin: ends at byte 500, byte 600 was asked for \(truncated\)"):
        reader.take(0, 600)
    path.unlink()
    with pytest.raises(DamagedArtifactError, match="crops.bin: is missing"):
        art.sequential("crops.bin")
