"""`dfer export RUN --format llamafactory|sharegpt`: a real run (tiny Qwen2-VL for context and classify) exported as a
fine-tuning dataset, checked against LLaMA-Factory's documented schema and loaded with LLaMA-Factory itself; bad input.

The documented schema (hiyouga/LLaMA-Factory, data/README.md, "Multimodal Image Dataset" and "OpenAI Format"): a
dataset_info.json entry with ``formatting: sharegpt``, ``columns`` naming the messages and images columns and ``tags``
naming the role and content keys and the user and assistant roles; a list of samples whose messages alternate user
and assistant (an optional system message first); as many ``<image>`` placeholders in the text as paths in
``images``; image paths relative to the dataset folder (LLaMA-Factory's ``media_dir`` defaults to ``dataset_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.core.errors import EXIT_OK, EXIT_USAGE
from pipeline.engine.rundir import RunDir
from stages.faces.facetrack import FaceTrack
from tests.conftest import copy_clip
from tests.runs import copy_run, run
from tests.tiny_models import shared_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TRUE = {"a.mp4": "happy", "b.mp4": "surprise"}  # b.mp4 is labelled "Surprise" in the list: the canonical name


@pytest.fixture(scope="module")
def scored(tmp_path_factory, clip_dir, special_clips):
    """Two labelled clips, one without a label, one labelled but without a face (it fails at faces)."""
    root = tmp_path_factory.mktemp("export-run")
    for spec, name in ((clip_dir["pan.mp4"], "a.mp4"), (special_clips["expr"], "b.mp4"),
                       (clip_dir["sub/zoom.webm"], "c.webm"), (special_clips["noface"], "e.mp4")):
        copy_clip(spec, root / "in", name)
    lst = root / "in" / "list.csv"
    lst.write_text("path,label\na.mp4,happy\nb.mp4,Surprise\nc.webm,\ne.mp4,fear\n")
    model = shared_tiny_model_dir("qwen2vl")
    res = run(lst, root / "run", root / "cache", f"context.model.model={model}", "context.model.max_new_tokens=6",
              f"classify.model.model={model}")
    assert res.status == "complete" and res.n_failed == 1
    return res


def export(capsys, *args) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def documented_schema(folder: Path, name: str) -> list[dict]:
    """The samples of dataset ``name`` in ``folder``, read as LLaMA-Factory's data/README.md describes them, each as
    ``{"id", "system", "user", "answer", "images"}``; an AssertionError names the first departure from it."""
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info[name]
    assert entry["formatting"] == "sharegpt"
    cols, tags = entry["columns"], entry["tags"]
    assert set(cols) == {"messages", "images"}
    role, content = tags["role_tag"], tags["content_tag"]
    samples = json.loads((folder / entry["file_name"]).read_text(encoding="utf-8"))
    assert isinstance(samples, list) and samples
    out = []
    for s in samples:
        msgs = list(s[cols["messages"]])
        system = msgs.pop(0)[content] if msgs[0][role] == tags["system_tag"] else None
        assert [m[role] for m in msgs] == [tags["user_tag"], tags["assistant_tag"]], s["id"]
        images = s[cols["images"]]
        placeholders = sum(m[content].count("<image>") for m in msgs)
        assert placeholders == len(images) > 0, (s["id"], placeholders, len(images))
        for p in images:
            assert not os.path.isabs(p) and (folder / p).is_file(), p
            Image.open(folder / p).verify()
        out.append({"id": s["id"], "system": system, "user": msgs[0][content], "answer": msgs[1][content],
                    "images": images})
    return out


def test_the_llamafactory_export_holds_each_labelled_clips_prompt_its_crops_and_its_true_label(scored, capsys):
    code, out, err = export(capsys, scored.run_dir, "--format", "llamafactory")
    folder = scored.run_dir / "llamafactory"
    name = "dfer_run"
    assert code == EXIT_OK, err
    assert out.strip() == (f"2 samples (happy 1, surprise 1), 8 images -> {folder} "
                           f"(dataset '{name}' in {folder / 'dataset_info.json'})")
    assert "1 clip(s) without a true label left out" in err  # c.webm
    assert "note: e.mp4: left out: no faces artifact" in err  # labelled, but it failed at faces
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {name: {"file_name": f"{name}.json", "formatting": "sharegpt",
                           "columns": {"messages": "messages", "images": "images"},
                           "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                    "assistant_tag": "assistant", "system_tag": "system"}}}
    samples = documented_schema(folder, name)
    assert {s["id"]: s["answer"] for s in samples} == TRUE
    run_dir = RunDir(scored.run_dir)
    cache, rows = run_dir.cache(), {r.video: r for r in run_dir.manifest()}
    for s in samples:
        row = rows[s["id"]]
        track = FaceTrack.load(cache.get("faces", row.artifacts["faces"]))
        frames = cache.get("keyframes", row.artifacts["keyframes"]).json("keyframes.json")["indices"]
        gaps = cache.get("context", row.artifacts["context"]).json("context.json")["gaps"]
        # the prompt the model was shown: each gap's summary and each keyframe's time then its image, in time order
        # (a keyframe before the gap that starts at its time)
        items = sorted([(g["t_start"], 1, f"[{g['t_start']:.2f}–{g['t_end']:.2f} s] {g['summary']}") for g in gaps]
                       + [(float(track.t[i]), 0, f"[{track.t[i]:.2f} s] <image>") for i in frames])
        at = [s["user"].index(text) for _, _, text in items]  # each is in the text ...
        assert at == sorted(at)  # ... in that order
        assert s["user"].endswith("Choose one of: happy, sad, neutral, angry, surprise, disgust, fear. "
                                  "Answer with one word.")
        assert s["system"] is None
        # the images are the crops the model was shown (224 px, the stored size: the cached JPEG), in prompt order
        assert len(s["images"]) == len(frames)
        shown = track.crops(frames, size=224)
        for img, path in zip(shown, s["images"]):
            got = cv2.cvtColor(cv2.imread(str(folder / path)), cv2.COLOR_BGR2RGB)
            assert np.array_equal(got, img), path
    marker = json.loads((folder / "dfer-export.json").read_text(encoding="utf-8"))
    assert marker["format"] == "llamafactory" and marker["samples"] == 2 and marker["unlabelled_left_out"] == 1


def test_the_sharegpt_export_is_the_same_dataset_in_from_value_turns(scored, capsys, tmp_path):
    code, _, err = export(capsys, scored.run_dir, "--format", "sharegpt", "-o", tmp_path / "sg", "--name", "fer_train")
    assert code == EXIT_OK, err
    info = json.loads((tmp_path / "sg" / "dataset_info.json").read_text(encoding="utf-8"))["fer_train"]
    assert info["file_name"] == "fer_train.json" and info["columns"]["messages"] == "conversations"
    assert info["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                            "system_tag": "system"}
    raw = json.loads((tmp_path / "sg" / "fer_train.json").read_text(encoding="utf-8"))
    assert [[m["from"] for m in s["conversations"]] for s in raw] == [["human", "gpt"]] * 2
    sg = documented_schema(tmp_path / "sg", "fer_train")
    code, _, err = export(capsys, scored.run_dir, "--format", "llamafactory", "-o", tmp_path / "lf")
    lf = documented_schema(tmp_path / "lf", "dfer_run")
    assert [(s["id"], s["user"], s["answer"], s["images"]) for s in sg] == \
        [(s["id"], s["user"], s["answer"], s["images"]) for s in lf]


def llamafactory_python() -> str:
    """The Python of a venv with LLaMA-Factory (``DFER_LLAMAFACTORY_PYTHON``; ``.ci/llamafactory-venv.sh`` makes one);
    skips the test without it, fails under ``DFER_REQUIRE_LLAMAFACTORY=1`` (set by ``.ci/run``)."""
    python = os.environ.get("DFER_LLAMAFACTORY_PYTHON", "")
    if python and Path(python).is_file():
        return python
    why = (f"DFER_LLAMAFACTORY_PYTHON={python!r} is not a file" if python else
           "DFER_LLAMAFACTORY_PYTHON is not set (bash .ci/llamafactory-venv.sh, then set it to "
           ".ci-cache/llamafactory-venv/bin/python)")
    if os.environ.get("DFER_REQUIRE_LLAMAFACTORY") == "1":
        pytest.fail(f"the export must be loaded with LLaMA-Factory here (DFER_REQUIRE_LLAMAFACTORY=1) but {why}")
    pytest.skip(why)


def load_with_llamafactory(python: str, folder: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(ROOT / "tests" / "llamafactory_check.py"), str(folder), name,
                           shared_tiny_model_dir("qwen2vl")], capture_output=True, text=True, timeout=600,
                          cwd=folder.parent, env={**os.environ, "HF_DATASETS_CACHE": str(folder.parent / "hf-ds")})


@pytest.mark.parametrize("fmt", ["llamafactory", "sharegpt"])
def test_llamafactory_loads_the_export_and_trains_on_the_true_labels(scored, capsys, tmp_path, fmt):
    python = llamafactory_python()
    code, _, err = export(capsys, scored.run_dir, "--format", fmt, "-o", tmp_path / "ds")
    assert code == EXIT_OK, err
    done = load_with_llamafactory(python, tmp_path / "ds", "dfer_run")
    assert done.returncode == 0, done.stderr[-3000:]
    samples = json.loads(done.stdout.strip().splitlines()[-1])["samples"]
    ours = documented_schema(tmp_path / "ds", "dfer_run")
    assert [s["answer"] for s in samples] == [s["answer"] for s in ours] == list(TRUE.values())
    for got, exported in zip(samples, ours):  # each <image> became one image block of the Qwen2-VL template
        assert got["image_blocks"] == len(got["images"]) == len(exported["images"]) == exported["user"].count("<image>")
        assert got["images"] == [str(tmp_path / "ds" / p) for p in exported["images"]]
    # and the loader does refuse a sample whose placeholders and images differ in number
    data = tmp_path / "ds" / "dfer_run.json"
    broken = json.loads(data.read_text(encoding="utf-8"))
    broken[0]["images"] = broken[0]["images"][:-1]
    data.write_text(json.dumps(broken), encoding="utf-8")
    done = load_with_llamafactory(python, tmp_path / "ds", "dfer_run")
    assert done.returncode != 0 and "The number of images does not match the number of <image> tokens" in done.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_the_users_is_refused_and_left_as_it_is(scored, capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "dataset_info.json").write_text('{"my_data": {"file_name": "my.json"}}')
    before = snapshot(mine)
    code, out, err = export(capsys, scored.run_dir, "--format", "llamafactory", "-o", mine)
    assert code == EXIT_USAGE and out == ""
    assert err.strip() == (
        f"dfer: error: {mine} is not empty and was not written by `dfer export` (no dfer-export.json; it holds "
        "dataset_info.json, notes.txt). dfer writes a dataset only into a new or empty folder or into one of its own, "
        "so that no file of yours is removed or overwritten: give another folder (-o), or move what is there "
        "elsewhere first")
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left beside it
    (tmp_path / "a_file").write_text("x")
    code, _, err = export(capsys, scored.run_dir, "--format", "llamafactory", "-o", tmp_path / "a_file")
    assert code == EXIT_USAGE
    assert err.strip() == (f"dfer: error: -o {tmp_path / 'a_file'}: is a regular file, not a folder; give a folder (it "
                           "is made if missing)")
    assert (tmp_path / "a_file").read_text() == "x"
    code, _, err = export(capsys, scored.run_dir, "--format", "llamafactory", "-o", tmp_path / "a_file" / "ds")
    assert code == EXIT_USAGE
    assert err.strip() == (f"dfer: error: -o {tmp_path / 'a_file' / 'ds'}: {tmp_path / 'a_file'} is a file, so nothing "
                           "can be written below it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine"]


def test_an_earlier_export_is_replaced_whole_and_an_empty_folder_is_used(scored, capsys, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()  # empty: used
    assert export(capsys, scored.run_dir, "--format", "sharegpt", "-o", out)[0] == EXIT_OK
    (out / "images" / "stale.jpg").write_bytes(b"old")
    assert export(capsys, scored.run_dir, "--format", "llamafactory", "-o", out)[0] == EXIT_OK
    assert not (out / "images" / "stale.jpg").exists()
    assert json.loads((out / "dfer-export.json").read_text())["format"] == "llamafactory"
    assert len(documented_schema(out, "dfer_run")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_folder_that_is_not_a_run_is_refused_naming_what_it_lacks(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, out, err = export(capsys, tmp_path, "--format", "llamafactory")
    assert code == EXIT_USAGE and out == ""
    assert err.strip() == (f"dfer: error: {tmp_path / 'manifest.jsonl'} not found: is {tmp_path} a run directory "
                           "written by `dfer run`?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_template_edited_since_the_run_is_refused(scored, capsys, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    res = rerun(scored, tmp_path / "run", f"classify.prompt_dir={prompts}", until=None)  # classify scores with it
    assert export(capsys, res.run_dir, "--format", "llamafactory")[0] == EXIT_OK
    (prompts / "classify.j2").write_text((prompts / "classify.j2").read_text() + " Be brief.")
    before = snapshot(res.run_dir)  # with the export made before the edit
    code, _, err = export(capsys, res.run_dir, "--format", "llamafactory")
    assert code == EXIT_USAGE
    assert err.strip() == (f"dfer: error: {prompts / 'classify.j2'}: the template changed since the run built its "
                           "prompts with it (run a.mp4); the export would not hold the prompts the model was shown: "
                           "put the template back, or run `dfer run` again and then export")
    assert snapshot(res.run_dir) == before
    assert sorted(os.listdir(res.run_dir)) == sorted({p.split("/")[0] for p in before})


def test_a_label_outside_the_label_set_is_named(scored, capsys, tmp_path):
    copy = copy_run(scored.run_dir, tmp_path / "run")
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for r in rows:
        if r["video"] == "b.mp4":
            r["label"] = "elated"
    (copy / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(copy)
    code, _, err = export(capsys, copy, "--format", "sharegpt")
    assert code == EXIT_USAGE
    assert f"{copy / 'manifest.jsonl'} (clip b.mp4)" in err and "'elated'" in err
    assert "the label set is classify.labels=dfew" in err
    assert snapshot(copy) == before and sorted(os.listdir(copy)) == sorted({p.split("/")[0] for p in before})


@pytest.mark.parametrize("args, message", [
    (["--format", "llamafactory", "--name", "my data"], "--name 'my data': a dataset name of letters, digits"),
    (["--format", "llamafactory", "--name", "dataset_info"],
     "--name 'dataset_info': its file would be dataset_info.json, which the export writes for itself"),
    (["--frames", "--name", "x"], "--name names a dataset: use it with --format"),
])
def test_options_that_do_not_fit_are_refused(scored, capsys, args, message):
    code, _, err = export(capsys, scored.run_dir, *args)
    assert code == EXIT_USAGE and message in err


def test_format_and_frames_are_one_or_the_other(scored, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(scored.run_dir), "--frames", "--format", "sharegpt"])
    assert exc.value.code == EXIT_USAGE
    assert "argument --format: not allowed with argument --frames" in capsys.readouterr().err


def rerun(scored, out: Path, *overrides: str, until: str | None = "context"):
    """The run of ``scored``'s clips again with ``overrides`` (through context by default: all from its cache)."""
    model = shared_tiny_model_dir("qwen2vl")
    return run(scored.run_dir.parent / "in" / "list.csv", out, RunDir(scored.run_dir).cache().root,
               f"context.model.model={model}", "context.model.max_new_tokens=6", f"classify.model.model={model}",
               *overrides, until=until)


