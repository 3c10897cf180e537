"""A hostile cache and failures of the run, not of the clip (issue 19): damaged artifacts are named, moved aside and
recomputed, never used; a video that changes while it is read is not cached under its former content's key; a
cache that cannot be written or vanishes and a model server that dies stop the run once; ``dfer cache verify``."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import stages
from pipeline.cli import main as dfer_main
from pipeline.core.cache import Cache
from pipeline.core.errors import EXIT_STOPPED, CacheUnusableError, DamagedArtifactError, ServerDownError
from pipeline.engine.cachecheck import check_artifact
from pipeline.engine.rundir import RunDir
from tests import media
from tests.conftest import copy_clip
from tests.runs import failures, run

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("classify.model.backend=expression", "context.model.backend=expression")
STAGES = ["faces", "expression", "keyframes", "context", "classify"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("hostile-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(clip_dir["odd.avi"], root, "b.avi")
    return root


@pytest.fixture(scope="module")
def warm(clips, tmp_path_factory):
    """Both clips through every stage (embedded models): the result and its cache, copied by each test."""
    root = tmp_path_factory.mktemp("hostile-warm")
    res = run(clips, root / "run", root / "cache", *EMBEDDED)
    assert res.n_failed == 0, failures(root / "run")
    return res, root / "cache"


def cache_copy(warm, tmp_path) -> Path:
    return Path(shutil.copytree(warm[1], tmp_path / "cache"))


def rerun(clips, tmp_path, cache, *overrides, name="run", **kwargs):
    log = io.StringIO()
    res = run(clips, tmp_path / name, cache, *EMBEDDED, *overrides, log=log, **kwargs)
    return res, log.getvalue()


def counts(res) -> dict:
    return {r.stage: (r.cached, r.computed, r.failed) for r in res.reports}


def predictions(run_dir) -> dict:
    with open(Path(run_dir) / "predictions.csv", encoding="utf-8") as f:
        return {r["video"]: r for r in csv.DictReader(f)}


def artifact_of(warm, cache, video, stage):
    return Cache(cache).get(stage, warm[0].keys[video][stage])


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = dfer_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ damaged artifacts


def test_one_flipped_bit_in_cached_scores_is_named_and_recomputed_never_used(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    art = artifact_of(warm, cache, "a.mp4", "classify")
    original = (art.root / "scores.json").read_bytes()
    raw = bytearray(original)
    at = raw.index(b'"logprob": -0.', raw.index(b'"happy": {')) + len(b'"logprob": -')
    raw[at] ^= 0x08  # one bit: '0' -> '8', happy's log-probability -0.00x becomes -8.00x
    (art.root / "scores.json").write_bytes(raw)
    flipped = json.loads(raw)["scores"]  # still valid JSON, and it would change the prediction if it were used
    assert max(flipped, key=lambda lab: flipped[lab]["logprob"]) != "happy"

    code, _, err = cli("run", clips, "--out", tmp_path / "run", "--cache", cache, "--set", EMBEDDED[0], "--set",
                       EMBEDDED[1], "--set", "run.workers=1", "-q")
    assert code == 0, err
    key = warm[0].keys["a.mp4"]["classify"]
    assert (f"warning: damaged in cache: classify artifact {key[:12]} of clip a.mp4 (cache {cache}): scores.json: its "
            "bytes differ from those written (sha256 does not match the one recorded); moved aside to "
            f"{cache / 'damaged' / 'classify' / key}; recomputing it") in err
    assert "classify: 1 cached, 1 computed (1 damaged in cache), 0 failed" in err
    for stage in STAGES[:-1]:  # nothing else recomputed
        assert f"{stage}: 2 cached, 0 computed, 0 failed" in err
    assert predictions(tmp_path / "run")["a.mp4"]["prediction"] == "happy"
    assert predictions(tmp_path / "run") == predictions(warm[0].run_dir)
    assert (art.root / "scores.json").read_bytes() == original  # recomputed, the same bytes
    assert (cache / "damaged" / "classify" / key / "scores.json").read_bytes() == bytes(raw)  # kept aside
    assert json.loads((cache / "damaged" / "classify" / key / "damage.json").read_text())["stage"] == "classify"


def test_sixty_four_corrupted_bytes_in_cached_crops_are_recomputed_without_a_jpeg_warning(clips, warm, tmp_path, capfd):
    cache = cache_copy(warm, tmp_path)
    art = artifact_of(warm, cache, "a.mp4", "faces")
    crops = art.root / "crops.jpg.bin"
    original = crops.read_bytes()
    data = bytearray(original)
    mid = len(data) // 2
    data[mid : mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    assert data != original
    crops.write_bytes(data)
    capfd.readouterr()
    res, log = rerun(clips, tmp_path, cache)
    assert counts(res)["faces"] == (1, 1, 0) and dict(res.reports[0].reasons) == {"damaged in cache": 1}
    assert all(counts(res)[s] == (2, 0, 0) for s in STAGES[1:])  # the same key: what was computed from it stays
    assert (f"faces artifact {art.key[:12]} of clip a.mp4 (cache {cache}): crops.jpg.bin: its bytes differ from those "
            "written") in log
    assert crops.read_bytes() == original
    assert "Corrupt JPEG" not in capfd.readouterr().err  # no crop was decoded from the damaged bytes
    assert predictions(tmp_path / "run") == predictions(warm[0].run_dir)


def test_a_truncated_cached_track_is_named_and_recomputed(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    art = artifact_of(warm, cache, "b.avi", "faces")
    track = art.root / "track.npz"
    original = track.read_bytes()
    track.write_bytes(original[: len(original) // 2])
    res, log = rerun(clips, tmp_path, cache, until="keyframes")
    assert counts(res) == {"faces": (1, 1, 0), "keyframes": (2, 0, 0)} and res.n_failed == 0
    assert (f"faces artifact {art.key[:12]} of clip b.avi (cache {cache}): track.npz: has {len(original) // 2} bytes, "
            f"{len(original)} were written (truncated)") in log
    assert "not a zip file" not in log and failures(tmp_path / "run") == []
    assert track.read_bytes() == original


def test_a_flipped_bit_in_meta_json_is_damage_too(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    art = artifact_of(warm, cache, "a.mp4", "keyframes")
    meta = art.root / "meta.json"
    raw = bytearray(meta.read_bytes())
    at = raw.index(b'"video_id": "a.mp4"') + len(b'"video_id": "')
    raw[at] ^= 0x01  # "a.mp4" -> "`.mp4": valid JSON
    meta.write_bytes(raw)
    json.loads(raw)
    res, log = rerun(clips, tmp_path, cache, until="keyframes")
    assert counts(res)["keyframes"] == (1, 1, 0)
    assert "meta.json: its content differs from the sha256 it recorded of itself" in log


def test_a_stage_that_finds_an_upstream_artifact_undecodable_has_it_recomputed_and_goes_on(clips, warm, tmp_path):
    """Damage the check before use cannot see (the bytes are those recorded, but they are not JPEG crops): the stage
    that reads them names it, the runner moves the artifact aside, recomputes it and runs the stage again."""
    cache = cache_copy(warm, tmp_path)
    faces = artifact_of(warm, cache, "a.mp4", "faces")
    arrays, meta, n = faces.npz("track.npz"), faces.meta(), len(faces.bytes("crops.jpg.bin"))

    def not_jpeg(out):
        out.npz("track.npz", **arrays)
        out.bytes("crops.jpg.bin", bytes(n))
        return {"config": meta["config"], "video": meta["video"]}

    Cache(cache).write("faces", faces.key, {"video_id": "a.mp4"}, not_jpeg, replace=True)
    res, log = rerun(clips, tmp_path, cache, "expression.face_margin=0.05", until="expression")
    assert res.n_failed == 0 and failures(tmp_path / "run") == []
    assert (f"stage expression: damaged in cache: faces artifact {faces.key[:12]} of clip a.mp4 (cache {cache}): "
            "crops.jpg.bin: crop 0 (frame 0) is not a JPEG that decodes; moved aside to") in log
    assert "faces: 0 cached, 1 computed (1 damaged in cache), 0 failed" in log  # the second pass, for that clip
    assert counts(res) == {"faces": (2, 1, 0), "expression": (0, 2, 0)}
    assert Cache(cache).get("faces", faces.key).bytes("crops.jpg.bin") != bytes(n)


def test_an_old_format_artifact_is_used_when_it_decodes_and_recomputed_when_it_does_not(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    art = artifact_of(warm, cache, "a.mp4", "faces")
    meta = json.loads((art.root / "meta.json").read_text())
    for k in ("files", "meta_sha256"):
        del meta[k]
    (art.root / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))  # as written before hashes
    res, _ = rerun(clips, tmp_path, cache, until="keyframes")
    assert counts(res) == {"faces": (2, 0, 0), "keyframes": (2, 0, 0)}
    code, out, _ = cli("cache", "verify", "--cache", cache, "--stage", "faces")
    assert code == 0 and "2 artifacts checked (faces 2): 1 ok, 0 damaged, 1 old format" in out

    off = art.npz("track.npz")["crop_offsets"]
    crops = bytearray((art.root / "crops.jpg.bin").read_bytes())
    crops[int(off[3]) : int(off[3]) + 2] = b"\0\0"  # crop 3 no longer starts as a JPEG does
    (art.root / "crops.jpg.bin").write_bytes(crops)
    res, log = rerun(clips, tmp_path, cache, until="keyframes", name="run2")
    assert counts(res) == {"faces": (1, 1, 0), "keyframes": (2, 0, 0)}
    assert "crops.jpg.bin: crop 3 (frame 3) is not a JPEG that decodes" in log
    assert Cache(cache).get("faces", art.key).hashed  # recomputed in the current format


def test_a_damaged_artifact_read_by_a_tool_is_named(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    run_dir = shutil.copytree(warm[0].run_dir, tmp_path / "run")
    RunDir(run_dir).write_manifest(RunDir(run_dir).manifest(), cache)
    art = artifact_of(warm, cache, "a.mp4", "keyframes")
    (art.root / "keyframes.json").write_text("{}")
    code, _, err = cli("inspect", run_dir, "a.mp4", "-o", tmp_path / "a.png")
    assert code == 2 and not (tmp_path / "a.png").exists()
    assert (f"dfer: error: damaged in cache: keyframes artifact {art.key[:12]} of clip a.mp4 (cache {cache}): "
            "keyframes.json: has 2 bytes") in err


# ------------------------------------------------------------------------------------------ a video that changes


def test_a_video_overwritten_while_it_is_read_is_not_cached_under_its_former_content(clips, special_clips, tmp_path,
                                                                                    monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.mp4", "b.avi"):
        shutil.copyfile(clips / name, src / name)
    faces = stages.STAGES["faces"]

    def overwritten_meanwhile(job, cfg, resources, out):  # the file is replaced by a face-less one during the read
        extra = faces.process(job, cfg, resources, out)
        if job.video_id == "a.mp4":
            shutil.copyfile(special_clips["noface"].path, src / "a.mp4")
        return extra

    monkeypatch.setitem(stages.STAGES, "faces", dataclasses.replace(faces, process=overwritten_meanwhile))
    res, _ = rerun(src, tmp_path, tmp_path / "cache", until="keyframes")
    monkeypatch.undo()
    rows = failures(tmp_path / "run")
    assert [(r["video"], r["stage"], r["error"]) for r in rows] == [("a.mp4", "faces", "VideoChangedError")]
    assert rows[0]["message"].startswith(f"{src / 'a.mp4'}: changed while it was read (by stage faces")
    assert counts(res) == {"faces": (0, 1, 1), "keyframes": (0, 1, 0)}  # the clip left the later stages
    assert Cache(tmp_path / "cache").get("faces", res.keys["a.mp4"]["faces"]) is None  # nothing under the old key

    again, _ = rerun(src, tmp_path, tmp_path / "cache", until="keyframes", name="run2")  # the file as it is now
    rows = failures(tmp_path / "run2")
    assert [(r["video"], r["error"]) for r in rows] == [("a.mp4", "NoFaceError")]
    assert again.keys["a.mp4"]["faces"] != res.keys["a.mp4"]["faces"] and counts(again)["faces"] == (1, 0, 1)


# ------------------------------------------------------------------------------------------ failures of the run


def test_a_read_only_cache_stops_the_run_once_and_serves_what_it_holds(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    for d, dirs, files in os.walk(cache):
        for f in files:
            os.chmod(Path(d) / f, 0o444)
        os.chmod(d, 0o555)
    kw = media.unprivileged_subprocess_kwargs()
    probe = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(cache / "probe")],
                           capture_output=True, **kw)
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr  # the file modes hold for the child

    def dfer(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args), "--cache", str(cache), "-q",
                               "--set", "run.workers=1", "--set", EMBEDDED[0], "--set", EMBEDDED[1]],
                              cwd=REPO, capture_output=True, text=True, **kw)

    try:
        done = dfer("run", clips, "--out", tmp_path / "warm")  # everything it needs is there: it runs
        assert done.returncode == 0, done.stderr
        assert predictions(tmp_path / "warm") == predictions(warm[0].run_dir)
        done = dfer("run", clips, "--out", tmp_path / "run", "--set", "keyframes.k=3")  # it must write: it stops
        assert done.returncode == EXIT_STOPPED, done.stderr
        err = done.stderr.strip().splitlines()
        assert err[-1].startswith(f"dfer: error: stopped: the cache {cache} cannot be used (a.mp4: stage keyframes "
                                  "could not write its artifact: Permission denied")
        assert "run the same command again: what is finished stays in the cache" in err[-1]
        assert "unexpected error" not in done.stderr and failures(tmp_path / "run") == []
    finally:
        for d, dirs, files in os.walk(cache):
            os.chmod(d, 0o755)
    for stage in STAGES:  # nothing already computed was lost
        for video in ("a.mp4", "b.avi"):
            check_artifact(artifact_of(warm, cache, video, stage), deep=True)


def test_a_cache_directory_that_vanishes_stops_the_run_once(clips, warm, tmp_path, monkeypatch):
    cache = cache_copy(warm, tmp_path)
    keyframes = stages.STAGES["keyframes"]

    def vanish(job, cfg, resources, out):
        shutil.rmtree(cache)  # deleted (or unmounted) while the run writes into it
        return keyframes.process(job, cfg, resources, out)

    monkeypatch.setitem(stages.STAGES, "keyframes", dataclasses.replace(keyframes, process=vanish))
    with pytest.raises(CacheUnusableError) as err:
        rerun(clips, tmp_path, cache, "keyframes.k=3", until="keyframes")
    assert err.value.exit_code == EXIT_STOPPED
    assert str(err.value).startswith(f"stopped: the cache directory {cache} is gone (")
    assert "deleted, moved or unmounted while the run used it" in str(err.value)
    assert failures(tmp_path / "run") == []  # no clip blamed
    assert not cache.exists()  # and not silently made again, empty


def test_a_model_server_that_dies_mid_run_stops_the_run_once_keeping_what_it_scored(clips, warm, tmp_path):
    from pipeline.backends import ModelConfig, load_backend
    from tests.fake_openai_server import FakeOpenAIServer
    from tests.tiny_models import shared_tiny_model_dir

    cache = cache_copy(warm, tmp_path)
    backend = load_backend(ModelConfig(model=shared_tiny_model_dir("qwen2vl"), batch_size=4))
    served = ("classify.model.backend=openai", "classify.model.model=tiny-vlm", "classify.model.max_retries=1",
              "classify.use_summaries=false", "run.batch_size=1")
    try:
        with FakeOpenAIServer(backend) as server:  # how many requests one clip takes (scores, token counts)
            one = tmp_path / "one"
            one.mkdir()
            shutil.copyfile(clips / "a.mp4", one / "a.mp4")
            run(one, tmp_path / "count", shutil.copytree(cache, tmp_path / "cache-count"), *served,
                f"classify.model.server_url={server.url}")
            per_clip = server.answered
        with FakeOpenAIServer(backend, die_after=per_clip) as server:  # dies once the first clip is scored
            url = server.url
            with pytest.raises(ServerDownError) as err:
                run(clips, tmp_path / "run", cache, *served, f"classify.model.server_url={url}", log=io.StringIO())
            assert server.answered == per_clip
    finally:
        backend.close()
    msg = str(err.value)
    assert err.value.exit_code == EXIT_STOPPED
    assert msg.startswith(f"stopped: the model server at {url} (model 'tiny-vlm') cannot be reached after 2 attempts")
    assert "Start it again" in msg and "the clips finished so far stay in the cache" in msg
    assert failures(tmp_path / "run") == []
    warm_keys = {warm[0].keys[v]["classify"] for v in ("a.mp4", "b.avi")}
    scored = [a for a in Cache(cache).artifacts("classify") if a.key not in warm_keys]
    assert [a.meta()["video_id"] for a in scored] == ["a.mp4"]  # what the server scored before it died stays
    check_artifact(scored[0], deep=True)


# ------------------------------------------------------------------------------------------ dfer cache verify


def test_cache_verify_names_each_damaged_artifact_and_repair_moves_them_aside(clips, warm, tmp_path):
    cache = cache_copy(warm, tmp_path)
    code, out, _ = cli("cache", "verify", "--cache", cache)
    assert code == 0
    assert out.splitlines() == [f"cache {cache}: 10 artifacts checked (classify 2, context 2, expression 2, faces 2, "
                                "keyframes 2): 10 ok, 0 damaged, 0 old format (no hashes recorded: checked by decoding only)"]

    faces = artifact_of(warm, cache, "a.mp4", "faces")
    crops = bytearray((faces.root / "crops.jpg.bin").read_bytes())
    crops[100] ^= 0x10
    (faces.root / "crops.jpg.bin").write_bytes(crops)
    context = artifact_of(warm, cache, "b.avi", "context")
    (context.root / "context.json").unlink()
    code, out, _ = cli("cache", "verify", "--cache", cache)
    lines = out.splitlines()
    assert code == 1
    assert lines[0].endswith("8 ok, 2 damaged, 0 old format (no hashes recorded: checked by decoding only)")
    assert (f"damaged: context {context.key} clip b.avi: context.json: is missing") in lines
    assert (f"damaged: faces {faces.key} clip a.mp4: crops.jpg.bin: its bytes differ from those written (sha256 does not "
            "match the one recorded)") in lines
    assert "dfer cache verify --repair" in lines[-1] and faces.root.is_dir()  # nothing moved without --repair

    code, out, _ = cli("cache", "verify", "--cache", cache, "--stage", "context")
    assert code == 1 and "2 artifacts checked (context 2): 1 ok, 1 damaged" in out and "faces" not in out

    code, out, _ = cli("cache", "verify", "--cache", cache, "--repair")
    assert code == 1 and f"repaired: 2 damaged artifact(s) moved to {cache / 'damaged'}" in out
    assert not faces.root.exists() and (cache / "damaged" / "faces" / faces.key / "crops.jpg.bin").is_file()
    code, out, _ = cli("cache", "verify", "--cache", cache)
    assert code == 0 and "8 artifacts checked" in out and "8 ok, 0 damaged" in out

    res, log = rerun(clips, tmp_path, cache)  # the next run recomputes them, saying why
    assert counts(res)["faces"] == (1, 1, 0) and dict(res.reports[0].reasons) == {"damaged in cache": 1}
    assert counts(res)["context"] == (1, 1, 0) and dict(res.reports[3].reasons) == {"damaged in cache": 1}
    assert predictions(tmp_path / "run") == predictions(warm[0].run_dir)
    code, out, _ = cli("cache", "verify", "--cache", cache)
    assert code == 0 and "10 ok, 0 damaged" in out


def test_cache_verify_of_a_folder_that_is_not_a_cache(tmp_path):
    code, _, err = cli("cache", "verify", "--cache", tmp_path / "nowhere")
    assert code == 2 and err.strip() == f"dfer: error: {tmp_path / 'nowhere'}: no such cache directory (give --cache DIR, or set $DFER_CACHE)"


def test_the_damage_error_travels_between_processes_intact():
    import pickle

    exc = DamagedArtifactError("damaged in cache: x", "faces", "ab" * 32, "track.npz", "is missing")
    back = pickle.loads(pickle.dumps(exc))
    assert (str(back), back.stage, back.key, back.file, back.problem) == (str(exc), "faces", "ab" * 32, "track.npz",
                                                                          "is missing")
