"""Run-directory report: metrics.json accounting, report.md, PNG plots, compare_runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core.errors import LabelError
from pipeline.engine.rundir import PLOTS, RunDir
from pipeline.report import build_report, compare_runs, write_report

DFEW = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
TRAIN_COUNTS = {"happy": 2000, "sad": 1500, "neutral": 2100, "angry": 1700, "surprise": 1200, "disgust": 120,
                "fear": 700}


def make_run(root: Path, seed: int = 0, n: int = 140, config: dict | None = None) -> dict[str, str]:
    """A DFEW-like run: head-biased scores, one unlabeled clip, failures at two stages, one NaN row.
    Returns the true labels of every clip, for a labels file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    log_prior = np.log(np.array([TRAIN_COUNTS[k] for k in DFEW], dtype=float) / sum(TRAIN_COUNTS.values()))
    truth, rows = {}, []
    for i in range(n):
        vid = f"clips/{i:05d}.mp4"
        y = i % 7
        s = rng.normal(0, 1, 7) + log_prior
        s[y] += 1.5
        truth[f"{i:05d}"] = DFEW[y]
        rows.append({"video": vid, "label": DFEW[y], "labels": DFEW,
                     "scores": dict(zip(DFEW, s.round(4).tolist())), "prediction": DFEW[int(np.argmax(s))]})
    rows.append({"video": "clips/extra.mp4", "label": None, "labels": DFEW,
                 "scores": dict(zip(DFEW, [0.0] * 7)), "prediction": "happy"})
    bad = dict(rows[0], video="clips/nan.mp4", scores=dict(rows[0]["scores"], fear=float("nan")))
    rows.append(bad)
    truth["nan"] = "fear"
    run = RunDir(root)
    run.create()
    scores, predictions = run.score_writers(DFEW)
    for r in rows:
        scores.write(r)
    scores.close()
    predictions.close()
    fails = [{"video": "clips/broken.mp4", "stage": "faces", "error": "NoFaceError", "message": "no face"},
             {"video": "clips/late.mp4", "stage": "classify", "error": "RuntimeError", "message": "OOM"}]
    truth["broken"] = "disgust"
    with run.failure_log() as log:
        for r in fails:
            log.write(r)
    run.write_labelset("dfew", DFEW)
    if config is not None:
        run.write_config(yaml.safe_dump(config))
    return truth


def _labels_csv(path: Path, truth: dict[str, str], extra: dict[str, str]) -> Path:
    path.write_text("video,label\n" + "".join(f"{k},{v}\n" for k, v in {**truth, **extra}.items()))
    return path


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with Image.open(path) as im:
        im.load()
        assert im.width > 200 and im.height > 200


def test_write_report_accounts_for_every_clip(tmp_path):
    truth = make_run(tmp_path / "run")
    labels = _labels_csv(tmp_path / "labels.csv", truth, {"99999": "fear"})
    rep = write_report(tmp_path / "run", labels_file=labels, label_format="csv", train_counts=TRAIN_COUNTS,
                       n_boot=200)
    for name in PLOTS.values():
        _assert_png(tmp_path / "run" / name)
    saved = RunDir(tmp_path / "run").metrics()
    assert saved["unlabeled_clips"] == ["clips/extra.mp4"]
    failed = {f["video"]: f for f in saved["failed_clips"]}
    assert set(failed) == {"clips/broken.mp4", "clips/late.mp4", "clips/nan.mp4"}
    assert failed["clips/nan.mp4"]["stage"] == "report" and "fear" in failed["clips/nan.mp4"]["message"]
    assert saved["labels_without_clip"] == ["99999"]
    c = saved["counts"]
    assert (c["scored"], c["scored_labelled"], c["scored_unlabeled"], c["failed"], c["failed_labelled"]) == \
        (141, 140, 1, 3, 2)  # clips/late.mp4 has no label in the file
    assert c["failed_by_stage"] == {"faces": 1, "classify": 1, "report": 1}
    m = saved["metrics"]
    assert m["n"] == 140 and m["groups"]["by_group"]["tail"]["labels"] == ["fear", "disgust"]
    cov = saved["coverage"]
    assert cov["labelled_clips"] == 142 and cov["failures_as_wrong"]["war"] < m["war"]
    md = (tmp_path / "run" / "report.md").read_text()
    for needle in ("clips/broken.mp4", "clips/extra.mp4", "99999", "Coverage: 140 of 142", "disgust",
                   "1 failed clip(s) have no known label", *PLOTS.values()):
        assert needle in md
    assert rep["metrics"]["uar"] == m["uar"]


