"""Paired statistics of two runs over the same clips: McNemar against statsmodels, the paired-bootstrap CIs of the
differences against scipy's paired bootstrap and a hand-computed case, and what `dfer compare A B` shows (clips
shared and dropped, the differences, the test)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from pipeline.cli import main
from pipeline.eval.paired import mcnemar, paired_bootstrap
from pipeline.report import build_report
from pipeline.report.paired import paired_comparison
from tests.test_compare import LABELS, write_run


@pytest.mark.parametrize("only_a,only_b,both,neither", [(3, 11, 40, 6), (0, 0, 10, 2), (7, 7, 5, 5), (1, 0, 3, 0),
                                                        (120, 160, 900, 300), (0, 9, 1, 1)])
def test_mcnemar_agrees_with_statsmodels(only_a, only_b, both, neither):
    ca = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, dtype=bool)
    cb = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, dtype=bool)
    got = mcnemar(ca, cb)
    table = [[both, only_a], [only_b, neither]]
    assert (got["only_a"], got["only_b"], got["both"], got["neither"]) == (only_a, only_b, both, neither)
    assert got["p_exact"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    if only_a + only_b:
        ref = sm_mcnemar(table, exact=False, correction=True)
        assert got["chi2"] == pytest.approx(ref.statistic) and got["p_chi2"] == pytest.approx(ref.pvalue, rel=1e-9)
    else:  # no discordant clip: nothing to test
        assert got["chi2"] is None and got["p_exact"] == 1.0


def _two_classifiers(n=300, seed=0, gain=0.0):
    """True labels over 4 classes and two correlated classifiers; B is right on a further ``gain`` share of clips."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, n)
    hard = rng.random(n) < 0.45  # wrong for both
    pa = np.where(hard, (t + 1) % 4, t)
    pa = np.where(rng.random(n) < 0.1, rng.integers(0, 4, n), pa)  # A's own noise
    pb = np.where(rng.random(n) < 0.1, rng.integers(0, 4, n), pa)  # B mostly agrees with A
    fixed = hard & (rng.random(n) < gain / 0.45)
    pb = np.where(fixed, t, pb)
    pb[::37] = -1  # a few clips without a prediction (failed): wrong
    return t, pa, pb


def _uar(t, p):  # by hand: mean recall over the classes present
    return np.mean([np.mean(p[t == c] == c) for c in np.unique(t)])


def _f1(t, p):  # by hand: mean F1 = 2 TP / (support + predicted) over the classes present
    return np.mean([2 * np.sum((t == c) & (p == c)) / (np.sum(t == c) + np.sum(p == c)) for c in np.unique(t)])


def _war(t, p):
    return np.mean(t == p)


def test_paired_differences_are_the_metric_differences_and_their_cis_match_scipys_paired_bootstrap():
    t, pa, pb = _two_classifiers(gain=0.2)
    m = paired_bootstrap(t, pa, pb, 4, n_boot=3000, seed=1)["metrics"]
    for key, fn, sk in (("uar", _uar, balanced_accuracy_score), ("war", _war, lambda *a: np.mean(a[0] == a[1])),
                        ("macro_f1", _f1, lambda y, p: f1_score(y, p, labels=[0, 1, 2, 3], average="macro"))):
        assert m[key]["a"] == pytest.approx(sk(t, pa)) and m[key]["b"] == pytest.approx(sk(t, pb))
        assert m[key]["diff"] == pytest.approx(sk(t, pb) - sk(t, pa))
        ref = stats.bootstrap((t, pa, pb), lambda tt, a, b: fn(tt, b) - fn(tt, a), paired=True, vectorized=False,
                              n_resamples=3000, method="percentile", random_state=7).confidence_interval
        # two independent Monte Carlo estimates of the same percentiles (3000 resamples each)
        assert m[key]["ci"] == pytest.approx([ref.low, ref.high], abs=0.012), key
        assert m[key]["excludes_zero"] and m[key]["ci"][0] > 0  # B is right on 20 % more of the hard clips


def test_pairing_gives_a_narrower_interval_than_the_two_runs_own_intervals_suggest():
    t, pa, pb = _two_classifiers(gain=0.03, seed=3)
    paired = paired_bootstrap(t, pa, pb, 4, n_boot=2000)["metrics"]["war"]["ci"]
    rng = np.random.default_rng(0)  # unpaired: A and B resampled independently
    ia, ib = rng.integers(0, len(t), (2, 2000, len(t)))
    unpaired = np.percentile((pb[ib] == t[ib]).mean(1) - (pa[ia] == t[ia]).mean(1), [2.5, 97.5])
    assert paired[1] - paired[0] < 0.6 * (unpaired[1] - unpaired[0])


def test_a_hand_computed_case():
    # 10 clips of 2 classes; A right on clips 0-5, B right on clips 0-7: B - A = +20 points WAR
    t = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pa = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    pb = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    res = paired_bootstrap(t, pa, pb, 2, n_boot=0)["metrics"]
    assert res["war"]["diff"] == pytest.approx(0.2) and res["war"]["ci"] is None
    assert res["uar"]["diff"] == pytest.approx((1 + 3 / 5) / 2 - (1 + 1 / 5) / 2)  # = 0.2
    # F1: A: class 0 P=5/9 R=1 -> 10/14, class 1 P=1 R=1/5 -> 2/6; B: class 0 P=5/7 -> 10/12, class 1 R=3/5 P=1 -> 6/8
    assert res["macro_f1"]["a"] == pytest.approx((10 / 14 + 2 / 6) / 2)
    assert res["macro_f1"]["b"] == pytest.approx((10 / 12 + 6 / 8) / 2)
    mc = mcnemar(pa == t, pb == t)
    assert (mc["only_a"], mc["only_b"]) == (0, 2) and mc["p_exact"] == pytest.approx(0.5)  # 2 * (1/2)^2