def test_a_run_through_context_exports_its_prompts_and_crops_resized_as_shown_are_png(scored, capsys, tmp_path):
    res = rerun(scored, tmp_path / "run", "classify.image_size=112")
    assert res.status == "complete"
    code, out, err = export(capsys, res.run_dir, "--format", "llamafactory")
    assert code == EXIT_OK, err
    samples = documented_schema(res.run_dir / "llamafactory", "dfer_run")
    assert {s["id"]: s["answer"] for s in samples} == TRUE
    rows = {r.video: r for r in RunDir(res.run_dir).manifest()}
    cache = RunDir(res.run_dir).cache()
    for s in samples:  # 112 px is not the stored 224: the resized crop the prompt shows, lossless
        track = FaceTrack.load(cache.get("faces", rows[s["id"]].artifacts["faces"]))
        frames = [int(Path(p).stem) for p in s["images"]]
        assert all(p.endswith(".png") for p in s["images"])
        for img, p in zip(track.crops(frames, size=112), s["images"]):
            assert np.array_equal(np.asarray(Image.open(res.run_dir / "llamafactory" / p).convert("RGB")), img)
    # the default folder is the run directory's: a new run into it removes the earlier run's dataset
    again = rerun(scored, res.run_dir, "classify.image_size=112")
    assert again.status == "complete" and not (res.run_dir / "llamafactory").exists()


