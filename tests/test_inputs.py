"""Inputs: folders, CSV lists, single files, shards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.engine.inputs import InputError, discover, parse_shard, shard_of


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_is_recursive_and_ids_are_relative(tmp_path):
    for rel in ("a.mp4", "sub/b.MOV", "sub/deeper/c.webm", "notes.txt", ".hidden/d.mp4", "sub/.e.mp4"):
        _touch(tmp_path / rel)
    refs = discover(tmp_path)
    assert [r.id for r in refs] == ["a.mp4", "sub/b.MOV", "sub/deeper/c.webm"]
    assert refs[1].path == tmp_path / "sub" / "b.MOV"


def test_csv_list_resolves_relative_paths_and_reads_labels(tmp_path):
    _touch(tmp_path / "data" / "x.mp4")
    lst = tmp_path / "lists" / "l.csv"
    lst.parent.mkdir()
    lst.write_text("path,label\n../data/x.mp4,happy\n/abs/y.mp4,\n")
    refs = discover(lst)
    assert refs[0].path == lst.parent / "../data/x.mp4" and refs[0].label == "happy"
    assert refs[1].label is None and refs[1].id == "abs/y.mp4"


def test_csv_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.mp4,happy\n")
    with pytest.raises(InputError, match=r"bad\.csv: a list file needs a header row with a 'path' column"):
        discover(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("path\na.mp4\nb.mp4\na.mp4\n")
    with pytest.raises(InputError, match=r"dup\.csv:4: 'a\.mp4' is listed twice \(first on line 2\)"):
        discover(dup)


def test_single_file_missing_input_and_empty_folder(tmp_path):
    f = _touch(tmp_path / "one.mkv")
    assert [r.id for r in discover(f)] == ["one.mkv"]
    with pytest.raises(InputError, match="input not found"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files under"):
        discover(tmp_path / "empty")


def test_shards_are_deterministic_and_cover_everything():
    ids = [f"clip{i}.mp4" for i in range(200)]
    parts = [[v for v in ids if shard_of(v, 4) == i] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(20 < len(p) < 80 for p in parts)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_a_list_file_that_is_not_utf8_is_named_with_its_encoding(tmp_path):
    _touch(tmp_path / "a.mp4")
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\na.mp4,happy\n", encoding="utf-16")  # a spreadsheet's "Unicode text"
    with pytest.raises(InputError, match=r"list\.csv: the list file is UTF-16 text.*save it as 'CSV UTF-8'"):
        discover(lst)
    lst.write_bytes("path,label\na.mp4,fröhlich\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"list\.csv: the list file is not UTF-8 text \(byte 0xf6"):
        discover(lst)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(lst), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "list.csv: the list file is not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_labels_outside_the_label_set_stop_the_run_before_any_clip(tmp_path):
    from pipeline.core.errors import LabelError
    from tests.runs import run

    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "b.mp4")
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\na.mp4,Happy\nb.mp4,joyful\n")
    with pytest.raises(LabelError, match=r"list\.csv:3: unknown label 'joyful' for label set 'dfew'.*known labels: happy"):
        run(lst, tmp_path / "run", tmp_path / "cache")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    # the model-free stages do not score labels: a run that stops before classify does not check them
    res = run(lst, tmp_path / "run2", tmp_path / "cache", until="faces")
    assert res.n_failed == 2  # the one-byte files fail as clips, not the run as a label error


def test_csv_list_written_on_windows_uses_its_folders(tmp_path):
    _touch(tmp_path / "Train" / "clip 1.mp4")
    lst = tmp_path / "l.csv"
    lst.write_text("path,label\nTrain\\clip 1.mp4,happy\n")
    ref = discover(lst)[0]
    assert ref.id == "Train/clip 1.mp4" and ref.path == tmp_path / "Train" / "clip 1.mp4"


def test_a_linked_dataset_folder_is_followed_once(tmp_path):
    _touch(tmp_path / "store" / "DFEW" / "1.mp4")
    root = tmp_path / "clips"
    _touch(root / "own.mp4")
    (root / "dfew").symlink_to(tmp_path / "store" / "DFEW", target_is_directory=True)
    (root / "dfew_again").symlink_to(root, target_is_directory=True)  # a link back up does not loop
    assert [r.id for r in discover(root)] == ["dfew/1.mp4", "own.mp4"]