def test_labels_from_scores_jsonl_and_calibration(tmp_path):
    make_run(tmp_path / "run")
    plain = build_report(tmp_path / "run", n_boot=0)
    assert plain["counts"]["scored_labelled"] == 140 and plain["labels_without_clip"] == []
    # Only the NaN row (stage "report") keeps its label; failures.jsonl rows carry none here.
    assert plain["counts"]["failed_labelled"] == 1 and plain["coverage"]["labelled_clips"] == 141
    cal = write_report(tmp_path / "run", calibration="prior", train_counts=TRAIN_COUNTS, n_boot=0,
                       out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "metrics.json").is_file() and not (tmp_path / "run" / "metrics.json").exists()
    assert cal["metrics_uncalibrated"]["uar"] == pytest.approx(plain["metrics"]["uar"])
    assert cal["metrics"]["uar"] > plain["metrics"]["uar"]
    assert cal["calibration"]["prior"]["neutral"] > cal["calibration"]["prior"]["disgust"]
    est = build_report(tmp_path / "run", calibration="estimated", n_boot=0)
    assert est["calibration"]["method"] == "estimated" and est["metrics"]["uar"] > plain["metrics"]["uar"]
    with pytest.raises(ValueError, match="needs training label counts"):
        build_report(tmp_path / "run", calibration="prior")


def test_compare_runs_table_and_config_diff(tmp_path):
    base = {"classify": {"model": "tiny-qwen", "prompt": "v1"}, "keyframes": {"k": 8}}
    make_run(tmp_path / "a", seed=0, config=base)
    make_run(tmp_path / "b", seed=1, config={**base, "keyframes": {"k": 16}})
    write_report(tmp_path / "a", n_boot=50)
    table = compare_runs([tmp_path / "a", tmp_path / "b"])
    lines = table.splitlines()
    assert lines[0].startswith("**Warning:** no run card for a, b")  # runs made by hand: no runcard.json
    assert lines[2] == "Headline: all labelled clips, failed and abstained clips counted as errors:"
    assert lines[4].startswith("| run | calibration | labelled clips | scored | abstained | partial | failed |")
    # a: 141 labelled clips in scope (140 scored, the NaN row failed), 141 scored rows, one of them (unlabelled, all its
    # scores equal) without a prediction, 3 failed
    assert any(line.startswith("| a | none | 141 | 141 | 1 | 0 | 3 |") for line in lines)
    assert any(line.startswith("| b |") for line in lines)
    assert "| keyframes.k | `8` | `16` |" in table and "classify.model" not in table
    prior_table = compare_runs([tmp_path / "a"], calibration="estimated", n_boot=0)
    assert "estimated (tau=1.0)" in prior_table


def test_official_dfew_labels_file(tmp_path):
    truth = make_run(tmp_path / "run")
    split = tmp_path / "DFEW" / "EmoLabel_DataSplit" / "test(single-labeled)"
    split.mkdir(parents=True)
    rows = [f"{int(k)},{DFEW.index(v) + 1}" for k, v in truth.items() if k.isdigit()]  # ids unpadded, as pandas writes
    (split / "set_1.csv").write_text("video_name,label\r\n" + "\r\n".join(rows) + "\r\n")
    rep = build_report(tmp_path / "run", labels_file=tmp_path / "DFEW", label_format="dfew", fold=1, n_boot=0)
    assert rep["counts"]["scored_labelled"] == 140 and rep["unlabeled_clips"] == ["clips/extra.mp4"]
    assert rep["labels_without_clip"] == []


