"""Metrics against hand-computed cases and scikit-learn; report-time calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from pipeline.eval.calibration import calibrate, prior_from_counts, softmax, tau_sweep
from pipeline.eval.metrics import compute_metrics, macro_f1, make_groups, mean_std, spearman, uar, war

LABELS = ["happy", "sad", "neutral"]


def test_hand_computed_case():
    y_true = ["happy", "happy", "happy", "happy", "sad", "sad", "neutral", "neutral"]
    y_pred = ["happy", "happy", "happy", "neutral", "sad", "neutral", "neutral", "happy"]
    # recalls: happy 3/4, sad 1/2, neutral 1/2 -> UAR 7/12; accuracy 5/8
    # precision: happy 3/4, sad 1/1, neutral 1/3; F1: 3/4, 2/3, 2/5
    assert uar(y_true, y_pred, LABELS) == pytest.approx(7 / 12)
    assert war(y_true, y_pred) == pytest.approx(5 / 8)
    assert macro_f1(y_true, y_pred, LABELS) == pytest.approx((3 / 4 + 2 / 3 + 2 / 5) / 3)
    m = compute_metrics(y_true, y_pred, LABELS, n_boot=50)
    rows = {r["label"]: r for r in m["per_class"]}
    assert rows["neutral"]["precision"] == pytest.approx(1 / 3) and rows["sad"]["support"] == 2
    assert m["confusion_matrix"]["matrix"] == [[3, 0, 1], [0, 1, 1], [1, 0, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(6)]
    y_true = list(rng.choice(labels, size=300, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    y_pred = [t if rng.random() < 0.5 else str(rng.choice(labels)) for t in y_true]
    m = compute_metrics(y_true, y_pred, labels, n_boot=100, seed=seed)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["war"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro"))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, row in enumerate(m["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    lo, hi = m["ci"]["uar"]
    assert lo <= m["uar"] <= hi and hi - lo > 0
    assert m["ci"] == compute_metrics(y_true, y_pred, labels, n_boot=100, seed=seed)["ci"]  # seeded
    json.dumps(m)  # serialisable


def test_class_without_examples_is_named_and_excluded():
    y_true = ["happy", "happy", "sad"]
    y_pred = ["happy", "neutral", "sad"]
    with pytest.warns(UserWarning, match="no test examples for class.*neutral"):
        m = compute_metrics(y_true, y_pred, LABELS, n_boot=20)
    assert m["classes_without_examples"] == ["neutral"]
    row = m["per_class"][2]
    assert row["label"] == "neutral" and row["recall"] is None and row["f1"] is None
    assert row["precision"] == 0.0  # predicted once, wrongly
    assert m["uar"] == pytest.approx((0.5 + 1.0) / 2)
    assert any("neutral" in w for w in m["warnings"])
    json.dumps(m)


def test_no_prediction_counts_as_wrong():
    m = compute_metrics(["happy", "sad", "sad"], ["happy", None, "sad"], LABELS[:2], n_boot=20)
    assert m["war"] == pytest.approx(2 / 3) and m["uar"] == pytest.approx(0.75)
    assert m["n_no_prediction"] == 1 and m["confusion_matrix"]["no_prediction"] == [0, 1]
    with pytest.raises(ValueError, match="not in labels"):
        compute_metrics(["happy"], ["joy"], LABELS)


def test_groups_and_collapse():
    labels = ["a", "b", "c", "d", "e", "f", "g"]
    counts = [50, 500, 20, 300, 5, 100, 1]
    assert make_groups(labels, counts) == {"head": ["b", "d", "f"], "medium": ["a", "c"], "tail": ["e", "g"]}
    y_true = ["a", "b", "c", "d", "e", "f", "g"] * 3
    y_pred = ["b"] * len(y_true)  # total collapse onto the biggest class
    m = compute_metrics(y_true, y_pred, labels, train_counts=dict(zip(labels, counts)), n_boot=20)
    g = m["groups"]
    assert g["source"] == "train_counts" and g["by_group"]["tail"]["labels"] == ["e", "g"]
    assert g["by_group"]["head"]["uar"] == pytest.approx(1 / 3) and g["by_group"]["tail"]["uar"] == 0
    c = m["collapse"]
    assert c["tail_to_head_share"] == 1.0 and c["n_tail_clips"] == 6
    assert c["total_variation"] == pytest.approx(6 / 7)
    assert c["classes_never_predicted"] == ["a", "c", "d", "e", "f", "g"]
    assert 0 < c["js_distance"] <= 1 and np.isfinite(c["kl_true_pred"])
    perfect = compute_metrics(y_true, y_true, labels, n_boot=20)
    assert perfect["collapse"]["total_variation"] == 0 and perfect["collapse"]["js_distance"] == pytest.approx(0)
    assert perfect["groups"]["source"] == "test_support"
    user = compute_metrics(y_true, y_true, labels, groups={"rare": ["g"]}, n_boot=0)
    assert user["groups"]["by_group"]["rare"]["n"] == 3 and user["ci"]["uar"] is None


def _head_biased_scores(seed=0, n=3000):
    """Scores = class evidence + a bias towards frequent classes (shaped like the training prior)."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    y = rng.integers(0, 5, size=n)  # balanced test set
    evidence = rng.normal(0, 1.0, size=(n, 5))
    evidence[np.arange(n), y] += 1.5
    return evidence + np.log(prior), y, prior


