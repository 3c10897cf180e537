"""dfer compare: per-class recall and collapse side by side; --folds: mean ± std over the folds of one protocol."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from pipeline.cli import main
from pipeline.core.errors import LabelError
from pipeline.report import build_report, compare_folds, compare_runs, fold_summary, pct
from pipeline.engine.rundir import RunDir
from tests.test_report import make_run

LABELS = ["happy", "sad", "fear"]
# (true, predicted, clips) per fold; fold 3 has no fear clip at all, and predicts fear once (a false positive)
FOLDS = [
    [("happy", "happy", 3), ("happy", "sad", 1), ("sad", "sad", 2), ("fear", "happy", 2), ("fear", "fear", 1)],
    [("happy", "happy", 2), ("sad", "happy", 2), ("sad", "sad", 2), ("fear", "fear", 2), ("fear", "sad", 1)],
    [("happy", "happy", 1), ("happy", "fear", 1), ("sad", "sad", 3), ("sad", "happy", 1)],
]


def write_run(root, pairs, labels=LABELS, name="mine"):
    """A run directory whose classify scored each clip ``true`` as ``predicted``."""
    run = RunDir(root)
    run.create()
    scores, predictions = run.score_writers(labels)
    i = 0
    for true, pred, n in pairs:
        for _ in range(n):
            s = {lab: (-0.1 if lab == pred else -3.0) for lab in labels}
            scores.write({"video": f"v{i}.mp4", "label": true, "labels": labels, "scores": s, "prediction": pred})
            i += 1
    scores.close()
    predictions.close()
    run.write_labelset(name, labels)
    return root


def _expand(pairs):
    y = [t for t, _, n in pairs for _ in range(n)]
    p = [q for _, q, n in pairs for _ in range(n)]
    return y, p


def test_folds_give_mean_and_std_of_the_headline_metrics(tmp_path):
    runs = [write_run(tmp_path / f"fold{i + 1}", pairs) for i, pairs in enumerate(FOLDS)]
    s = fold_summary(runs, n_boot=0)
    uar, war, f1 = [], [], []
    for pairs in FOLDS:  # scikit-learn as the reference, over the classes each fold has
        y, p = _expand(pairs)
        present = [lab for lab in LABELS if lab in y]
        uar.append(balanced_accuracy_score(y, p))
        war.append(np.mean([a == b for a, b in zip(y, p)]))
        f1.append(f1_score(y, p, labels=present, average="macro", zero_division=0))
    for key, values in (("uar", uar), ("war", war), ("macro_f1", f1)):
        assert [f[key] for f in s["folds"]] == pytest.approx(values)
        assert s["mean_std"][key]["mean"] == pytest.approx(np.mean(values))
        assert s["mean_std"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    table = compare_folds(runs, n_boot=0)
    assert f"{pct(np.mean(uar))} ± {pct(np.std(uar, ddof=1))}" in table


def test_folds_average_each_class_recall_over_the_folds_that_have_it(tmp_path):
    runs = [write_run(tmp_path / f"fold{i + 1}", pairs) for i, pairs in enumerate(FOLDS)]
    s = fold_summary(runs, n_boot=0)
    for lab in LABELS:
        per_fold = []
        for pairs in FOLDS:
            y, p = _expand(pairs)
            per_fold.append(recall_score(y, p, labels=[lab], average=None, zero_division=0)[0] if lab in y else None)
        have = [r for r in per_fold if r is not None]
        assert [f["recall"][lab] for f in s["folds"]] == pytest.approx(per_fold)
        assert s["recall"][lab] == pytest.approx({"mean": np.mean(have), "std": np.std(have, ddof=1), "n": len(have)})
    assert s["recall"]["fear"]["n"] == 2  # fold 3 has no fear clip
    fear_row = next(line for line in compare_folds(runs, n_boot=0).splitlines() if line.startswith("| fear |"))
    assert "| n/a |" in fear_row and "(over 2 of 3 folds)" in fear_row


def test_folds_with_different_label_sets_are_refused(tmp_path):
    a = write_run(tmp_path / "fold1", FOLDS[0])
    b = write_run(tmp_path / "fold2", [("angry", "angry", 2), *FOLDS[1]], labels=[*LABELS, "angry"], name="other")
    with pytest.raises(LabelError, match=r"share one label set.*fold2 has other \(happy, sad, fear, angry\)"):
        fold_summary([a, b], n_boot=0)
    assert main(["compare", "--folds", str(a), str(b)]) == 2


def test_compare_shows_per_class_recall_and_collapse_side_by_side(tmp_path):
    make_run(tmp_path / "a", seed=0)
    make_run(tmp_path / "b", seed=1)
    table = compare_runs([tmp_path / "a", tmp_path / "b"], n_boot=0)
    reps = [build_report(tmp_path / r, n_boot=0)["metrics_all_clips"] for r in ("a", "b")]  # the headline's
    for i, lab in enumerate(reps[0]["labels"]):
        row = f"| {lab} | {pct(reps[0]['per_class'][i]['recall'])} | {pct(reps[1]['per_class'][i]['recall'])} |"
        assert row in table
    tv = [f"{m['collapse']['total_variation']:.4f}" for m in reps]
    assert f"| total variation, true vs predicted | {tv[0]} | {tv[1]} |" in table
    share = [pct(m["collapse"]["tail_to_head_share"]) for m in reps]
    assert f"| tail clips predicted as head (%) | {share[0]} | {share[1]} |" in table


def test_compare_marks_classes_outside_a_runs_label_set(tmp_path):
    a = write_run(tmp_path / "a", FOLDS[0])
    b = write_run(tmp_path / "b", [("angry", "angry", 2), *FOLDS[1]], labels=[*LABELS, "angry"], name="other")
    table = compare_runs([a, b], n_boot=0)
    assert "| angry | - | 100.00 |" in table


def test_folds_can_be_reports_of_one_run_written_per_fold(tmp_path):
    truth = make_run(tmp_path / "run")  # one zero-shot run over every clip; each fold labels half of them
    ids = sorted(k for k in truth if k.isdigit())
    outs = []
    for f, part in enumerate((ids[::2], ids[1::2]), 1):
        labels = tmp_path / f"fold{f}.csv"
        labels.write_text("video,label\n" + "".join(f"{k},{truth[k]}\n" for k in part))
        assert main(["report", str(tmp_path / "run"), "--labels", str(labels), "--out", str(tmp_path / f"f{f}")]) == 0
        outs.append(tmp_path / f"f{f}")
    s = fold_summary(outs)
    assert [f["n"] for f in s["folds"]] == [70, 70]
    assert [f["uar"] for f in s["folds"]] == [RunDir(d).metrics()["metrics"]["uar"] for d in outs]


def test_a_run_folder_whose_name_holds_a_pipe_keeps_every_table_row_whole(tmp_path):
    a = write_run(tmp_path / "base", FOLDS[0])
    b = write_run(tmp_path / "lr|1e-4", FOLDS[1])
    table = compare_runs([a, b], n_boot=0)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows and any("lr\\|1e-4" in r for r in rows)
    for block in table.split("\n\n"):  # each table: every row has as many cells as its header
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
            assert len(widths) == 1, block
