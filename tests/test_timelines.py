"""Timelines (issue 24): ``dfer run --segments`` scores each segment of a clip as a unit of work, into
``timeline.csv`` and ``timeline_summary.csv``; labels with times are scored per labelled span.

Real footage (``tests/real_media.py``: ``arc`` is a real woman, sad for 3 s, then, after a jump cut, happy for 3 s;
``dialogue`` cuts between two real women) with the embedded model, the default fallback. The embedded model's label
of each half was checked on the source first (``tests/real_media.py``: sad >= 0.5 over the first half's source
times, happy >= 0.92 over the second's)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as dfer_main
from pipeline.core.errors import EXIT_OK, EXIT_USAGE
from pipeline.engine.rundir import RunDir
from pipeline.report.timelines import drawn
from pipeline.view.page import write_view
from stages.faces.segments import SegmentSpec, parse_segments, spans
from tests.browser import console_errors, open_page, start_browser, wait_for
from tests.test_real_footage_pipeline import SETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")


def dfer(*args: str) -> tuple[int, str]:
    """``dfer ARGS`` in this process: exit code and what it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = dfer_main([str(a) for a in args])
    return code, err.getvalue()


def run(clip, out, cache, *more) -> tuple[int, str]:
    return dfer("run", clip, "--out", out, "--cache", cache, *[a for s in SETS for a in ("--set", s)], *more)


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def truth(clip, start: float, end: float) -> str | None:
    """The expression of the subject's face on most frames of [start, end) (ground truth by eye)."""
    seen = [fs[0].expression for i, fs in enumerate(clip.faces) if start <= clip.time(i) < end and fs]
    return max(set(seen), key=seen.count) if seen else None


def stage_line(err: str, stage: str) -> str:
    return next(line for line in err.splitlines() if line.startswith(f"{stage}: "))


