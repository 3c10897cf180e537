"""dfer folds: a small labelled dataset split into folds in the official split-file formats (DFEW's CSVs, MAFW's
txt files), built here; per fold optional fine-tuning (a tiny random Qwen2-VL), the run over its test clips, the
report with the fold's training counts as the prior; the summary equals `dfer compare --folds` of the fold runs;
a `dfer folds` process killed in the middle of a fold resumes; folds whose training and test clips overlap stop
before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.backends.adapter import adapter_hash, training_clips
from pipeline.cli import main
from pipeline.engine.rundir import RunDir
from pipeline.protocols.folds import run_folds
from tests import media
from tests.tiny_models import shared_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
DFEW = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
# six clips; fold 1 tests on 1-3 and trains on 4-6, fold 2 the other way round
LABELS = {"00001": "happy", "00002": "happy", "00003": "sad", "00004": "happy", "00005": "sad", "00006": "sad"}
FOLDS = {1: (["00004", "00005", "00006"], ["00001", "00002", "00003"]),
         2: (["00001", "00002", "00003"], ["00004", "00005", "00006"])}
MAFW_WORDS = {"happy": "happiness", "sad": "sadness"}
TRAIN = ["finetune.epochs=1", "finetune.samples_per_epoch=2", "finetune.batch_size=2", "finetune.grad_accum=1",
         "finetune.lora_r=4", "finetune.warmup_ratio=0", "finetune.val_fraction=0.34", "finetune.eval_at_start=false"]


def models() -> list[str]:
    return ["context.model.backend=expression", f"classify.model.model={shared_tiny_model_dir('qwen2vl')}",
            "run.workers=1", "run.progress=false"]


def write_dfew_splits(root: Path, folds=FOLDS, labels=LABELS) -> Path:
    """DFEW's layout: EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv, ``video_name,label`` with the
    1-based label numbers and the ids unpadded, as pandas writes them, CRLF."""
    for k, (train, test) in folds.items():
        for split, ids in (("train", train), ("test", test)):
            d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
            d.mkdir(parents=True, exist_ok=True)
            rows = "".join(f"{int(v)},{DFEW.index(labels[v]) + 1}\r\n" for v in ids)
            (d / f"set_{k}.csv").write_text("video_name,label\r\n" + rows, newline="")
    return root / "EmoLabel_DataSplit"


def write_mafw_splits(root: Path) -> Path:
    """MAFW's layout: Train & Test Set/single/no_caption/set_<k>/{train,test}.txt, ``00025.mp4 anger``, CRLF."""
    for k, (train, test) in FOLDS.items():
        d = root / "Train & Test Set" / "single" / "no_caption" / f"set_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for split, ids in (("train", train), ("test", test)):
            (d / f"{split}.txt").write_text("".join(f"{v}.mp4 {MAFW_WORDS[LABELS[v]]}\r\n" for v in ids), newline="")
    return root / "Train & Test Set"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds-data")
    motions = ["pan", "zoom", "static"]
    (root / "Clip").mkdir()
    for i, vid in enumerate(LABELS):
        media.make_face_clip(root / "Clip" / f"{vid}.mp4", motion=motions[i % 3], seconds=1.0, seed=40 + i)
    return {"clips": root / "Clip", "dfew": write_dfew_splits(root / "DFEW"), "mafw": write_mafw_splits(root / "MAFW"),
            "cache": root / "cache"}


def _folds_cmd(dataset, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "folds", str(dataset["clips"]), "--splits", str(dataset["dfew"]),
            "--protocol", "dfew", "--out", str(out), "--folds", "1-2", "--cache", str(dataset["cache"]), "-q",
            "--prior-smoothing", "1",
            *(a for s in [*models(), *TRAIN] for a in ("--set", s)), *extra]