FREQUENCY = {"happy": 5000, "sad": 2000, "neutral": 9000, "angry": 1500, "surprise": 800, "disgust": 90, "fear": 600}


def test_label_frequency_gives_f1_against_count_with_rank_correlation(tmp_path):
    make_run(tmp_path / "run")
    freq = tmp_path / "web.csv"
    freq.write_text("label,count\n" + "".join(f"{k},{v}\n" for k, v in FREQUENCY.items()))
    rep = write_report(tmp_path / "run", n_boot=0, label_frequency=freq)
    lf = RunDir(tmp_path / "run").metrics()["label_frequency"]
    f1 = {r["label"]: r["f1"] for r in rep["metrics"]["per_class"]}
    assert {r["label"]: (r["count"], r["f1"]) for r in lf["rows"]} == {k: (v, f1[k]) for k, v in FREQUENCY.items()}
    labels = list(FREQUENCY)
    ranks_f, ranks_c = (np.argsort(np.argsort([d[k] for k in labels])) for d in (f1, FREQUENCY))
    assert len(set(f1.values())) == 7  # no ties, so the rank-difference formula holds
    assert lf["spearman"] == pytest.approx(1 - 6 * np.sum((ranks_f - ranks_c) ** 2) / (7 * 48)) and lf["n"] == 7
    _assert_png(tmp_path / "run" / "f1_vs_label_frequency.png")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Per-class F1 against label frequency" in md and f"{lf['spearman']:+.3f} over 7 classes" in md
    assert f"| disgust | 90 | {100 * f1['disgust']:.2f} |" in md


@pytest.mark.parametrize("text, where, problem", [
    ("word,count\nhappy,5\n", 1, "expected a header with columns count and 'label'"),
    ("label,count\nhappy,5\njoy,7\n", 3, "unknown label 'joy'"),
    ("label,count\nhappy,many\n", 2, "count 'many' of 'happy' is not a number"),
    ("label,count\nhappy,5\nHappy,6\n", 3, "'happy' is listed twice"),
])
def test_bad_label_frequency_file_names_file_and_line(tmp_path, text, where, problem):
    make_run(tmp_path / "run")
    freq = tmp_path / "web.csv"
    freq.write_text(text)
    with pytest.raises(LabelError, match=f"{re.escape(str(freq))}:{where}: .*{re.escape(problem)}"):
        write_report(tmp_path / "run", n_boot=0, label_frequency=freq)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_labels_file_that_does_not_exist_is_named(tmp_path):
    make_run(tmp_path / "run")
    missing = tmp_path / "dfew_labels.csv"
    with pytest.raises(LabelError, match=f"{re.escape(str(missing))}: no such labels file or folder"):
        write_report(tmp_path / "run", n_boot=0, labels_file=missing)
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------------------ abstentions and the headline


def _abstaining_run(root: Path) -> None:
    """Eight labelled clips: 3 right, 1 wrong, 1 partial (right), 1 scored none, 1 tie, 1 free-text answer naming no
    label; and two failed clips whose labels the labels file gives."""
    run = RunDir(root)
    run.create()
    scores, predictions = run.score_writers(DFEW)

    def row(vid, label, values, scored="exact", **extra):
        scores.write({"video": vid, "label": label, "labels": DFEW, "scores": dict(zip(DFEW, values)),
                      "scored": scored, **extra})

    onehot = lambda i: [-0.1 if j == i else -4.0 for j in range(7)]  # noqa: E731
    for i, lab in enumerate(("happy", "sad", "neutral")):
        row(f"ok{i}.mp4", lab, onehot(i))
    row("wrong.mp4", "angry", onehot(0))
    row("partial.mp4", "fear", [-3.0] * 6 + [-0.5], "partial")
    row("none.mp4", "disgust", [-2.0] * 7, "none")  # bounds only: calibration must not make it a prediction
    row("tie.mp4", "surprise", [-1.0, -1.0, -5, -5, -5, -5, -5])
    row("words.mp4", "happy", [None] * 7, "none", answer="no idea", abstained="answer names no label")
    scores.close()
    predictions.close()
    with run.failure_log() as log:
        for vid in ("f1.mp4", "f2.mp4"):
            log.write({"video": vid, "stage": "faces", "error": "NoFaceError", "message": "no face"})
    run.write_labelset("dfew", DFEW)


