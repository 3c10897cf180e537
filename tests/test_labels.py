"""Label sets and readers of the official annotation formats (shared/datasets.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.eval.labels import (LabelError, LabelSet, load_label_set, match_labels, read_dfew_split,
                             read_ferv39k_split, read_label_csv, read_labels, read_mafw_split)


def _write(path: Path, text: str, encoding: str = "utf-8", crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(data.encode(encoding))
    return path


def test_builtin_sets_follow_official_order():
    assert load_label_set("dfew").names == ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    assert load_label_set("ferv39k").names == ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    assert load_label_set("mafw").names == ["anger", "disgust", "fear", "happiness", "neutral", "sadness",
                                            "surprise", "contempt", "anxiety", "helplessness", "disappointment"]
    dfew = load_label_set("dfew")
    assert [dfew.canonical(str(i)) for i in range(1, 8)] == dfew.names  # 1-based official ids
    assert dfew.canonical("HAPPINESS") == "happy" and dfew.index("Angry") == 3
    assert load_label_set("mafw").canonical("11") == "disappointment"


def test_user_yaml_and_duplicates(tmp_path):
    ok = _write(tmp_path / "mine.yaml", "name: mine\nlabels:\n  - name: joy\n    aliases: [Joy, glad]\n"
                                        "  - name: calm\n    description: no visible emotion\n")
    ls = load_label_set(ok)
    assert ls.names == ["joy", "calm"] and ls.canonical("GLAD") == "joy"
    assert ls.labels[1].extra == {"description": "no visible emotion"}

    dup_alias = _write(tmp_path / "dup.yaml", "name: x\nlabels:\n  - name: joy\n    aliases: [glad]\n"
                                              "  - name: calm\n    aliases: [Glad]\n")
    with pytest.raises(LabelError, match=r"dup\.yaml:6: duplicate label name/alias 'Glad' in label 'calm'.*'joy' at line 4"):
        load_label_set(dup_alias)
    dup_name = _write(tmp_path / "dupname.yaml", "name: x\nlabels:\n  - name: joy\n  - name: joy\n")
    with pytest.raises(LabelError, match=r"dupname\.yaml:4: duplicate .* 'joy'"):
        load_label_set(dup_name)
    with pytest.raises(LabelError, match="neither a built-in"):
        load_label_set("no-such-set")
    with pytest.raises(LabelError, match="duplicate label name"):
        LabelSet.from_names("x", ["a", "A"])


def test_read_label_csv_both_headers_and_unknown_label(tmp_path):
    ls = load_label_set("dfew")
    a = _write(tmp_path / "a.csv", "video,label\nclips/1.mp4,Happy\nclips/2.mp4,7\n", crlf=True)
    assert read_label_csv(a, ls) == {"clips/1.mp4": "happy", "clips/2.mp4": "fear"}
    b = _write(tmp_path / "b.csv", "\ufeffpath,label,extra\nx/y,sadness,1\n")
    assert read_label_csv(b, ls) == {"x/y": "sad"}
    bad = _write(tmp_path / "bad.csv", "video,label\na,happy\nb,joy\n")
    with pytest.raises(LabelError, match=r"bad\.csv:3: unknown label 'joy'"):
        read_label_csv(bad, ls)
    conflict = _write(tmp_path / "conflict.csv", "video,label\na,happy\na,sad\n")
    with pytest.raises(LabelError, match=r"conflict\.csv:3: 'a' is labelled 'sad'.*conflict\.csv:2"):
        read_label_csv(conflict, ls)
    with pytest.raises(LabelError, match="expected a header"):
        read_label_csv(_write(tmp_path / "nohead.csv", "a,happy\n"), ls)


@pytest.mark.parametrize("folder,name", [("test(single-labeled)", "set_2.csv"),
                                         ("test(single_labeled)", "set_2.csv"),
                                         ("test(single-labeled)", "test_set_2.csv")])
def test_read_dfew_split_folder_spellings(tmp_path, folder, name):
    _write(tmp_path / "EmoLabel_DataSplit" / folder / name, "video_name,label\n00001,1\n2,2\n16372,7\n", crlf=True)
    expected = {"00001": "happy", "00002": "sad", "16372": "fear"}
    assert read_dfew_split(tmp_path, fold=2, split="test") == expected
    assert read_dfew_split(tmp_path / "EmoLabel_DataSplit", 2, "test") == expected
    assert read_labels(tmp_path, "dfew", fold=2, split="test") == expected


def test_read_dfew_split_errors(tmp_path):
    f = _write(tmp_path / "set_1.csv", "video_name,label\n00001,1\n00003,0\n")
    with pytest.raises(LabelError, match=r"set_1\.csv:3: unknown label '0'"):
        read_dfew_split(f)
    with pytest.raises(LabelError, match="looked for"):
        read_dfew_split(tmp_path, fold=3, split="train")
    with pytest.raises(LabelError, match="fold must be 1..5"):
        read_dfew_split(tmp_path, fold=6, split="train")


def test_read_ferv39k_split(tmp_path):
    f = _write(tmp_path / "test_All.csv", "Crime/Angry/0063 Angry\nAction/Sad/0010 Sad\n\n", crlf=True)
    assert read_ferv39k_split(f) == {"Crime/Angry/0063": "angry", "Action/Sad/0010": "sad"}  # first line kept
    mismatch = _write(tmp_path / "m.csv", "Action/Sad/0010 Happy\n")
    with pytest.warns(UserWarning, match="differs from the emotion folder"):
        assert read_ferv39k_split(mismatch) == {"Action/Sad/0010": "happy"}
    bad = _write(tmp_path / "bad.csv", "Action/Sad/0010 Sad\nAction/Joy/0011 Joy\n")
    with pytest.raises(LabelError, match=r"bad\.csv:2: unknown label 'Joy'"):
        read_ferv39k_split(bad)


def test_read_mafw_no_caption_and_with_caption(tmp_path):
    plain = _write(tmp_path / "no_caption" / "test.txt", "00025.mp4 anger\n03747.mp4 helplessness\n", crlf=True)
    assert read_mafw_split(plain) == {"00025": "anger", "03747": "helplessness"}
    caption = ("03747.mp4\tanger\t一个男人对着面前的人激动地说话。\tA man speaks excitedly.\n"
               "00151.mp4\tcontempt\t她轻蔑地笑了。\tShe smiles with contempt.\n")
    gbk = _write(tmp_path / "with_caption" / "train.txt", caption, encoding="gbk", crlf=True)
    assert read_mafw_split(gbk) == {"03747": "anger", "00151": "contempt"}
    compound = _write(tmp_path / "compound.txt", "00025.mp4 anger\n00026.mp4 anger_disgust\n", crlf=True)
    with pytest.raises(LabelError, match=r"compound\.txt:2: unknown label 'anger_disgust'"):
        read_mafw_split(compound)


def test_read_mafw_folds_from_the_release_folders(tmp_path):
    tts = tmp_path / "MAFW" / "Train & Test Set"
    _write(tts / "single" / "no_caption" / "set_2" / "train.txt", "00025.mp4 anger\n", crlf=True)
    _write(tts / "single" / "no_caption" / "set_2" / "test.txt", "00151.mp4 contempt\n", crlf=True)
    for root in (tmp_path / "MAFW", tts, tts / "single" / "no_caption"):  # the dataset, the split folder, no_caption
        assert read_labels(root, "mafw", fold=2, split="train") == {"00025": "anger"}
        assert read_mafw_split(root, fold=2, split="test") == {"00151": "contempt"}
    with pytest.raises(LabelError, match=r"(?s)no MAFW test split for fold 3 under .*single/no_caption/set_3/test\.txt"):
        read_labels(tts, "mafw", fold=3, split="test")
    with pytest.raises(LabelError, match="MAFW fold must be 1..5, got None"):
        read_labels(tts, "mafw")


def test_match_labels_never_drops():
    ann = {"00025": "anger", "00026": "fear", "Action/Sad/0010": "sad", "Crime/Sad/0010": "sad",
           "Action/Happy/0011": "happy", "99999": "anger"}
    videos = ["clips/00025.mp4", "00026", "2_ClipsforFaceCrop/Action/Sad/0010", "0011", "0010", "nolabel.mp4"]
    with pytest.warns(UserWarning, match="several annotation ids"):
        m = match_labels(ann, videos)
    assert m.matched == {"clips/00025.mp4": "anger", "00026": "fear",
                         "2_ClipsforFaceCrop/Action/Sad/0010": "sad", "0011": "happy"}
    assert m.unlabeled_videos == ["0010", "nolabel.mp4"]  # "0010" is ambiguous: two scenes
    assert m.labels_without_video == ["99999", "Crime/Sad/0010"]
    matched, unlabeled, without = match_labels({"a/b.mp4": "x"}, ["a/b.mp4"])  # exact id
    assert matched == {"a/b.mp4": "x"} and unlabeled == [] and without == []