@pytest.fixture(scope="module")
def arc(real_clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    clip = root / "arc.mp4"
    shutil.copyfile(real_clips["arc"].path, clip)
    code, err = run(clip, root / "run", root / "cache", "--segments", "1.5s")
    assert code == EXIT_OK, err
    return {"root": root, "clip": clip, "truth": real_clips["arc"], "run": root / "run", "err": err,
            "cache": root / "cache"}


def test_each_half_of_the_arc_predicts_its_own_label(arc):
    timeline = rows(arc["run"] / "timeline.csv")
    assert [(float(r["start_s"]), float(r["end_s"])) for r in timeline] == [(0, 1.5), (1.5, 3), (3, 4.5), (4.5, 6)]
    expected = [truth(arc["truth"], float(r["start_s"]), float(r["end_s"])) for r in timeline]
    assert expected == ["sad", "sad", "happy", "happy"]  # the fixture's arc: sad, then happy
    assert [r["prediction"] for r in timeline] == expected
    for r in timeline:
        probs = [float(r[f"p_{lab}"]) for lab in LABELS]
        assert abs(sum(probs) - 1) < 1e-4 and max(probs) == float(r[f"p_{r['prediction']}"])
        assert r["scored"] == "exact" and r["reason"] == "" and float(r["face_share"]) == 1.0
    (summary,) = rows(arc["run"] / "timeline_summary.csv")
    assert summary["video"] == "arc.mp4" and summary["segments"] == "4" and summary["scored_segments"] == "4"
    assert float(summary["share_sad"]) == pytest.approx(0.5) and float(summary["share_happy"]) == pytest.approx(0.5)
    assert summary["changes"] == "1"
    assert summary["dominant"] == ""  # half and half: no tie is broken


def test_timeline_columns_and_the_run_says_what_it_wrote(arc):
    with open(arc["run"] / "timeline.csv", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert header == ["video", "subject", "segment", "start_s", "end_s", "face_share", "prediction",
                      *[f"p_{lab}" for lab in LABELS], "label", "scored", "reason"]
    with open(arc["run"] / "timeline_summary.csv", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert header == ["video", "subject", "duration_s", "segments", "scored_segments", "dominant",
                      *[f"share_{lab}" for lab in LABELS], "changes"]
    assert "timeline: 4 segments of 1 clips, 4 scored" in arc["err"]
    # the per-segment stages ran once per segment, the per-file ones once
    assert stage_line(arc["err"], "faces").startswith("faces: 0 cached, 1 computed")
    assert stage_line(arc["err"], "expression").startswith("expression: 0 cached, 1 computed")
    for stage in ("keyframes", "context", "classify"):
        assert stage_line(arc["err"], stage).startswith(f"{stage}: 0 cached, 4 computed")
    # predictions.csv has a row per segment, the segment's fields as columns
    preds = rows(arc["run"] / "predictions.csv")
    assert [(r["segment"], r["start_s"], r["end_s"]) for r in preds] == [
        ("0", "0.0", "1.5"), ("1", "1.5", "3.0"), ("2", "3.0", "4.5"), ("3", "4.5", "6.0")]
    units = [r.id for r in RunDir(arc["run"]).manifest() if r.unit]
    assert units[0] == "arc.mp4#segment=0,start_s=0.0,end_s=1.5"


def test_a_segments_keyframes_are_within_it(arc):
    run = RunDir(arc["run"])
    cache = run.cache()
    for row in (r for r in run.manifest() if r.unit):
        kf = cache.get("keyframes", row.artifacts["keyframes"]).json("keyframes.json")
        start, end = row.unit["start_s"], row.unit["end_s"]
        assert kf["timestamps"] and all(start - 1e-3 <= t < end for t in kf["timestamps"])
        assert kf["n_frames"] == sum(1 for i in range(150) if start <= i / 25 < end)  # the segment's frames only


def test_a_new_segment_length_recomputes_only_the_per_segment_stages(arc):
    code, err = run(arc["clip"], arc["root"] / "run2", arc["cache"], "--segments", "2s")
    assert code == EXIT_OK, err
    assert stage_line(err, "faces").startswith("faces: 1 cached, 0 computed")
    assert stage_line(err, "expression").startswith("expression: 1 cached, 0 computed")
    for stage in ("keyframes", "context", "classify"):
        assert stage_line(err, stage).startswith(f"{stage}: 0 cached, 3 computed")
    assert [r["prediction"] for r in rows(arc["root"] / "run2" / "timeline.csv")] == ["sad", "happy", "happy"]
    # and back: every artifact is still in the cache
    code, err = run(arc["clip"], arc["root"] / "run3", arc["cache"], "--segments", "1.5s")
    assert code == EXIT_OK, err
    for stage in ("faces", "expression"):
        assert stage_line(err, stage).startswith(f"{stage}: 1 cached, 0 computed")
    for stage in ("keyframes", "context", "classify"):
        assert stage_line(err, stage).startswith(f"{stage}: 4 cached, 0 computed")
    assert (arc["root"] / "run3" / "timeline.csv").read_bytes() == (arc["run"] / "timeline.csv").read_bytes()


def test_a_run_without_segments_scores_the_whole_clip_as_before(arc):
    code, err = run(arc["clip"], arc["root"] / "whole", arc["cache"])
    assert code == EXIT_OK, err
    assert not (arc["root"] / "whole" / "timeline.csv").exists()
    (pred,) = rows(arc["root"] / "whole" / "predictions.csv")
    assert pred["video"] == "arc.mp4" and "segment" not in pred and pred["prediction"]
    assert stage_line(err, "keyframes").startswith("keyframes: 0 cached, 1 computed")


@pytest.mark.parametrize("value, problem", [("0s", "the length must be more than 0 seconds"),
                                            ("-1", "the length '-1' is not a duration"),
                                            ("4s:0s", "the stride must be more than 0 seconds"),
                                            ("garbage", "the length 'garbage' is not a duration"),
                                            ("4", "the length '4' is not a duration")])
def test_bad_segment_values_are_refused_before_anything_is_touched(arc, value, problem):
    before = {p.name: p.read_bytes() for p in arc["run"].iterdir()}
    code, err = dfer("run", arc["clip"], "--out", arc["run"], "--cache", arc["cache"], f"--segments={value}")
    assert code == EXIT_USAGE
    assert f"--segments {value}: {problem}" in err and "4s:2s" in err
    assert {p.name: p.read_bytes() for p in arc["run"].iterdir()} == before  # nothing of the earlier run is lost


def test_a_segments_setting_that_yaml_reads_as_a_number_is_refused(arc, tmp_path):
    code, err = dfer("run", arc["clip"], "--out", tmp_path / "run", "--set", "faces.segments=4:2")
    assert code == EXIT_USAGE and "faces.segments" in err and "242" in err and "write 4s:2s" in err
    assert not (tmp_path / "run").exists()


def test_labels_with_times_are_scored_per_labelled_span(arc):
    root = arc["root"]
    listing = root / "spans.csv"
    listing.write_text("path,label,start_s,end_s\narc.mp4,sad,0,3\narc.mp4,Happiness,3,6\narc.mp4,happy,,\n")
    code, err = run(listing, root / "spans", arc["cache"], "--segments", "1.5s")
    assert code == EXIT_OK, err
    assert "3 labelled spans scored" in err
    timeline = rows(root / "spans" / "timeline.csv")
    assert [r["label"] for r in timeline] == ["sad", "sad", "happy", "happy"]
    spans_ = rows(root / "spans" / "span_predictions.csv")
    assert [(r["start_s"], r["end_s"], r["label"], r["prediction"], r["segments"]) for r in spans_] == [
        ("0.000", "3.000", "sad", "sad", "2"), ("3.000", "6.000", "happy", "happy", "2"),
        ("0.000", "", "happy", "happy", "4")]  # the whole video: more happy probability over it than sad
    whole = spans_[2]
    mean_happy = np.mean([float(r["p_happy"]) for r in timeline])
    assert float(whole["p_happy"]) == pytest.approx(mean_happy, abs=1e-5)  # equal overlaps: the plain mean


def test_a_clip_level_label_in_a_segmented_run_labels_the_whole_recording(arc, capsys):
    """A labelled dataset run with --segments (no times): each clip is one span over the whole recording, scored by
    all of its segments, and the report's headline is the spans' metrics, not "no labelled clip"."""
    root = arc["root"]
    listing = root / "clip_labels.csv"
    listing.write_text("path,label\narc.mp4,sad\n")
    code, err = run(listing, root / "clip_labels", arc["cache"], "--segments", "1.5s", "--report")
    assert code == EXIT_OK, err
    assert "1 labelled spans scored" in err
    timeline = rows(root / "clip_labels" / "timeline.csv")
    assert [r["label"] for r in timeline] == ["sad"] * 4
    (span,) = rows(root / "clip_labels" / "span_predictions.csv")
    assert (span["start_s"], span["end_s"], span["label"], span["segments"]) == ("0.000", "", "sad", "4")
    mean = {lab: np.mean([float(r[f"p_{lab}"]) for r in timeline]) for lab in LABELS}  # equal overlaps: the mean
    assert span["prediction"] == max(mean, key=mean.get)
    right = span["prediction"] == "sad"
    printed = capsys.readouterr().out + err
    assert f"UAR {100 * right:.2f}  WAR {100 * right:.2f}" in printed
    assert "(1 labelled spans, each scored by its segments" in printed and "no labelled clip" not in printed
    md = (root / "clip_labels" / "report.md").read_text()
    assert "metrics are per labelled span" in md and "No scored clip has a true label" not in md


@pytest.mark.parametrize("body, problem", [
    ("arc.mp4,sad,3,1\n", ":2: start_s 3 and end_s 1: need 0 <= start_s < end_s"),
    ("arc.mp4,sad,x,1\n", ":2: start_s 'x' and end_s '1' must both be seconds"),
    ("arc.mp4,,0,1\n", ":2: a row with start_s/end_s needs a label"),
    ("arc.mp4,joy,0,1\n", "joy"),
])
def test_bad_labelled_spans_are_refused_naming_the_row(arc, tmp_path, body, problem):
    listing = arc["root"] / f"bad_{abs(hash(body))}.csv"
    listing.write_text("path,label,start_s,end_s\n" + body)
    code, err = dfer("run", listing, "--out", tmp_path / "run", "--cache", arc["cache"], "--segments", "1.5s")
    assert code == EXIT_USAGE and str(listing) in err and problem in err
    assert not (tmp_path / "run").exists()


def test_labels_with_times_need_segments(arc, tmp_path):
    listing = arc["root"] / "spans_only.csv"
    listing.write_text("path,label,start_s,end_s\narc.mp4,sad,0,3\n")
    code, err = dfer("run", listing, "--out", tmp_path / "run", "--cache", arc["cache"])
    assert code == EXIT_USAGE and f"{listing}:2: the list file gives labels with times" in err and "--segments" in err
    assert not (tmp_path / "run").exists()


def test_shots_give_one_row_per_shot_and_every_person_their_own_timeline(real_clips, tmp_path):
    clip = real_clips["dialogue"]  # woman [0, 40) | redhead [40, 65) | woman [65, 105) | redhead [105, 130)
    code, err = run(clip.path, tmp_path / "run", tmp_path / "cache", "--segments", "shots", "--set", "faces.subjects=all")
    assert code == EXIT_OK, err
    timeline = rows(tmp_path / "run" / "timeline.csv")
    shots = [(round(clip.time(s.first), 3), round(clip.time(s.stop), 3)) for s in clip.shots]
    assert len(shots) == 4
    for subject, seen_in in (("0", (0, 2)), ("1", (1, 3))):  # the woman (seen longest) is subject 0
        mine = [r for r in timeline if r["subject"] == subject]
        assert [(float(r["start_s"]), float(r["end_s"])) for r in mine] == shots
        for i, r in enumerate(mine):
            if i in seen_in:
                assert r["prediction"] and r["scored"] == "exact" and float(r["face_share"]) > 0.9
            else:  # the other woman's shot: this person is not on screen
                assert r["prediction"] == "" and r["scored"] == "too_little_face"
                assert r["reason"] == ("the face is on 0% of the segment's frames, below faces.segment_min_face=0.5")
    summary = rows(tmp_path / "run" / "timeline_summary.csv")
    assert [(r["subject"], r["segments"], r["scored_segments"]) for r in summary] == [("0", "4", "2"), ("1", "4", "2")]
    assert "timeline: 8 segments of 1 clips, 4 scored (4 too_little_face)" in err


def test_segment_spans():
    assert parse_segments("4s:2s") == SegmentSpec(length=4.0, stride=2.0) and str(parse_segments(" 4S:2s ")) == "4s:2s"
    assert parse_segments("500ms") == SegmentSpec(length=0.5, stride=0.5) and parse_segments("1min").length == 60
    assert parse_segments("shots").shots and parse_segments(None) is None and parse_segments("none") is None
    t = np.arange(250) / 25  # 10 s at 25 fps
    assert spans(parse_segments("4s"), t, 10.0) == [(0, 4), (4, 8), (8, 10)]
    assert spans(parse_segments("4s:2s"), t, 10.0) == [(0, 4), (2, 6), (4, 8), (6, 10)]  # none inside the last
    assert spans(parse_segments("2s:5s"), t, 10.0) == [(0, 2), (5, 7)]  # a stride beyond the length samples
    assert spans(parse_segments("20s"), t, 10.0) == [(0, 10)]


def test_segments_are_drawn_without_gaps_and_overlaps_split_at_the_middle():
    """The band of the report's figure and of the viewer's strips (``drawn``)."""
    starts, ends = zip(*[(0, 4), (4, 8), (8, 10)])  # 4s over 10 s: the last one shorter
    assert drawn(list(starts), list(ends)) == [(0, 4), (4, 8), (8, 10)]  # each whole, no blank stretch before the last
    starts, ends = zip(*[(0, 4), (2, 6), (4, 8), (6, 10)])  # 4s:2s: each overlap split where the middles meet
    assert drawn(list(starts), list(ends)) == [(0, 3), (3, 5), (5, 7), (7, 10)]
    starts, ends = zip(*[(0, 2), (5, 7)])  # 2s:5s samples: the time between is no segment's
    assert drawn(list(starts), list(ends)) == [(0, 2), (5, 7)]


@pytest.fixture(scope="module")
def spans_run(arc):
    """The arc with labels with times (sad for the first half, happy for the second) at 1 s segments every 0.5 s."""
    root = arc["root"]
    listing = root / "halves.csv"
    listing.write_text("path,label,start_s,end_s\narc.mp4,sad,0,3\narc.mp4,happy,3,6\n")
    code, err = run(listing, root / "halves", arc["cache"], "--segments", "1s:0.5s")
    assert code == EXIT_OK, err
    return root / "halves"


def test_the_report_draws_the_timelines_and_scores_the_labelled_spans(spans_run):
    assert dfer_main(["report", str(spans_run)]) == EXIT_OK
    doc = json.loads((spans_run / "metrics.json").read_text())
    t = doc["timelines"]
    assert (t["segments"], t["recordings"], t["drawn"]) == (11, 1, 1)
    (share,) = t["share"]
    timeline = rows(spans_run / "timeline.csv")
    sad = sum(1 for r in timeline if r["prediction"] == "sad")
    assert share["sad"] == pytest.approx(sad / 11, abs=1e-4) and share["happy"] == pytest.approx(1 - sad / 11, abs=1e-4)
    assert t["spans"]["n"] == 2 and t["spans"]["abstained"] == 0
    assert t["spans"]["metrics"]["uar"] == 1.0 and t["spans"]["metrics"]["war"] == 1.0  # each half's span right
    md = (spans_run / "report.md").read_text()
    assert "## Timelines" in md and "![timelines](timelines.png)" in md and "UAR 100.0, WAR 100.0" in md
    with Image.open(spans_run / "timelines.png") as im:
        assert im.width > 500 and im.height > 150


def test_the_view_shows_a_timeline_strip_whose_segments_open_their_cards(spans_run, tmp_path):
    page = write_view(spans_run, tmp_path / "view.html")
    timeline = rows(spans_run / "timeline.csv")
    driver = start_browser()
    try:
        open_page(driver, page)
        assert console_errors(driver) == []
        metrics = driver.find_element("id", "metrics").text
        assert "segments, which carry no label of their own" in metrics and "pass --labels" not in metrics
        segs = driver.find_elements("css selector", ".strip .seg")
        assert len(segs) == 11
        # each block in its label's colour, in time order, none covering another (segments overlap by half)
        boxes = [s.rect for s in segs]
        assert all(a["x"] + a["width"] <= b["x"] + 0.5 for a, b in zip(boxes, boxes[1:]))
        colours = [s.value_of_css_property("background-color") for s in segs]
        by_label = {r["prediction"]: c for r, c in zip(timeline, colours)}
        assert len(by_label) == len(set(by_label.values())) == len({r["prediction"] for r in timeline})
        cards = driver.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.id)")
        assert "arc.mp4" not in cards and len(cards) == 11  # one card per segment, none for the whole clip
        segs[7].click()
        uid = "arc.mp4#segment=7,start_s=3.5,end_s=4.5"
        wait_for(lambda: driver.execute_script("return document.activeElement.dataset.id") == uid)
        card = driver.find_element("css selector", ".card")
        assert card.get_attribute("data-id") == uid
        # its keyframes are the segment's own, at their times in the recording
        times = [float(e.text.split()[0]) for e in card.find_elements("css selector", ".timeline .frame .t")]
        assert times and all(3.5 <= t < 4.5 for t in times)
        assert console_errors(driver) == []
    finally:
        driver.quit()


def test_a_segmented_run_is_not_exported_as_training_data(arc, tmp_path):
    code, err = dfer("export", arc["run"], "--format", "llamafactory", "-o", tmp_path / "ex")
    assert code == EXIT_USAGE, err
    assert f"{arc['run'] / 'config.yaml'}: faces.segments=1.5s" in err and "without --segments" in err
    assert not (tmp_path / "ex").exists()


def test_inspect_draws_a_segment_and_says_how_to_name_one(arc, tmp_path):
    uid = "arc.mp4#segment=2,start_s=3.0,end_s=4.5"
    out = tmp_path / "seg.png"
    code, err = dfer("inspect", arc["run"], uid, "-o", out)
    assert code == EXIT_OK, err
    with Image.open(out) as im:
        assert im.width > 400
    code, err = dfer("inspect", arc["run"], "arc.mp4")
    assert code == EXIT_USAGE
    assert "arc.mp4 was scored segment by segment (--segments): inspect one of its 4 segments, e.g. " \
           "'arc.mp4#segment=0,start_s=0.0,end_s=1.5'" in err