def test_abstentions_and_failures_count_as_errors_in_the_headline(tmp_path):
    _abstaining_run(tmp_path / "run")
    labels = tmp_path / "labels.csv"
    labels.write_text("video,label\nf1,sad\nf2,fear\n" + "".join(
        f"{v},{lab}\n" for v, lab in [("ok0", "happy"), ("ok1", "sad"), ("ok2", "neutral"), ("wrong", "angry"),
                                      ("partial", "fear"), ("none", "disgust"), ("tie", "surprise"), ("words", "happy")]))
    rep = write_report(tmp_path / "run", labels_file=labels, n_boot=100)
    assert rep["predictions"]["partial.mp4"] == "fear" and rep["predictions"]["wrong.mp4"] == "happy"
    assert {v: rep["predictions"][v] for v in ("none.mp4", "tie.mp4", "words.mp4")} == dict.fromkeys(
        ("none.mp4", "tie.mp4", "words.mp4"))
    assert rep["abstained_clips"] == {"none.mp4": "no label scored", "tie.mp4": "tie", "words.mp4": "answer names no label"}
    a = rep["abstentions"]
    assert (a["count"], a["labelled"], a["rate"], a["partial"]) == (3, 3, 3 / 8, 1)
    assert rep["counts"]["scored_partial"] == 1 and rep["counts"]["scored_none"] == 2
    scored, head = rep["metrics"], rep["metrics_all_clips"]
    assert (scored["n"], head["n"]) == (8, 10) and rep["headline"] == "all clips"
    assert scored["war"] == pytest.approx(4 / 8) and head["war"] == pytest.approx(4 / 10)  # right: ok0-2, partial
    # UAR over the 7 classes: happy 1/2 (ok0 right, words abstained), sad 1 (scored) or 1/2 (f1 failed), neutral 1,
    # angry 0, fear 1 or 1/2 (f2 failed), disgust 0, surprise 0
    assert scored["uar"] == pytest.approx((0.5 + 1 + 1 + 0 + 1 + 0 + 0) / 7)
    assert head["uar"] == pytest.approx((0.5 + 0.5 + 1 + 0 + 0.5 + 0 + 0) / 7)

    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Headline: all clips" in md and "| metric (%) | all clips (10 labelled) | scored clips (8 labelled) |" in md
    assert f"| WAR | {100 * head['war']:.2f} [" in md
    assert "the 2 failed and the 3 abstained ones as errors" in md
    assert "Abstentions (no prediction): 3 of 8 scored clips (37.50 %): 1 no label scored, 1 tie, 1 answer names no label" in md
    assert "- `tie.mp4`: tie" in md

    from pipeline.report import summary

    lines = summary(rep, tmp_path / "run").splitlines()
    assert lines[0].startswith(f"UAR {100 * head['uar']:.2f}  WAR 40.00") and "(10 labelled clips" in lines[0]
    assert "2 failed and 3 abstained, counted as errors" in lines[0]
    assert lines[1] == f"scored clips only: UAR {100 * scored['uar']:.2f}  WAR 50.00  macro-F1 " \
                       f"{100 * scored['macro_f1']:.2f}  (8 labelled, abstentions as errors)"
    assert lines[2].startswith("scored 8 (3 abstained, 1 partial), failed 2")

    # calibration moves scores but never turns an abstention scored "none" into a prediction
    cal = build_report(tmp_path / "run", labels_file=labels, calibration="prior", train_counts=TRAIN_COUNTS, n_boot=0)
    assert cal["predictions"]["none.mp4"] is None and cal["predictions"]["words.mp4"] is None

    table = compare_runs([tmp_path / "run"])
    assert f"| run | none | 10 | 8 | 3 | 1 | 2 | {100 * head['uar']:.2f} [" in table
    assert f"| run | 8 | {100 * scored['uar']:.2f} [" in table
