"""keyframes stage: uniform by time, motion apex of a micro-expression, gaps for the context stage."""

from __future__ import annotations

import numpy as np
import pytest

from stages import keyframes
from stages.keyframes import Config, apex_indices, choose, gaps, uniform_indices
from tests.runs import artifact, run, track_of


def test_uniform_is_even_in_time_not_in_frame_index():
    # irregular timestamps: dense at the start, sparse at the end
    t = np.concatenate([np.linspace(0, 1, 100, endpoint=False), np.linspace(1, 4, 10)])
    picks = uniform_indices(t, 4, np.ones(len(t), bool))
    assert np.allclose(t[picks], [0.5, 1.5, 2.5, 3.5], atol=0.35)


def test_apex_respects_separation_and_allowed_frames():
    t = np.linspace(0, 2, 201)
    curve = np.exp(-((t - 0.5) ** 2) / 0.002) + 0.8 * np.exp(-((t - 0.55) ** 2) / 0.002) + 0.5 * np.exp(-((t - 1.5) ** 2) / 0.002)
    allowed = np.ones(len(t), bool)
    picks = apex_indices(t, curve, 3, 0.3, allowed)
    # the merged 0.5/0.55 bump counts once (0.3 s separation), then the 1.5 s peak
    assert abs(t[picks[0]] - 0.52) <= 0.02 and abs(t[picks[1]] - 1.5) <= 0.01
    assert all(abs(t[a] - t[b]) >= 0.3 for a in picks for b in picks if a != b)
    allowed[140:160] = False
    assert all(not (140 <= i < 160) for i in apex_indices(t, curve, 3, 0.3, allowed))


@pytest.mark.parametrize("strategy", ["uniform", "motion_apex", "hybrid"])
def test_choose_always_returns_k_sorted_unique(strategy):
    t = np.linspace(0, 1, 7)
    curves = {"expression": np.zeros(7), "motion": np.zeros(7)}
    picks = choose(t, curves, Config(k=5, strategy=strategy), np.ones(7, bool))
    assert picks == sorted(set(picks)) and len(picks) == 5


def test_motion_apex_catches_a_micro_expression_that_uniform_misses(special_clips, tmp_path):
    spec = special_clips["expr"]  # 0.4 s mouth event, apex at 2.1 s, face otherwise still
    t0, t1 = spec.expression
    res_u = run(spec.path, tmp_path / "u", tmp_path / "cache", "keyframes.strategy=uniform", "keyframes.k=3")
    ku = artifact(res_u, "expr.mp4", "keyframes").json("keyframes.json")
    assert not any(t0 <= ts <= t1 for ts in ku["timestamps"]), ku["timestamps"]

    res_a = run(spec.path, tmp_path / "a", tmp_path / "cache", "keyframes.strategy=motion_apex", "keyframes.k=3")
    ka = artifact(res_a, "expr.mp4", "keyframes").json("keyframes.json")
    assert any(abs(ts - spec.apex) <= 0.1 for ts in ka["timestamps"]), (ka["timestamps"], spec.apex)

    res_h = run(spec.path, tmp_path / "h", tmp_path / "cache", "keyframes.strategy=hybrid", "keyframes.k=4")
    kh = artifact(res_h, "expr.mp4", "keyframes").json("keyframes.json")
    assert any(abs(ts - spec.apex) <= 0.1 for ts in kh["timestamps"]), kh["timestamps"]
    # the faces artifact was shared by all three runs
    assert res_a.reports[0].cached == 1 and res_h.reports[0].cached == 1


def test_gaps_list_the_in_between_frames(clip_dir, tmp_path):
    spec = clip_dir["pan.mp4"]
    res = run(spec.path, tmp_path / "r", tmp_path / "cache", "keyframes.k=4", "keyframes.strategy=uniform")
    kf = artifact(res, "pan.mp4", "keyframes").json("keyframes.json")
    idx = kf["indices"]
    assert len(idx) == 4 and idx == sorted(idx)
    between = [g for g in kf["gaps"] if g["kind"] == "between"]
    assert len(between) == 3
    for g, a, b in zip(between, idx[:-1], idx[1:]):
        assert (g["start_index"], g["end_index"]) == (a, b)
        assert g["between"] == list(range(a + 1, b))
        assert g["t_start"] < g["t_end"]
    curves = artifact(res, "pan.mp4", "keyframes").npz("motion.npz")
    assert curves["motion"].shape == curves["expression"].shape == (spec.n_frames,)