def test_identical_runs_differ_by_exactly_zero():
    t, pa, _ = _two_classifiers()
    res = paired_bootstrap(t, pa, pa, 4, n_boot=500)["metrics"]
    assert all(m["diff"] == 0 and m["ci"] == [0, 0] and not m["excludes_zero"] for m in res.values())


# ------------------------------------------------------------------------------------------- dfer compare A B

A = [("happy", "happy", 8), ("happy", "sad", 2), ("sad", "sad", 5), ("sad", "fear", 3), ("fear", "fear", 2)]
B = [("happy", "happy", 10), ("sad", "sad", 8), ("fear", "fear", 1), ("fear", "happy", 1)]


def test_compare_two_runs_pairs_them_on_the_shared_clips_and_names_the_dropped_ones(tmp_path, capsys):
    a = write_run(tmp_path / "zero-shot", A)
    b = write_run(tmp_path / "msce", B + [("sad", "sad", 3)])  # 3 more clips: v20..v22, in B only
    ra, rb = build_report(a, n_boot=0), build_report(b, n_boot=0)
    res = paired_comparison(ra, rb, n_boot=1000)
    assert res["shared"] == 20 and res["dropped"] == {"only_a": [], "only_b": ["v20.mp4", "v21.mp4", "v22.mp4"],
                                                      "label_differs": []}
    # per clip: A wrong on v8, v9, v15-17; B wrong on v19 only
    assert (res["mcnemar"]["only_a"], res["mcnemar"]["only_b"], res["mcnemar"]["both"]) == (1, 5, 14)
    war = res["bootstrap"]["metrics"]["war"]
    assert war["diff"] == pytest.approx(19 / 20 - 15 / 20)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "Paired: msce against zero-shot" in out
    assert "20 clips have the same true label in both runs; 3 dropped:" in out
    assert "- 3 labelled in msce only: `v20.mp4`, `v21.mp4`, `v22.mp4`" in out
    assert f"| WAR | 75.00 | 95.00 | +20.00 [{100 * war['ci'][0]:+.2f}, {100 * war['ci'][1]:+.2f}]" in out
    p = res["mcnemar"]["p_exact"]
    assert p == pytest.approx(sm_mcnemar([[14, 1], [5, 0]], exact=True).pvalue)
    assert f"1 clips right in zero-shot only, 5 in msce only (14 right in both, 0 in neither); exact two-sided " \
           f"p = {p:.4g}" in out


def test_runs_with_other_label_sets_are_not_paired(tmp_path):
    a = write_run(tmp_path / "a", A)
    b = write_run(tmp_path / "b", [("angry", "angry", 2), *B], labels=[*LABELS, "angry"], name="other")
    res = paired_comparison(build_report(a, n_boot=0), build_report(b, n_boot=0))
    assert res == {"error": "the runs score different label sets (happy, sad, fear vs happy, sad, fear, angry)"}


# ------------------------------------------------------------------------------------------- dfer sweep --baseline


def test_sweep_md_marks_the_settings_whose_difference_to_the_baseline_excludes_zero(tmp_path):
    from pipeline.tools.sweep import Combination, SweepResult, SweepRow, parse_grid, sweep_markdown

    n = 60  # the same 60 clips in three runs: the baseline, one far better, one that differs on 2 clips only
    base = [("happy", "happy", 10), ("happy", "sad", 10), ("sad", "sad", 10), ("sad", "fear", 10), ("fear", "fear", 20)]
    better = [("happy", "happy", 20), ("sad", "sad", 20), ("fear", "fear", 20)]
    close = [("happy", "happy", 11), ("happy", "sad", 9), ("sad", "sad", 9), ("sad", "fear", 11), ("fear", "fear", 20)]
    axes = parse_grid(["keyframes.k=4,8,16"])
    rows = []
    for k, pairs in zip(("4", "8", "16"), (base, better, close)):
        assert sum(c for *_, c in pairs) == n
        run_dir = write_run(tmp_path / f"k={k}", pairs)
        rows.append(SweepRow(Combination(f"k={k}", {"keyframes.k": k}, None), run_dir, "complete",
                             report=build_report(run_dir)))
    table = sweep_markdown(SweepResult(tmp_path, axes, rows, baseline="k=4"))
    line = {k: next(x for x in table.splitlines() if x.startswith(f"| [k={k}]")) for k in ("4", "8", "16")}
    assert line["4"].endswith("| baseline | baseline | baseline | - |")
    better_cells, close_cells = line["8"].split(" | ")[-4:-1], line["16"].split(" | ")[-4:-1]
    assert all(c.startswith("+") and c.endswith(" *") for c in better_cells), better_cells  # WAR +33 points
    assert not any(c.endswith("*") for c in close_cells), close_cells
    p8 = sm_mcnemar([[40, 0], [20, 0]], exact=True).pvalue  # 40 right in both, 20 right in k=8 only
    assert line["8"].endswith(f"| {p8:.3g} |")


def test_a_baseline_that_is_no_combination_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "clips").mkdir()  # an input that exists: the baseline is what is refused
    assert main(["sweep", str(tmp_path / "clips"), "--out", str(tmp_path / "out"), "--grid", "keyframes.k=2,3",
                 "--baseline", "k=4"]) == 2
    assert "--baseline k=4: not a combination of this sweep; its combinations are k=2, k=3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
