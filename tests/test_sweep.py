"""dfer sweep: a grid of config values run over one shared cache (only what a value changes is recomputed), then
sweep.md / sweep.png with `dfer report`'s numbers; bad combinations are refused before anything runs."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.core.errors import ConfigError
from pipeline.report import ci_text, pct
from pipeline.tools.sweep import parse_grid, plan_sweep, run_sweep, sweep_figure
from tests.conftest import copy_clip
from tests.tiny_models import shared_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir, special_clips):
    root = tmp_path_factory.mktemp("sweep-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    copy_clip(special_clips["expr"], root, "b.mp4")
    (root / "list.csv").write_text("path,label\na.mp4,happy\nb.mp4,surprise\n")
    return root / "list.csv"


def _models() -> list[str]:
    return [f"context.model.model={shared_tiny_model_dir('idefics3')}", "context.model.max_new_tokens=6",
            f"classify.model.model={shared_tiny_model_dir('qwen2vl')}", "run.workers=1"]


@pytest.fixture(scope="module")
def window_sweep(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("sweep")
    result = run_sweep(clips, root / "out", ["context.window_size=3,4"], overrides=_models(), cache_dir=root / "cache",
                       quiet=True, log=io.StringIO())
    return root, result


def _counts(row) -> dict:
    return {r.stage: (r.cached, r.computed, dict(r.reasons)) for r in row.result.reports}


def test_grid_values_parse_as_yaml_and_name_the_run_directories():
    axes = parse_grid(["classify.dense_fps=null,1,2.5", "keyframes.k=2,4", "classify.labels=[a, b],dfew"])
    assert [a.values for a in axes] == [(None, 1, 2.5), (2, 4), (["a", "b"], "dfew")]
    assert [a.numeric for a in axes] == [False, True, False]
    combos = plan_sweep(parse_grid(["classify.dense_fps=null,5", "keyframes.k=2,4"]))
    assert [c.name for c in combos] == ["dense_fps=null,k=2", "dense_fps=null,k=4", "dense_fps=5,k=2", "dense_fps=5,k=4"]
    assert [(c.cfg.classify.dense_fps, c.cfg.keyframes.k) for c in combos] == [(None, 2), (None, 4), (5, 2), (5, 4)]


def test_a_combination_with_a_bad_value_is_refused_before_anything_runs(tmp_path, clips):
    with pytest.raises(ConfigError, match=r"2 of 3 sweep combinations are not valid.*\nk=many: .*keyframes\.k.*\nk=0: "):
        run_sweep(clips, tmp_path / "out", ["keyframes.k=2,many,0"], cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="keyframes.k: given by both --set and --grid"):
        run_sweep(clips, tmp_path / "out", ["keyframes.k=2,3"], overrides=["keyframes.k=4"], cache_dir=tmp_path / "c")
    assert main(["sweep", str(clips), "--out", str(tmp_path / "out"), "--grid", "classify.labels=dfew,nope"]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()


def test_a_sweep_over_a_context_setting_recomputes_only_context_and_classify(window_sweep):
    _, result = window_sweep
    first, second = result.rows
    assert all(r.status == "complete" and r.result.n_failed == 0 for r in result.rows)
    assert {s: c[:2] for s, c in _counts(first).items()} == {"faces": (0, 2), "keyframes": (0, 2), "context": (0, 2),
                                                              "classify": (0, 2)}
    assert _counts(second) == {"faces": (2, 0, {}), "keyframes": (2, 0, {}), "context": (0, 2, {"config changed": 2}),
                               "classify": (0, 2, {"upstream changed": 2})}


def test_sweep_table_holds_dfer_reports_numbers_and_the_plot_is_written(window_sweep, tmp_path):
    root, result = window_sweep
    table = (root / "out" / "sweep.md").read_text()
    for row in result.rows:
        assert main(["report", str(row.run_dir), "--out", str(tmp_path / row.combination.name)]) == 0
        m = json.loads((tmp_path / row.combination.name / "metrics.json").read_text())["metrics_all_clips"]  # headline
        cells = [f"{pct(m[k])} {ci_text(m['ci'][k])}" for k in ("uar", "war", "macro_f1")]
        line = next(x for x in table.splitlines() if x.startswith(f"| [{row.combination.name}]"))
        # scored 2, abstained 0, partial 0, failed 0, the headline metrics, then the models that ran
        assert re.search(r"\| complete \| 2 \| 0 \| 0 \| 0 \| " + re.escape(" | ".join(cells)) + r" \|", line), (line, cells)
        assert (f"context: {shared_tiny_model_dir('idefics3')} (transformers); "
                f"classify: {shared_tiny_model_dir('qwen2vl')} (transformers)") in line
    with Image.open(root / "out" / "sweep.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 200
    saved = json.loads((root / "out" / "sweep.json").read_text())
    assert [r["computed"] for r in saved["rows"]] == [{"faces": 2, "keyframes": 2, "context": 2, "classify": 2},
                                                       {"context": 2, "classify": 2}]


def test_running_the_same_sweep_again_recomputes_nothing(window_sweep, clips):
    root, _ = window_sweep
    again = run_sweep(clips, root / "out", ["context.window_size=3,4"], overrides=_models(), cache_dir=root / "cache",
                      quiet=True, log=io.StringIO())
    for row in again.rows:
        assert {s: c[1] for s, c in _counts(row).items()} == {"faces": 0, "keyframes": 0, "context": 0, "classify": 0}
    assert "| nothing |" in (root / "out" / "sweep.md").read_text()


def test_a_non_numeric_value_puts_the_swept_key_on_a_categorical_axis(window_sweep, clips):
    root, _ = window_sweep
    result = run_sweep(clips, root / "dense", ["classify.dense_fps=null,2"], overrides=_models(),
                       cache_dir=root / "cache", quiet=True, log=io.StringIO())
    assert [r.computed() for r in result.rows] == [{}, {"classify": 2}]  # null: the window_size=4 run, all cached
    ax = sweep_figure(result).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["null", "2"] and ax.get_xlabel() == "classify.dense_fps"
