"""Hostile inputs (issue 19): each asserts the exact outcome a user sees: the message names the file and the problem,
the exit code, nothing computed is lost, and no file outside the run and cache directories is touched.

Covered here: the run directory (a user's folder, the --config file, inputs inside the run directory, links, an
earlier dfer's run), paths of the wrong kind, numbers out of range, YAML (aliases, tags, huge values), prompt
templates (the sandbox), list files (extra fields, header case, the 'video' column, one file under several names),
FIFOs and devices, file names that are not UTF-8, video streams (default disposition, start offset) and the one
atomic writer. The viewer on big runs: tests/test_view.py (the paged page); the cache's own checks: the cache tests.
"""

from __future__ import annotations

import csv
import fractions
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.errors import InputError, LabelError, TemplateError
from pipeline.core.files import save_figure, write_atomic
from pipeline.core.video import VideoReader, to_rgb
from pipeline.engine.config import load_config
from pipeline.engine.inputs import discover
from pipeline.eval.labels import load_label_set
from pipeline.engine.rundir import MARKER, RunDir
from pipeline.engine.runner import Runner
from prompts import DIR as PROMPTS
from stages.templates import PromptRenderer
from tests.conftest import copy_clip
from tests.runs import failures, manifest, run

ROOT = Path(__file__).resolve().parent.parent
CAFE = os.fsdecode(b"caf\xe9.mp4")  # a file name from an old Latin-1 archive: not UTF-8


# ------------------------------------------------------------------------------------------ helpers


def cli(*args: str, capsys) -> tuple[int, str]:
    """``dfer ARGS`` in this process: (exit code, stderr); a run with one worker."""
    args = (*args, "--set", "run.workers=1") if args[0] == "run" else args
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: a usage error
        code = exc.code
    return code, capsys.readouterr().err


