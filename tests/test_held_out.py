"""Held-out choices in `dfer report`: --tau-from chooses the calibration's tau on another run's clips; --tau-sweep on
the run's own labels stays, marked as test-set tuning. The fixture is built so that the two must differ: the held-out
run's scores carry exactly the training prior's bias (best tau 1), the test run's carry none (best tau 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.engine.rundir import RunDir
from pipeline.eval.metrics import uar
from pipeline.report import build_report

LABELS = ["happy", "sad", "fear"]
TRAIN = {"happy": 80, "sad": 15, "fear": 5}
LOG_PRIOR = np.log(np.array([TRAIN[k] for k in LABELS]) / sum(TRAIN.values()))


def scored_run(root, n: int, bias: float, seed: int, prefix: str) -> dict[str, str]:
    """A run of ``n`` clips (classes in turn) whose scores are signal + noise + ``bias`` x the log training prior."""
    rng = np.random.default_rng(seed)
    run = RunDir(root)
    run.create()
    scores, predictions = run.score_writers(LABELS)
    truth = {}
    for i in range(n):
        y = i % 3
        s = rng.normal(0, 1, 3) + bias * LOG_PRIOR
        s[y] += 1.2
        vid = f"{prefix}{i:03d}.mp4"
        truth[vid] = LABELS[y]
        scores.write({"video": vid, "label": LABELS[y], "labels": LABELS, "scores": dict(zip(LABELS, s.tolist())),
                      "prediction": LABELS[int(np.argmax(s))]})
    scores.close()
    predictions.close()
    run.write_labelset("mine", LABELS)
    return truth


@pytest.fixture()
def runs(tmp_path):
    scored_run(tmp_path / "val", 300, bias=1.0, seed=0, prefix="val")
    scored_run(tmp_path / "test", 300, bias=0.0, seed=1, prefix="test")
    (tmp_path / "train_counts.json").write_text(json.dumps(TRAIN))
    return tmp_path


def _best(rows) -> float:
    return max(rows, key=lambda r: r["uar"])["tau"]


def test_the_held_out_tau_is_chosen_on_the_other_run_and_differs_from_the_test_tuned_one(runs, capsys):
    taus = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    rep = build_report(runs / "test", calibration="prior", train_counts=runs / "train_counts.json", n_boot=0,
                       tau_from=runs / "val", tau_candidates=taus, taus=taus)
    held = rep["calibration"]["tau_from"]
    val_sweep = build_report(runs / "val", train_counts=runs / "train_counts.json", taus=taus, n_boot=0)["tau_sweep"]
    assert held["rows"] == val_sweep["rows"] and held["tau"] == _best(val_sweep["rows"]) == 1.0
    assert held["n"] == 300 and held["prior"] == "training prior" and held["by"] == "UAR"
    assert _best(rep["tau_sweep"]["rows"]) == 0.0  # on the test labels: the test-tuned tau
    assert rep["tau_sweep"]["test_set_tuning"] is True
    # the report is calibrated with the held-out tau, by hand: argmax(s - 1.0 * log prior)
    rows = [r for _, r in RunDir(runs / "test").scores()]
    s = np.array([[r["scores"][k] for k in LABELS] for r in rows]) - 1.0 * LOG_PRIOR
    by_hand = uar([r["label"] for r in rows], [LABELS[i] for i in s.argmax(1)], LABELS)
    assert rep["calibration"]["tau"] == 1.0 and rep["metrics"]["uar"] == pytest.approx(by_hand)
    assert rep["metrics"]["uar"] < max(r["uar"] for r in rep["tau_sweep"]["rows"])  # honest, not tuned on the test

    assert main(["report", str(runs / "test"), "--calibration", "prior", "--train-counts",
                 str(runs / "train_counts.json"), "--tau-from", str(runs / "val"), "--tau-sweep", "0,0.5,1"]) == 0
    out = capsys.readouterr().out
    assert f"tau 1 chosen on {runs / 'val'} (held out: 300 labelled clips, training prior): the best UAR among tau 0, " \
           "0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2" in out
    assert "on this run's own labels: TEST-SET TUNING" in out
    md = (runs / "test" / "report.md").read_text()
    assert "Calibration: prior (tau=1.0, chosen on val)." in md
    assert "## Calibration tau, chosen on held-out clips" in md and "| 1 (chosen) |" in md
    assert "## Tau sweep on this run's own labels: test-set tuning" in md and "**Test-set tuning:**" in md


def test_a_tau_sweep_alone_is_marked_as_test_set_tuning(runs):
    assert main(["report", str(runs / "test"), "--tau-sweep", "0,1"]) == 0
    assert "**Test-set tuning:**" in (runs / "test" / "report.md").read_text()
    assert main(["report", str(runs / "test")]) == 0
    assert "Tau sweep" not in (runs / "test" / "report.md").read_text()


def test_tau_from_needs_a_calibration_other_clips_and_labels(runs, tmp_path, capsys):
    before = (runs / "test" / "scores.jsonl").read_bytes()
    assert main(["report", str(runs / "test"), "--tau-from", str(runs / "val")]) == 2
    assert "--tau-from chooses the tau of a calibration: pass --calibration prior" in capsys.readouterr().err
    assert main(["report", str(runs / "test"), "--calibration", "estimated", "--tau-from", str(runs / "val"),
                 "--tau", "0.5"]) == 2
    assert "--tau and --tau-from both set the tau: keep one" in capsys.readouterr().err
    # the same clips on both sides: not held out
    assert main(["report", str(runs / "test"), "--calibration", "estimated", "--tau-from", str(runs / "test")]) == 2
    err = capsys.readouterr().err
    assert "300 of the 300 clips of " in err and "(where tau is chosen, compared by video id (no manifest.jsonl))" in err
    assert "pass --allow-overlap" in err
    assert main(["report", str(runs / "test"), "--calibration", "estimated", "--tau-from", str(runs / "test"),
                 "--allow-overlap"]) == 0
    assert "shares 300 clip(s) with this run (allowed with --allow-overlap)" in (runs / "test" / "report.md").read_text()
    unlabelled = tmp_path / "unlabelled"
    scored_run(unlabelled, 30, 0.0, 2, "u")
    rows = [r for _, r in RunDir(unlabelled).scores()]
    with (unlabelled / "scores.jsonl").open("w") as f:
        f.writelines(json.dumps({**r, "label": None}) + "\n" for r in rows)
    assert main(["report", str(runs / "test"), "--calibration", "estimated", "--tau-from", str(unlabelled)]) == 2
    assert "no scored clip there has a true label" in capsys.readouterr().err
    assert (runs / "test" / "scores.jsonl").read_bytes() == before


def test_an_estimated_prior_is_estimated_on_each_run_itself(runs):
    rep = build_report(runs / "test", calibration="estimated", tau_from=runs / "val", n_boot=0)
    held = rep["calibration"]["tau_from"]
    assert held["prior"] == "prior estimated from its own clips"  # the held-out run's own posteriors
    assert rep["calibration"]["prior_source"].startswith("1 EM step(s)")