def test_lead_in_and_lead_out_gaps_cover_the_clip_ends(clip_dir, tmp_path):
    """With 4 uniform keyframes an eighth of the clip lies before the first and after the last: each is a gap,
    from the clip's first frame and to its last frame, listed in time order with its kind."""
    spec = clip_dir["pan.mp4"]  # 2 s at 25 fps: the ends are 0.24 s long, above the 0.2 s default
    res = run(spec.path, tmp_path / "r", tmp_path / "cache", "keyframes.k=4", "keyframes.strategy=uniform")
    kf = artifact(res, "pan.mp4", "keyframes").json("keyframes.json")
    idx, last = kf["indices"], spec.n_frames - 1
    assert [g["kind"] for g in kf["gaps"]] == ["lead_in", "between", "between", "between", "lead_out"]
    lead_in, lead_out = kf["gaps"][0], kf["gaps"][-1]
    assert (lead_in["start_index"], lead_in["end_index"], lead_in["t_start"]) == (0, idx[0], 0.0)
    assert lead_in["between"] == list(range(1, idx[0]))
    assert (lead_out["start_index"], lead_out["end_index"]) == (idx[-1], last)
    assert lead_out["t_end"] == pytest.approx(spec.timestamps[-1])
    assert [g["t_start"] for g in kf["gaps"]] == sorted(g["t_start"] for g in kf["gaps"])

    # a threshold above the ends' length: no lead-in/lead-out gaps (and only keyframes recomputed)
    res2 = run(spec.path, tmp_path / "r2", tmp_path / "cache", "keyframes.k=4", "keyframes.strategy=uniform",
               "keyframes.edge_gap_min_s=0.5")
    kf2 = artifact(res2, "pan.mp4", "keyframes").json("keyframes.json")
    assert [g["kind"] for g in kf2["gaps"]] == ["between"] * 3


def test_duration_is_the_clips_duration_not_the_last_timestamp(clip_dir, tmp_path):
    spec = clip_dir["pan.mp4"]  # 50 frames at 25 fps: the last frame starts at 1.96 s and ends at 2.00 s
    res = run(spec.path, tmp_path / "r", tmp_path / "cache")
    kf = artifact(res, "pan.mp4", "keyframes").json("keyframes.json")
    assert spec.timestamps[-1] == pytest.approx(1.96)
    assert kf["duration_s"] == pytest.approx(spec.duration) == pytest.approx(2.0)


def test_gaps_plan_is_pure_and_respects_the_edge_threshold():
    t = np.arange(100) / 25.0  # 4 s at 25 fps
    g = gaps([12, 37, 62, 87], t, edge_min_s=0.2)
    assert [(x["kind"], x["start_index"], x["end_index"]) for x in g] == [
        ("lead_in", 0, 12), ("between", 12, 37), ("between", 37, 62), ("between", 62, 87), ("lead_out", 87, 99)]
    assert [x["kind"] for x in gaps([0, 37, 62, 99], t, edge_min_s=0.2)] == ["between"] * 3
    assert [x["kind"] for x in gaps([12, 37, 62, 87], t, edge_min_s=0.48)] == ["between"] * 3  # 0.48 s is not longer


def whole_clip_motion_curves(track, cfg):
    """The straightforward computation with every crop of the clip in memory at once: the oracle."""
    n, s, t = len(track), cfg.work_size, track.t
    gray = track.crops(range(n), size=s, gray=True).astype(np.float32) / 255.0
    masks = keyframes._region_masks(track.landmarks_in_crop(s), s)
    wsum = masks.reshape(n, -1).sum(axis=1)
    motion = np.zeros(n, np.float32)
    if n > 1:
        diff = np.abs(gray[1:] - gray[:-1]) * masks[1:]
        motion[1:] = diff.reshape(n - 1, -1).sum(axis=1) / wsum[1:] / np.maximum(np.diff(t), 1e-3)
    expression = (np.abs(gray - np.median(gray, axis=0)) * masks).reshape(n, -1).sum(axis=1) / wsum
    return {"t": t, "motion": keyframes._gauss_smooth(motion, t, cfg.smooth_s).astype(np.float32),
            "expression": keyframes._gauss_smooth(expression.astype(np.float32), t, cfg.smooth_s).astype(np.float32)}


@pytest.mark.parametrize("chunk", [7, 256])
def test_streamed_motion_curves_equal_the_whole_clip_computation(clip_dir, special_clips, tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(keyframes, "CHUNK", chunk)
    for spec in (clip_dir["pan.mp4"], special_clips["expr"]):  # 50 and 75 frames: even and odd medians
        res = run(spec.path, tmp_path / f"run-{spec.path.name}", tmp_path / "cache", until="faces")
        track = track_of(res, spec.path.name)
        assert len(track) == spec.n_frames
        got, want = keyframes.motion_curves(track, Config()), whole_clip_motion_curves(track, Config())
        for name in ("t", "motion", "expression"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{spec.path.name} {name}")


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_streamed_pixel_median_is_numpys_median(n):
    images = np.random.default_rng(n).integers(0, 256, (n, 9, 11), dtype=np.uint8)
    med = keyframes._PixelMedian((9, 11))
    for lo in range(0, n, 2):
        med.add(images[lo : lo + 2])
    want = np.median(images.astype(np.float32) / 255.0, axis=0)
    assert med.median().dtype == want.dtype
    np.testing.assert_array_equal(med.median(), want)