def _compare_folds(capsys, dirs) -> str:
    capsys.readouterr()
    assert main(["compare", "--folds", *map(str, dirs)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def finetuned(dataset, tmp_path_factory):
    """`dfer folds --finetune` in a process killed (SIGKILL) while fold 2 runs its test clips, then the same command
    again."""
    out = tmp_path_factory.mktemp("folds-ft") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = out.parent / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_folds_cmd(dataset, out, "--finetune"), cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while "fold 2: the run over its test clips" not in log.read_text() and proc.poll() is None:
            assert time.time() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = log.read_text()
    assert proc.returncode == -signal.SIGKILL, first  # killed, not finished
    killed = {k: json.loads((out / f"fold{k}" / "fold.json").read_text())["done"] for k in (1, 2)}
    again = subprocess.run(_folds_cmd(dataset, out, "--finetune"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    return {"out": out, "first": first, "again": again, "killed": killed}


def test_folds_with_finetuning_resume_after_a_kill_mid_fold_and_give_compare_folds_table(finetuned, capsys):
    out, again = finetuned["out"], finetuned["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert finetuned["killed"] == {1: True, 2: False}  # killed in the middle of fold 2
    assert "== fold 1 (2 in all): finished earlier with the same setup; kept" in again.stderr
    assert "== fold 2 (2 in all): 3 training clips, 3 test clips (going on where it stopped)" in again.stderr
    assert "is already trained" in again.stderr  # fold 2's adapter was finished before the kill
    table = _compare_folds(capsys, [out / "fold1", out / "fold2"])
    assert table in (out / "folds.md").read_text() and table in again.stdout
    saved = json.loads((out / "folds.json").read_text())
    assert [f["kept_from_earlier"] for f in saved["folds"]] == [True, False] and saved["finetune"] is True
    m = [RunDir(out / f"fold{k}").metrics()["metrics"] for k in (1, 2)]
    assert saved["summary"]["mean_std"]["uar"]["mean"] == pytest.approx(np.mean([x["uar"] for x in m]))


def test_each_fold_is_a_normal_run_of_its_test_clips_with_its_own_adapter_and_prior(finetuned, dataset, capsys):
    out = finetuned["out"]
    for k, (train, test) in FOLDS.items():
        fold = RunDir(out / f"fold{k}")
        assert sorted(r.video for r in fold.manifest()) == [f"{v}.mp4" for v in test]
        assert fold.status()["status"] == "complete" and fold.cache().root == dataset["cache"].resolve()
        adapter = out / f"fold{k}" / "finetune"
        assert fold.config()["classify"]["adapter"] == str(adapter)
        assert sorted(training_clips(adapter)) == sorted(f"{v}.mp4" for v in train)  # trained (and validated) on these
        card = fold.runcard()
        assert card["models"]["classify"]["adapter"]["hash"] == adapter_hash(adapter)
        assert card["models"]["classify"]["resolved_revision"].startswith("local-sha256:")
        rep = fold.metrics()
        counts = {lab: sum(LABELS[v] == lab for v in train) for lab in DFEW}
        assert json.loads((out / f"fold{k}" / "train_counts.json").read_text()) == counts
        assert rep["calibration"]["method"] == "prior" and rep["calibration"]["tau"] == 1.0
        assert rep["train_counts"] == counts
        prior = {lab: (c + 1) / (sum(counts.values()) + 7) for lab, c in counts.items()}  # --prior-smoothing 1
        assert rep["calibration"]["prior"] == pytest.approx(prior)
        assert "## Run card" in (out / f"fold{k}" / "report.md").read_text()
        capsys.readouterr()
        assert main(["report", str(out / f"fold{k}"), "--out", str(out / f"rep{k}")]) == 0  # a run dfer report takes
    assert "The folds' run cards agree" in (out / "folds.md").read_text()


def test_zero_shot_folds_choose_the_tau_on_validation_clips_with_mafw_split_files(dataset, tmp_path, capsys):
    out = tmp_path / "zs"
    res = run_folds(dataset["clips"], dataset["mafw"], out, protocol="mafw", folds="1,2", tune_tau=True,
                    overrides=[*models(), *TRAIN], cache_dir=dataset["cache"], quiet=True, log=open(os.devnull, "w"),
                    n_boot=100, smoothing=1)
    for row in res.rows:
        rep = row.report
        held = rep["calibration"]["tau_from"]
        train = FOLDS[row.split.fold][0]
        assert held["run"] == str(out / f"fold{row.split.fold}" / "val") and held["n"] == 1  # one validation clip
        val_ids = [r.video for r in RunDir(held["run"]).manifest()]
        assert len(val_ids) == 1 and val_ids[0][:5] in train
        assert rep["calibration"]["tau"] == held["tau"] and rep["label_set"]["name"] == "mafw"
        assert rep["train_counts"]["happiness"] == sum(LABELS[v] == "happy" for v in train)
    table = _compare_folds(capsys, [out / "fold1", out / "fold2"])
    assert res.table.strip() == table.strip() and res.table in (out / "folds.md").read_text()
    assert "zero-shot" in (out / "folds.md").read_text() and "(validation)" in (out / "folds.md").read_text()


def test_a_fold_whose_training_and_test_clips_overlap_stops_before_anything_runs(dataset, tmp_path, capsys):
    clips = tmp_path / "clips"
    shutil.copytree(dataset["clips"], clips)
    shutil.copy(clips / "00001.mp4", clips / "00007.mp4")  # a test clip of fold 1 again, under another name
    labels = {**LABELS, "00007": "happy"}
    folds = {1: (["00004", "00005", "00006", "00007"], FOLDS[1][1]), 2: FOLDS[2]}
    splits = write_dfew_splits(tmp_path / "DFEW", folds, labels)
    args = ["folds", str(clips), "--splits", str(splits), "--protocol", "dfew", "--out", str(tmp_path / "out"),
            "--folds", "1-2", "--cache", str(tmp_path / "cache"), *(a for s in models() for a in ("--set", s))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert ("dfer: error: 1 of the 3 clips of fold 1's test split are also among fold 1's training clips (the same "
            "file content): 00001.mp4 (= 00007.mp4)") in err and "pass --allow-overlap" in err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--folds", "6"]) == 2
    assert "--folds 6: dfew has folds 1..5, each named once" in capsys.readouterr().err
    ok = [*args[:3], str(write_dfew_splits(tmp_path / "DFEW-ok")), *args[4:]]  # disjoint folds
    assert main([*ok, "--folds", "1-3"]) == 2  # fold 3 has no split files
    err = capsys.readouterr().err
    assert "no DFEW train split for fold 3 under" in err and "set_3.csv" in err
    assert main(ok) == 2  # 5 of DFEW's 7 classes have no training clip: no prior without a pseudo-count
    missing = "neutral, angry, surprise, disgust, fear"
    assert ("--calibration prior takes each fold's training counts as the prior, but some classes have no training "
            f"clip: fold 1: {missing}; fold 2: {missing}. Pass --prior-smoothing 1") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