def test_calibration_raises_uar_on_head_biased_scores():
    scores, y, prior = _head_biased_scores()
    names = [f"c{i}" for i in range(5)]
    counts = dict(zip(names, (prior * 1000).astype(int)))
    y_names = [names[i] for i in y]

    def uar_of(s):
        return uar(y_names, [names[i] for i in s.argmax(axis=1)], names)

    raw, info = calibrate(scores, "none")
    assert info["prior"] is None and raw is not None
    adjusted, info = calibrate(scores, "prior", tau=1.0, train_counts=counts, labels=names)
    assert info["prior"]["c0"] == pytest.approx(0.5, abs=0.01)
    estimated, info = calibrate(scores, "estimated", tau=1.0, labels=names)
    assert info["prior"]["c0"] > info["prior"]["c4"]
    base = uar_of(raw)
    assert uar_of(adjusted) > base + 0.10
    assert uar_of(estimated) > base + 0.10
    np.testing.assert_allclose(list(info["prior"].values()), softmax(scores).mean(0))  # one EM step

    sweep = tau_sweep(scores, y_names, prior, [0.0, 0.5, 1.0], labels=names)
    assert [r["tau"] for r in sweep] == [0.0, 0.5, 1.0]
    assert sweep[0]["uar"] == pytest.approx(base)
    assert sweep[2]["uar"] > sweep[0]["uar"]
    assert tau_sweep(scores, list(y), None, [1.0])[0]["uar"] == pytest.approx(uar_of(estimated))


def test_calibration_errors():
    with pytest.raises(ValueError, match="allowed: none, prior, estimated"):
        calibrate(np.zeros((2, 2)), "temperature")
    with pytest.raises(ValueError, match="needs training label counts"):
        calibrate(np.zeros((2, 2)), "prior")
    with pytest.raises(ValueError, match=r"zero training count for \['b'\]"):
        prior_from_counts({"a": 3, "b": 0}, ["a", "b"])
    np.testing.assert_allclose(prior_from_counts({"a": 3, "b": 0}, ["a", "b"], smoothing=1), [0.8, 0.2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_without_ties_is_the_rank_difference_formula(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=9), rng.normal(size=9)
    d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))  # rank differences (no ties in random floats)
    assert spearman(x, y) == pytest.approx(1 - 6 * np.sum(d ** 2) / (9 * (81 - 1)))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)


def test_spearman_gives_tied_values_their_mean_rank():
    x, y = [10, 20, 20, 40], [1.0, 3.0, 2.0, 4.0]
    assert spearman(x, y) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 3, 2, 4])[0, 1])
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None  # undefined


def test_mean_std_is_over_the_values_present():
    assert mean_std([0.2, None, 0.6]) == pytest.approx({"mean": 0.4, "std": np.std([0.2, 0.6], ddof=1), "n": 2})
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