def test_a_prompt_whose_text_holds_a_placeholder_is_left_out_and_an_empty_dataset_is_refused(scored, capsys, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    text = (prompts / "classify.j2").read_text()
    (prompts / "classify.j2").write_text(text.replace("Which emotion", "Ignore any <image> tag. Which emotion"))
    res = rerun(scored, tmp_path / "run", f"classify.prompt_dir={prompts}")
    code, out, err = export(capsys, res.run_dir, "--format", "llamafactory")
    assert code == EXIT_USAGE and out == ""
    note = ("a.mp4: left out: its prompt's text holds '<image>' 1 time(s) (in a summary or the template), which "
            "LLaMA-Factory would take for a placeholder")
    assert err.strip() == (f"dfer: error: {res.run_dir / 'manifest.jsonl'}: no clip to export: 1 clip(s) without a "
                           f"true label; 3 left out (first: {note}); nothing written")
    assert not (res.run_dir / "llamafactory").exists()


def test_a_clip_split_by_person_gives_its_subject_the_label_and_leaves_the_others_out(special_clips, capsys, tmp_path):
    copy_clip(special_clips["two"], tmp_path / "in", "two.mp4")
    (tmp_path / "in" / "list.csv").write_text("path,label\ntwo.mp4,sad\n")
    model = shared_tiny_model_dir("qwen2vl")
    res = run(tmp_path / "in" / "list.csv", tmp_path / "run", tmp_path / "cache", f"context.model.model={model}",
              "context.model.max_new_tokens=6", "faces.subjects=all", "faces.min_subject_s=0.1", until="context")
    rows = RunDir(res.run_dir).manifest()
    assert [r.unit for r in rows] == [{}, {"subject": 1}]
    code, out, err = export(capsys, res.run_dir, "--format", "sharegpt")
    assert code == EXIT_OK, err
    assert out.startswith("1 samples (sad 1), 4 images")
    assert "1 other person(s) of clips split by person left out (a clip's label names its subject)" in err
    (sample,) = documented_schema(res.run_dir / "sharegpt", "dfer_run")
    assert sample["id"] == "two.mp4" and sample["answer"] == "sad"
    track = FaceTrack.load(RunDir(res.run_dir).cache().get("faces", rows[0].artifacts["faces"]), 0)  # the subject's
    frames = [int(Path(p).stem) for p in sample["images"]]
    for img, p in zip(track.crops(frames, size=224), sample["images"]):
        assert np.array_equal(cv2.cvtColor(cv2.imread(str(res.run_dir / "sharegpt" / p)), cv2.COLOR_BGR2RGB), img)


def test_a_config_edited_since_the_run_is_refused(scored, capsys, tmp_path):
    copy = copy_run(scored.run_dir, tmp_path / "run")
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["classify"]["use_summaries"] = False
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(copy)
    code, _, err = export(capsys, copy, "--format", "sharegpt")
    assert code == EXIT_USAGE
    assert err.strip() == (f"dfer: error: {copy / 'config.yaml'} says classify.use_summaries=False but the run built "
                           "the prompt of a.mp4 with classify.use_summaries=None: the file was edited since the run; put "
                           "it back, or run `dfer run` again and then export")
    assert snapshot(copy) == before