def dfer(*args, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``dfer ARGS`` in a child process (for what could hang: it is killed after ``timeout`` seconds)."""
    env = {**os.environ, "DFER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                          env=env, timeout=timeout)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and link below ``roots``: kind, size, modification time and content hash (a link: its target)."""
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            st = os.lstat(p)
            if p.is_symlink():
                out[os.fsdecode(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[os.fsdecode(p)] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[os.fsdecode(p)] = ("dir",)
    return out


def user_project(root: Path) -> Path:
    """A folder of a user's own files with the names a run writes, the config among them (with a comment)."""
    root.mkdir(parents=True)
    (root / "report.md").write_text("# My notes on the experiment\n")
    (root / "metrics.json").write_text('{"mine": true}\n')
    (root / "predictions.csv").write_text("video,prediction\nx.mp4,happy\n")
    (root / "config.yaml").write_text("# tuned by hand, keep this comment\nkeyframes:\n  k: 3\n")
    return root


@pytest.fixture
def one_clip(clip_dir, tmp_path) -> Path:
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "a.avi")
    return folder


# ------------------------------------------------------------------------------------------ the run directory


def test_a_folder_of_the_users_is_refused_and_nothing_in_it_is_touched(one_clip, tmp_path, capsys):
    project = user_project(tmp_path / "myproject")
    before = snapshot(project, one_clip)
    code, err = cli("run", one_clip, "--out", project, "--config", project / "config.yaml", "--cache",
                    tmp_path / "cache", "-q", capsys=capsys)
    assert code == 2
    assert f"{project} is not empty and is not a dfer run directory (no {MARKER}" in err
    assert "config.yaml, metrics.json, predictions.csv, report.md" in err and "give another folder" in err
    assert snapshot(project, one_clip) == before  # no file removed, overwritten or added (no marker either)
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_the_config_file_of_a_run_is_never_overwritten(one_clip, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)[0] == 0
    config = out / "config.yaml"
    config.write_text("# edited by hand after the run\n" + config.read_text())
    before = snapshot(out)
    code, err = cli("run", one_clip, "--out", out, "--config", config, "--cache", cache, "--until", "faces", "-q",
                    capsys=capsys)
    assert code == 2
    assert f"{config} is read by this run, but {config} is what the run writes or removes in {out}" in err
    assert "copy it elsewhere and give the copy" in err
    assert snapshot(out) == before


def test_a_list_file_inside_the_run_directory_is_never_removed(one_clip, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)[0] == 0
    listed = out / "predictions.csv"  # a list in predictions.csv's format (its 'video' column) where a run writes
    listed.write_text(f"video,label\n{one_clip / 'a.avi'},happy\n")
    before = snapshot(out)
    code, err = cli("run", listed, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)
    assert code == 2 and f"{listed} is read by this run" in err
    assert snapshot(out) == before


def test_an_earlier_dfers_run_directory_is_taken_over_and_other_files_stay(one_clip, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)[0] == 0
    (out / MARKER).unlink()  # as a dfer from before the marker left it
    (out / "notes.txt").write_text("mine")
    code, err = cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)
    assert code == 0
    assert f"{out}: a run directory of an earlier dfer version (no {MARKER}); marked as a dfer run directory" in err
    assert (out / MARKER).is_file() and (out / "notes.txt").read_text() == "mine"
    assert list(manifest(out)) == ["a.avi"]


def test_an_empty_folder_is_used_and_marked(one_clip, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli("run", one_clip, "--out", out, "--cache", tmp_path / "c", "--until", "faces", "-q", capsys=capsys)[0] == 0
    assert json.loads((out / MARKER).read_text())["dfer_run_directory"] == 1


def test_links_in_a_run_directory_are_replaced_and_never_followed(one_clip, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)[0] == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("victim.md", "victim.jsonl", "victim.json"):
        (outside / name).write_text(f"precious {name}\n")
    (outside / "figures").mkdir()
    (outside / "figures" / "keep.png").write_bytes(b"png")
    for name, target in (("report.md", "victim.md"), ("failures.jsonl", "victim.jsonl"), ("status.json", "victim.json"),
                         ("inspect", "figures")):
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(outside / target)
    before = snapshot(outside)
    assert cli("run", one_clip, "--out", out, "--cache", cache, "--until", "faces", "-q", capsys=capsys)[0] == 0
    assert snapshot(outside) == before
    assert not (out / "report.md").exists() and not (out / "inspect").exists()
    assert not (out / "failures.jsonl").is_symlink() and not (out / "status.json").is_symlink()


# ------------------------------------------------------------------------------------------ paths and numbers


@pytest.mark.parametrize("case", ["out is a file", "cache is a file", "config is a folder", "config is a FIFO",
                                  "view -o is a folder", "inspect -o is a folder", "report --out is a file",
                                  "train counts is a folder", "input is a FIFO", "config is /dev/zero"])
def test_a_path_of_the_wrong_kind_is_named_before_any_work(case, one_clip, tmp_path, capsys):
    a_file, a_folder = tmp_path / "a_file", tmp_path / "a_folder"
    a_file.write_text("mine\n")
    a_folder.mkdir()
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    args, option, where, what = {
        "out is a file": (("run", one_clip, "--out", a_file), "--out", a_file, "is a regular file, not a folder"),
        "cache is a file": (("run", one_clip, "--out", run_dir, "--cache", a_file), "--cache", a_file,
                            "is a regular file, not a folder"),
        "config is a folder": (("run", one_clip, "--out", run_dir, "--config", a_folder), "--config", a_folder,
                               "is a folder, not a file"),
        "config is a FIFO": (("config", "show", "--config", fifo), "--config", fifo,
                             "is a FIFO (named pipe), not a file"),
        "view -o is a folder": (("view", run_dir, "-o", a_folder), "-o", a_folder, "is a folder; give the name of a file"),
        "inspect -o is a folder": (("inspect", run_dir, "x.mp4", "-o", a_folder), "-o", a_folder,
                                   "is a folder; give the name of a file"),
        "report --out is a file": (("report", run_dir, "--out", a_file), "--out", a_file, "is a regular file, not a folder"),
        "train counts is a folder": (("report", run_dir, "--train-counts", a_folder), "--train-counts", a_folder,
                                     "is a folder, not a file"),
        "input is a FIFO": (("run", tmp_path / "pipe.yaml", "--out", run_dir), "input", fifo,
                            "is a FIFO (named pipe), not a file or a folder"),
        "config is /dev/zero": (("config", "show", "--config", "/dev/zero"), "--config", Path("/dev/zero"),
                                "is a character device, not a file"),
    }[case]
    before = snapshot(a_file, a_folder, run_dir)
    code, err = cli(*args, capsys=capsys)
    assert code == 2
    assert f"argument {option}" in err and f"{where}: {what}" in err
    assert snapshot(a_file, a_folder, run_dir) == before


@pytest.mark.parametrize("args, message", [
    (("config", "show", "--set", "faces.thresholds=[0.6,1.5,0.7]"),
     "bad value for 'faces.thresholds' (--set): Value error, each threshold must be in [0, 1]"),
    (("config", "show", "--set", "faces.min_score=.nan"), "bad value for 'faces.min_score'"),
    (("config", "show", "--set", "keyframes.smooth_s=.inf"),
     "bad value for 'keyframes.smooth_s' (--set): a number must be finite; got inf"),
    (("config", "show", "--set", "classify.dense_fps=nan"), "bad value for 'classify.dense_fps'"),
    (("report", ".", "--tau", "nan"), "argument --tau: expected a finite number >= 0, got 'nan'"),
    (("report", ".", "--tau", "inf"), "argument --tau: expected a finite number >= 0, got 'inf'"),
    (("report", ".", "--tau", "-1"), "argument --tau: expected a finite number >= 0, got '-1'"),
    (("report", ".", "--fold", "2.5"), "argument --fold: expected an integer in [1, 5], got '2.5'"),
    (("view", ".", "--fold", "6"), "argument --fold: expected an integer in [1, 5], got '6'"),
    (("compare", ".", "--tau", "nan"), "argument --tau: expected a finite number >= 0, got 'nan'"),
])
def test_a_number_out_of_range_is_named(args, message, capsys):
    code, err = cli(*args, capsys=capsys)
    assert code == 2 and message in err


def test_a_tau_sweep_with_nan_is_named(tmp_path, capsys):
    from tests.test_report import make_run

    make_run(tmp_path / "run")
    code, err = cli("report", tmp_path / "run", "--tau-sweep", "0,nan,1", capsys=capsys)
    assert code == 2 and "--tau-sweep expects finite numbers >= 0 separated by commas, got '0,nan,1'" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ YAML and config


def billion_laughs(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\nfaces:\n  thresholds: *l8\n"


def test_a_billion_laughs_config_is_refused_at_once_with_a_short_message(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 700
    t0 = time.perf_counter()
    code, err = cli("config", "show", "--config", bomb, capsys=capsys)
    assert time.perf_counter() - t0 < 10  # it grew past 3 GB before
    assert code == 2 and len(err) < 500
    assert f"config file {bomb}: its YAML aliases expand to more than 100,000 values" in err


def test_a_recursive_alias_and_a_python_tag_are_refused(tmp_path, capsys):
    loop = tmp_path / "loop.yaml"
    loop.write_text("faces: &a\n  x: *a\n")
    code, err = cli("config", "show", "--config", loop, capsys=capsys)
    assert code == 2 and f"config file {loop}: a YAML alias refers to a node that contains it" in err
    marker = tmp_path / "pwned"
    tag = tmp_path / "tag.yaml"
    tag.write_text(f'faces: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, err = cli("config", "show", "--config", tag, capsys=capsys)
    assert code == 2 and f"config file {tag} is not valid YAML: could not determine a constructor" in err
    assert not marker.exists()


def test_a_config_error_quotes_a_bounded_excerpt_of_the_value(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("keyframes:\n  k: " + "x" * 1_000_000 + "\n")
    code, err = cli("config", "show", "--config", big, capsys=capsys)
    assert code == 2 and len(err) < 800
    assert "bad value for 'keyframes.k'" in err and "(999800 more characters)" in err


def test_a_config_file_of_megabytes_is_refused_unread(tmp_path, capsys):
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (11 << 20) + "\n")
    code, err = cli("config", "show", "--config", huge, capsys=capsys)
    assert code == 2 and f"config file {huge} is 12 MB; a YAML file dfer reads holds a few KB" in err


# ------------------------------------------------------------------------------------------ templates


def evil_prompts(root: Path, template: str, payload: str) -> Path:
    """A copy of the built-in prompt folder whose ``template`` starts with ``payload``."""
    root.mkdir(parents=True)
    for p in PROMPTS.glob("*.j2"):
        (root / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    (root / template).write_text(payload + (root / template).read_text(encoding="utf-8"), encoding="utf-8")
    return root


@pytest.mark.parametrize("payload, why", [
    ("{{ cycler.__init__.__globals__.os.system('touch {marker}') }}", "access to attribute '__init__'"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "access to attribute '__class__'"),
    ("{{ lipsum.__globals__['os'].system('touch {marker}') }}", "access to attribute '__globals__'"),
    ("{{ 'x' * 1000000000 }}", "may not build a value of more than 100000 items"),
])
def test_a_template_that_reaches_outside_the_sandbox_stops_the_run_before_any_clip(payload, why, one_clip, tmp_path,
                                                                                   capsys):
    marker = tmp_path / "pwned"
    prompts = evil_prompts(tmp_path / "prompts", "classify.j2", payload.replace("{marker}", str(marker)))
    code, err = cli("run", one_clip, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "-q",
                    "--set", f"classify.prompt_dir={prompts}", "--set", "classify.model.backend=expression",
                    capsys=capsys)
    assert code == 2
    assert f"{prompts / 'classify.j2'}: the template tried something a prompt template may not do" in err and why in err
    assert not marker.exists() and not (tmp_path / "run").exists() and not (tmp_path / "cache" / "faces").exists()


def test_templates_of_a_captioner_that_reads_no_prompt_are_not_rendered(one_clip, tmp_path):
    marker = tmp_path / "pwned"
    prompts = evil_prompts(tmp_path / "prompts", "caption.j2", "{% if %}broken{{ cycler.__init__ }}")
    cfg = load_config(None, [f"context.prompt_dir={prompts}", "context.model.backend=expression",
                             "classify.model.backend=expression"])
    assert Runner(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", log=io.StringIO()).check(discover(one_clip)) is None
    with pytest.raises(TemplateError, match=re.escape(f"{prompts / 'caption.j2'}:1: template syntax error")):
        PromptRenderer(str(prompts), "caption.j2")  # what a captioner that reads prompts would meet
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ list files


def test_a_row_with_an_unquoted_comma_is_named_by_line(tmp_path, capsys):
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\na.mp4,happy\nsmith, john.mp4,sad\n")
    code, err = cli("run", lst, "--out", tmp_path / "run", capsys=capsys)
    assert code == 2
    assert (f"{lst}:3: 3 fields but the header has 2 columns (a comma inside a path or a label? put that field in "
            'double quotes: "a, b.mp4")') in err
    assert not (tmp_path / "run").exists()


def test_header_case_and_the_video_column_of_predictions_csv_are_accepted(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "upper.csv").write_text("Path,LABEL\na.mp4,happy\nb.mp4,sad\n")
    (tmp_path / "pred.csv").write_text("video,prediction,p_happy,p_sad,label,model\na.mp4,sad,0.4,0.6,happy,m\n")
    assert [(r.id, r.label) for r in discover(tmp_path / "upper.csv")] == [("a.mp4", "happy"), ("b.mp4", "sad")]
    assert [(r.id, r.label) for r in discover(tmp_path / "pred.csv")] == [("a.mp4", "happy")]
    (tmp_path / "twice.csv").write_text("path,Path\na.mp4,b.mp4\n")
    with pytest.raises(InputError, match=r"twice\.csv:1: the header names the column 'path' 2 times"):
        discover(tmp_path / "twice.csv")


def test_a_field_too_large_for_csv_is_named(tmp_path):
    lst = tmp_path / "list.csv"
    lst.write_text('path,label\na.mp4,"' + "x" * 200_000 + '"\n')
    with pytest.raises(InputError, match=r"list\.csv:2: not a CSV row dfer can read \(field larger than field limit"):
        discover(lst)


def one_file_four_names(tmp_path: Path, labels: tuple[str, ...]) -> tuple[Path, list[str]]:
    """A list (in lists/) naming one file of data/ four ways: relative, through sub/.., by a hard link, absolute."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "x.mp4").write_bytes(b"the same bytes")
    os.link(data / "x.mp4", data / "hard.mp4")
    lst = tmp_path / "lists" / "list.csv"
    lst.parent.mkdir()
    names = ["../data/x.mp4", "../data/sub/../x.mp4", "../data/hard.mp4", str(data / "x.mp4")]
    lst.write_text("path,label\n" + "".join(f"{n},{lab}\n" for n, lab in zip(names, labels)))
    return lst, names[:3] + [str(data / "x.mp4").lstrip("/")]


def test_one_file_under_four_names_with_different_labels_is_refused_naming_the_rows(tmp_path):
    lst, ids = one_file_four_names(tmp_path, ("happy", "sad", "angry", "fear"))
    with pytest.raises(InputError) as err:
        discover(lst)
    rows = ", ".join(f"'{vid}' ({lst}:{line})" for line, vid in enumerate(ids, 2))
    assert str(err.value) == (f"one file is listed under 4 names with different labels: {rows}, labelled angry, fear, "
                              "happy, sad; keep one row per file")


def test_one_file_under_four_names_with_one_label_is_one_clip(tmp_path):
    lst, ids = one_file_four_names(tmp_path, ("happy", "happy", "", "happy"))
    with pytest.warns(UserWarning, match=r"one file is listed under 4 names: .*; it is one clip, '\.\./data/x\.mp4'"):
        refs = discover(lst)
    assert [(r.id, r.label) for r in refs] == [("../data/x.mp4", "happy")]


def test_a_linked_copy_in_a_folder_is_one_clip(clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "a.avi")
    (folder / "b.avi").symlink_to(folder / "a.avi")
    with pytest.warns(UserWarning, match="one file is listed under 2 names: 'a.avi', 'b.avi'"):
        assert [r.id for r in discover(folder)] == ["a.avi"]


# ------------------------------------------------------------------------------------------ FIFOs and devices


def test_fifos_and_devices_in_a_folder_are_left_out_and_never_opened(one_clip, tmp_path):
    os.mkfifo(one_clip / "pipe.mp4")
    (one_clip / "zero.mp4").symlink_to("/dev/zero")
    (one_clip / "null.mkv").symlink_to("/dev/null")
    proc = dfer("run", one_clip, "--out", tmp_path / "run", "--until", "faces", "-q", cache=tmp_path / "cache",
                timeout=300)  # it hung before
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    for name, kind in (("pipe.mp4", "a FIFO (named pipe)"), ("zero.mp4", "a character device"),
                       ("null.mkv", "a character device")):
        assert f"dfer: warning: {one_clip / name}: is {kind}, not a video file; left out (never opened)" in err
    assert list(manifest(tmp_path / "run")) == ["a.avi"]


def test_a_fifo_named_in_a_list_fails_as_that_clip_without_waiting(clip_dir, tmp_path):
    copy_clip(clip_dir["odd.avi"], tmp_path, "a.avi")
    os.mkfifo(tmp_path / "pipe.mp4")
    lst = tmp_path / "list.csv"
    lst.write_text("path\na.avi\npipe.mp4\n")
    proc = dfer("run", lst, "--out", tmp_path / "run", "--until", "faces", "-q", cache=tmp_path / "cache", timeout=300)
    assert proc.returncode == 1, proc.stderr.decode()
    assert failures(tmp_path / "run") == [{
        "video": "pipe.mp4", "stage": "input", "error": "UnreadableFileError",
        "message": f"{tmp_path / 'pipe.mp4'}: is a FIFO (named pipe), not a video file (never opened)"}]


# ------------------------------------------------------------------------------------------ names that are not UTF-8


def test_a_name_that_is_not_utf8_is_carried_through_every_output(clip_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, CAFE)
    bad = os.fsdecode(b"na\xefve.mp4")
    (folder / bad).write_text("not a video")
    out, cache = tmp_path / "run", tmp_path / "cache"
    before = snapshot(folder)
    res = run(folder, out, cache)  # classify falls back to the embedded model: no VLM weights here
    assert res.n_clips == 2 and res.n_failed == 1
    for name in ("manifest.jsonl", "failures.jsonl", "scores.jsonl", "status.json", "predictions.csv"):
        (out / name).read_text(encoding="utf-8")  # valid UTF-8
    assert set(manifest(out)) == {CAFE, bad}  # the exact names, back from \udcXX escapes
    assert manifest(out)[CAFE]["path"] == os.fsdecode(folder / CAFE) and os.path.isfile(manifest(out)[CAFE]["path"])
    assert "caf\\udce9.mp4" in (out / "manifest.jsonl").read_text(encoding="utf-8")
    [row] = failures(out)
    assert row["video"] == bad and row["error"] == "NotAVideoError" and "na\\xefve.mp4" in row["message"]
    with open(out / "predictions.csv", encoding="utf-8") as f:
        assert [r["video"] for r in csv.DictReader(f)] == ["caf\\xe9.mp4"]
    assert cli("view", out, capsys=capsys)[0] == 0
    page = (out / "view.html").read_text(encoding="utf-8")
    assert '"id":"caf\\\\xe9.mp4"' in page and '"id":"na\\\\xefve.mp4"' in page
    assert cli("inspect", out, "caf\\xe9.mp4", capsys=capsys)[0] == 0  # the name as messages show it
    assert (out / "inspect" / f"{CAFE}.png").is_file()
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []
    assert snapshot(folder) == before


def test_a_list_file_may_name_a_file_as_messages_show_it(clip_dir, tmp_path):
    copy_clip(clip_dir["odd.avi"], tmp_path, CAFE)
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\ncaf\\xe9.mp4,happy\n", encoding="utf-8")
    [ref] = discover(lst)
    assert ref.path == tmp_path / CAFE and ref.id == CAFE and ref.label == "happy"


# ------------------------------------------------------------------------------------------ video streams


def _two_streams(path: Path, default: int) -> None:
    """Two video streams: 0 is 128x96 red, 1 is 96x64 blue; ``default`` has the default disposition."""
    with av.open(str(path), "w") as c:
        streams = []
        for i, (w, h) in enumerate(((128, 96), (96, 64))):
            s = c.add_stream("mpeg4", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.disposition = av.stream.Disposition.default if i == default else av.stream.Disposition(0)
            streams.append(s)
        for n in range(10):
            for i, s in enumerate(streams):
                rgb = np.zeros((s.height, s.width, 3), np.uint8)
                rgb[..., 0 if i == 0 else 2] = 200
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = n, fractions.Fraction(1, 25)
                for p in s.encode(frame):
                    c.mux(p)
        for s in streams:
            for p in s.encode():
                c.mux(p)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_video_stream_read_is_the_one_ffmpeg_maps(suffix, tmp_path):
    second = tmp_path / f"second{suffix}"
    _two_streams(second, default=1)
    with VideoReader(second) as r:
        _, frame = next(r.frames())
        rgb = to_rgb(frame, 0)
        assert (r.stream.index, r.info.width, r.info.height) == (1, 96, 64)
        assert rgb[..., 2].mean() > 150 and rgb[..., 0].mean() < 50  # blue: the default stream, not the larger red one
    first = tmp_path / f"first{suffix}"
    _two_streams(first, default=0)
    with VideoReader(first) as r:
        assert (r.stream.index, r.info.width) == (0, 128)


def _offset_copy(src: Path, dst: Path, seconds: float) -> None:
    """``src``'s video packets in a Matroska file, every timestamp ``seconds`` later (a recording's start time)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        shift = int(seconds / s_in.time_base)
        for pkt in inp.demux(s_in):
            if pkt.dts is None:
                continue
            pkt.pts, pkt.dts, pkt.stream = pkt.pts + shift, pkt.dts + shift, s_out
            out.mux(pkt)


def test_a_start_offset_of_a_day_is_not_called_truncated(clip_dir, tmp_path):
    clip = tmp_path / "in" / "late.mkv"
    clip.parent.mkdir()
    _offset_copy(clip_dir["pan.mp4"].path, clip, 86400.0)
    with av.open(str(clip)) as c:
        assert c.start_time / 1e6 == pytest.approx(86400, abs=1) and c.duration / 1e6 > 86400  # counted from zero
    with VideoReader(clip) as r:
        assert r.info.header_duration == pytest.approx(2.0, abs=0.1)
    res = run(clip.parent, tmp_path / "run", tmp_path / "cache", until="faces")
    assert res.n_failed == 0, failures(tmp_path / "run")


# ------------------------------------------------------------------------------------------ the one atomic writer

WRITE = re.compile(r"\.savefig\(|\.write_text\(|\.write_bytes\(|\bopen\([^)]*[\"'][wax]b?[\"']|\.open\([\"'][wax]|"
                   r"json\.dump\(|np\.save|save_file\(|torch\.save\(|to_csv\(|\.tofile\(")
FOLDER_TAG = "(in a folder renamed into place)"
ARTIFACT_WRITERS = {"pipeline/core/cache.py"}  # the cache's artifact folder: built in a temporary folder, renamed


def test_every_whole_file_write_goes_through_the_one_atomic_writer():
    """A whole file is written by :mod:`pipeline.core.files` only. Exceptions, each visible in the code: files a
    stage writes into its artifact's temporary folder (``out.path(...)``, the cache's ``ArtifactWriter``), files
    written into another folder that is renamed into place as a whole (tagged with a comment), and files written
    row by row on purpose (``open_stream``, which is in pipeline/core/files.py)."""
    offenders = []
    for path in sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "pipeline/core/files.py" or rel in ARTIFACT_WRITERS:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for no, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            if not WRITE.search(code):
                continue
            tagged = FOLDER_TAG in line or FOLDER_TAG in (lines[no] if no < len(lines) else "") \
                or "atomic_path(" in lines[no - 2]  # the block that renames the temporary file into place
            in_artifact = rel.startswith("stages/") and "out.path(" in code
            if not (tagged or in_artifact):
                offenders.append(f"{rel}:{no}: {line.strip()}")
    assert offenders == [], "write these through pipeline.core.files (write_atomic, write_json, save_figure):\n" + \
        "\n".join(offenders)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "report.md"
    write_atomic(target, "old\n")

    class Broken:
        def savefig(self, path, **kwargs):
            Path(path).write_text("half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_figure(Broken(), tmp_path / "report.md")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "caf\udce9")  # text that cannot be UTF-8: nothing replaced, nothing left
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_the_run_directory_names_every_file_it_holds(one_clip, tmp_path, capsys):
    """After run, report, view and inspect, every file in the run directory is one rundir names."""
    from pipeline.engine.rundir import RUN_FILES, RUN_OUTPUT_DIRS

    out = tmp_path / "run"
    run(one_clip, out, tmp_path / "cache")
    for args in (("report", out), ("view", out), ("inspect", out, "a.avi")):
        assert cli(*args, capsys=capsys)[0] == 0
    top = {p.name for p in out.iterdir()}
    assert top <= set(RUN_FILES) | set(RUN_OUTPUT_DIRS)
    assert {"report.md", "metrics.json", "view.html", "inspect", MARKER} <= top
    assert RunDir(out).inspect_figure("a.avi") == out / "inspect" / "a.avi.png"


# ------------------------------------------------------------------------------------------ the report


@pytest.mark.parametrize("counts, message", [
    ({"happy": 12.5}, "happy: a count must be a whole number >= 0, got 12.5"),
    ({"happy": "many"}, "happy: a count must be a whole number >= 0, got 'many'"),
    ({"happy": -3}, "happy: a count must be a whole number >= 0, got -3"),
    ([1, 2, 3, 4, 5, 6, None], "entry 7: a count must be a whole number >= 0, got None"),
    ("just words", "expected a mapping label: count (or a list of counts in label order), got str"),
])
def test_training_counts_that_are_not_whole_numbers_are_named(counts, message, tmp_path, capsys):
    from tests.test_report import make_run

    make_run(tmp_path / "run")
    path = tmp_path / "counts.yaml"
    path.write_text(json.dumps(counts))
    before = snapshot(tmp_path / "run")
    code, err = cli("report", tmp_path / "run", "--calibration", "prior", "--train-counts", path, capsys=capsys)
    assert code == 2 and f"training counts {path}: {message}" in err
    assert snapshot(tmp_path / "run") == before  # no report written from half-read counts


def test_the_markdown_report_escapes_what_it_copies_from_the_inputs(tmp_path):
    from pipeline.report import write_report
    from tests.test_report import make_run

    make_run(tmp_path / "run")
    run_dir = RunDir(tmp_path / "run")
    evil = "a|b`c\n# heading <img src=x onerror=alert(1)> [x](javascript:alert(1)) *bold*"
    rows = [row for _, row in run_dir.failures()]
    with run_dir.failure_log() as log:
        for row in rows:
            log.write(row)
        log.write({"video": evil + ".mp4", "stage": "faces", "error": "NoFaceError", "message": evil})
    write_report(run_dir.path)
    text = (run_dir.path / "report.md").read_text(encoding="utf-8")
    outside_code = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text)  # code spans show markup as text
    assert re.search(r"(?<!\\)<img", outside_code) is None and "\n# heading" not in text
    assert re.search(r"(?<!\\)\]\(javascript", outside_code) is None
    assert "``a\\|b`c # heading <img src=x onerror=alert(1)> [x](javascript:alert(1)) *bold*.mp4``" in text
    assert ("a\\|b\\`c \\# heading \\<img src=x onerror=alert(1)\\> \\[x\\](javascript:alert(1)) \\*bold\\*"
            in text)  # the message, as text
    for line in text.splitlines():  # every table row still has its columns
        if line.startswith("|"):
            header_cells = len(re.split(r"(?<!\\)\|", line)) - 2
            assert header_cells >= 2, line
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    for block in tables:
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in block.splitlines() if row.startswith("|")}
        assert len(widths) == 1, block


def test_a_label_set_of_nested_aliases_is_refused(tmp_path):
    bomb = tmp_path / "labels.yaml"
    bomb.write_text("name: bomb\nlabels:\n  - name: happy\n    extra: &a [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"    e{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 10)}]\n" for i in range(8)))
    with pytest.raises(LabelError, match=re.escape(f"{bomb}: its YAML aliases expand to more than 100,000 values")):
        load_label_set(bomb)


def test_two_copies_with_different_labels_are_two_clips_and_said_so(clip_dir, tmp_path):
    for name in ("a.avi", "copy.avi"):
        copy_clip(clip_dir["odd.avi"], tmp_path, name)
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\na.avi,happy\ncopy.avi,Sadness\n")  # an alias of sad
    log = io.StringIO()
    run(lst, tmp_path / "run", tmp_path / "cache", until="faces", log=log)
    assert (f"warning: 'a.avi' ({lst}:2), 'copy.avi' ({lst}:3) have the same content but the labels happy, sad; each "
            "is scored and reported with its own label") in log.getvalue()
    assert list(manifest(tmp_path / "run")) == ["a.avi", "copy.avi"]
