"""classify.label_order: the label list of the prompt in the label set's order, reversed, or shuffled per clip; part
of the cache key only when not fixed; the report shows how often each position of the list was predicted; one sweep
with a baseline measures the order effect."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.core.jobs import ClipJob
from pipeline.engine.config import key_fields, load_config
from pipeline.engine.rundir import RunDir
from pipeline.tools.sweep import run_sweep
from stages import classify
from tests.conftest import copy_clip
from tests.tiny_models import shared_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DFEW = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


def _models() -> list[str]:
    return ["context.model.backend=expression", f"classify.model.model={shared_tiny_model_dir('qwen2vl')}",
            "run.workers=1"]


@pytest.fixture(scope="module")
def order_sweep(tmp_path_factory, clip_dir, special_clips):
    root = tmp_path_factory.mktemp("order")
    copy_clip(clip_dir["pan.mp4"], root / "in", "a.mp4")
    copy_clip(special_clips["expr"], root / "in", "b.mp4")
    copy_clip(special_clips["vfr"], root / "in", "c.mp4")
    (root / "in" / "list.csv").write_text("path,label\na.mp4,happy\nb.mp4,surprise\nc.mp4,sad\n")
    result = run_sweep(root / "in" / "list.csv", root / "out", ["classify.label_order=fixed,reversed,shuffled"],
                       overrides=_models(), cache_dir=root / "cache", quiet=True, log=io.StringIO(),
                       baseline="label_order=fixed")
    return root, result


def _job(fingerprint: str) -> ClipJob:
    return ClipJob("v.mp4", None, fingerprint, None, {})


def test_the_order_is_fixed_reversed_or_shuffled_per_clip_and_always_the_same_for_one_clip():
    cfg = {o: load_config(None, [f"classify.label_order={o}"]).classify for o in ("fixed", "reversed", "shuffled")}
    assert classify.shown_labels(cfg["fixed"], _job("f1"), DFEW) == DFEW
    assert classify.shown_labels(cfg["reversed"], _job("f1"), DFEW) == DFEW[::-1]
    orders = [classify.shown_labels(cfg["shuffled"], _job(f"fp{i}"), DFEW) for i in range(20)]
    assert all(sorted(o) == sorted(DFEW) for o in orders) and len({tuple(o) for o in orders}) > 15
    assert classify.shown_labels(cfg["shuffled"], _job("fp3"), DFEW) == orders[3]  # seeded by the clip
    reseeded = load_config(None, ["classify.label_order=shuffled", "classify.label_order_seed=1"]).classify
    assert classify.shown_labels(reseeded, _job("fp3"), DFEW) != orders[3]


def test_only_an_order_other_than_fixed_enters_the_cache_key():
    default, fixed = load_config().classify, load_config(None, ["classify.label_order=fixed"]).classify
    assert "label_order" not in key_fields(default) and "label_order_seed" not in key_fields(default)
    assert classify.key_extras(default) == classify.key_extras(fixed)
    assert set(classify.key_extras(default)) == {"model", "template", "labels"}  # as before label_order existed
    rev = classify.key_extras(load_config(None, ["classify.label_order=reversed"]).classify)
    assert rev["label_order"] == "reversed" and "label_order_seed" not in rev
    shuf = [classify.key_extras(load_config(None, ["classify.label_order=shuffled",
                                                    f"classify.label_order_seed={s}"]).classify) for s in (0, 1)]
    assert shuf[0] != shuf[1] and shuf[0]["label_order_seed"] == 0


def _rows(run_dir) -> list[dict]:
    return [r for _, r in RunDir(run_dir).scores()]


def test_each_order_scores_the_same_labels_and_records_the_order_the_prompt_showed(order_sweep):
    root, result = order_sweep
    fixed, rev, shuf = (root / "out" / f"label_order={o}" for o in ("fixed", "reversed", "shuffled"))
    assert all(r.status == "complete" and r.result.n_failed == 0 for r in result.rows)
    # upstream artifacts are shared; only classify computed again for each order
    assert [r.computed() for r in result.rows[1:]] == [{"classify": 3}, {"classify": 3}]
    assert all("label_order" not in r for r in _rows(fixed))
    assert all(r["label_order"] == DFEW[::-1] for r in _rows(rev))
    shown = {r["video"]: r["label_order"] for r in _rows(shuf)}
    assert all(sorted(o) == sorted(DFEW) for o in shown.values()) and len({tuple(o) for o in shown.values()}) == 3
    # the same labels are scored; the prompt differs, so do the tiny model's scores
    assert all(set(r["scores"]) == set(DFEW) for r in _rows(rev) + _rows(shuf))
    assert [r["scores"] for r in _rows(fixed)] != [r["scores"] for r in _rows(rev)]


def test_the_report_shows_how_often_each_position_was_predicted_when_the_order_varies(order_sweep):
    root, result = order_sweep
    reports = {r.combination.name: r.report for r in result.rows}
    assert "label_positions" not in reports["label_order=fixed"]
    lp = reports["label_order=shuffled"]["label_positions"]
    rows = _rows(root / "out" / "label_order=shuffled")
    truth = {"a.mp4": "happy", "b.mp4": "surprise", "c.mp4": "sad"}
    for k in range(7):  # by hand from scores.jsonl
        assert lp["rows"][k]["predicted"] == pytest.approx(sum(r["prediction"] == r["label_order"][k] for r in rows) / 3)
        assert lp["rows"][k]["true"] == pytest.approx(sum(truth[r["video"]] == r["label_order"][k] for r in rows) / 3)
    assert lp["orders"] == ["shuffled"] and reports["label_order=reversed"]["label_positions"]["orders"] == ["reversed"]
    md = (root / "out" / "label_order=shuffled" / "report.md").read_text()
    assert "## Position of the label in the prompt's list" in md
    first = lp["rows"][0]
    assert f"| 1 | {100 * first['predicted']:.2f} | {100 * first['true']:.2f} |" in md


def test_the_sweep_pairs_each_order_with_the_fixed_one(order_sweep):
    root, result = order_sweep
    table = (root / "out" / "sweep.md").read_text()
    assert "Δ UAR vs baseline (points) [95% CI]" in table and "McNemar p" in table
    assert "Differences to the baseline `label_order=fixed`" in table
    base = next(line for line in table.splitlines() if line.startswith("| [label_order=fixed]"))
    assert base.rstrip().endswith("classify 3 | baseline | baseline | baseline | - |")
    saved = json.loads((root / "out" / "sweep.json").read_text())
    vs = {r["name"]: r.get("vs_baseline") for r in saved["rows"]}
    assert vs["label_order=fixed"] is None and vs["label_order=reversed"]["shared"] == 3
