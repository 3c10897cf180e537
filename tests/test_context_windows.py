"""context stage planning, no model: the captioning windows of a gap (split_windows) and of a clip (plan_windows)."""

from __future__ import annotations

import numpy as np
import pytest

from stages import context, keyframes
from stages.context import Config, plan_windows, split_windows


@pytest.mark.parametrize("max_size", range(2, 9))
def test_windows_share_out_every_consecutive_pair_once(max_size):
    for n in range(2, 41):
        wins = split_windows(n, max_size)
        pairs = [(i, i + 1) for a, b in wins for i in range(a, b)]
        assert sorted(pairs) == [(i, i + 1) for i in range(n - 1)], (n, max_size, wins)  # each pair exactly once


@pytest.mark.parametrize("max_size", range(2, 9))
def test_windows_overlap_by_one_frame_from_first_to_last(max_size):
    for n in range(2, 41):
        wins = split_windows(n, max_size)
        assert wins[0][0] == 0 and wins[-1][1] == n - 1
        assert all(b == a2 for (_, b), (a2, _) in zip(wins[:-1], wins[1:])), (n, max_size, wins)


@pytest.mark.parametrize("max_size", range(2, 9))
def test_window_sizes_are_even_between_two_and_the_maximum(max_size):
    for n in range(2, 41):
        sizes = [b - a + 1 for a, b in split_windows(n, max_size)]
        assert min(sizes) >= 2 and max(sizes) <= max_size, (n, max_size, sizes)
        assert max(sizes) - min(sizes) <= 1, (n, max_size, sizes)
        assert len(sizes) == -(-(n - 1) // (max_size - 1))  # as few windows as the maximum allows


def test_split_windows_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match="n >= 2"):
        split_windows(1, 4)
    with pytest.raises(ValueError, match="max_size >= 2"):
        split_windows(5, 1)


def _plan(n=100, fps=25.0, picks=(12, 37, 62, 87), **ctx):
    t = np.arange(n) / fps
    kf = {"gaps": keyframes.gaps(list(picks), t, 0.2)}
    return t, plan_windows(t, kf, Config(**ctx))


def test_every_gap_is_seen_from_keyframe_to_keyframe_without_a_single_frame_window():
    """The issue's case: 1 s gaps at 25 fps sample 5 in-between frames; with window_size 4 the old chunks were
    4 + 1 frames and the chunk boundary and both keyframes were never shown next to their neighbours."""
    t, plan = _plan()
    for gap in plan:
        seq = []
        for w in gap["windows"]:
            assert 2 <= len(w["indices"]) <= 4, gap
            assert w["timestamps"] == [float(t[i]) for i in w["indices"]]
            seq += w["indices"] if not seq else w["indices"][1:]
        assert seq[0] == gap["start_index"] and seq[-1] == gap["end_index"]
        assert seq == sorted(set(seq))
        consecutive = {(a, b) for a, b in zip(seq[:-1], seq[1:])}
        together = {(w["indices"][k], w["indices"][k + 1]) for w in gap["windows"] for k in range(len(w["indices"]) - 1)}
        assert consecutive == together
    between = [g for g in plan if g["kind"] == "between"]
    assert [[len(w["indices"]) for w in g["windows"]] for g in between] == [[4, 4]] * 3  # 2 keyframes + 5 sampled


def test_lead_in_starts_at_the_first_frame_and_lead_out_ends_at_the_last():
    _, plan = _plan()
    assert [g["kind"] for g in plan] == ["lead_in", "between", "between", "between", "lead_out"]
    assert plan[0]["windows"][0]["indices"][0] == 0 and plan[0]["windows"][-1]["indices"][-1] == 12
    assert plan[-1]["windows"][0]["indices"][0] == 87 and plan[-1]["windows"][-1]["indices"][-1] == 99


def test_sampled_frames_are_even_in_time_across_the_gap():
    t, plan = _plan(min_frames_per_gap=4, min_fps=4.0)  # 4 in-between frames in a 1 s gap: every 0.2 s
    gap = plan[1]
    frames = [i for w in gap["windows"] for i in w["indices"]]
    times = np.array(sorted({float(t[i]) for i in frames}))
    assert np.allclose(np.diff(times), 0.2, atol=0.021), times  # nearest frames at 25 fps: within half a frame


def test_adjacent_keyframes_make_one_two_frame_window():
    _, plan = _plan(n=10, picks=(3, 4))  # 0.12 s and 0.2 s ends at 25 fps: no lead-in/lead-out gap
    assert [[w["indices"] for w in g["windows"]] for g in plan] == [[[3, 4]]]


def test_window_size_below_two_is_a_config_error():
    with pytest.raises(ValueError, match="window_size"):
        Config(window_size=1)
    assert context.VERSION >= 2
