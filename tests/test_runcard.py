"""The run card: in every run directory (dfer's version and commit, library versions, the models as resolved,
devices and dtypes), in report.md, compared by `dfer compare`; a hub model resolves to the commit of the local
Hugging Face cache's snapshot; presets pin their default model's revision."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers

from pipeline.cli import main
from pipeline.engine.config import load_config
from pipeline.engine.runcard import build_card
from pipeline.engine.rundir import RunDir
from pipeline.report import write_report
from tests.conftest import copy_clip
from tests.runs import run

EMBEDDED = ["classify.model.backend=expression", "context.model.backend=expression"]
REPO = Path(__file__).resolve().parents[1]
QWEN_COMMIT = "66285546d2b821cf421d4f5eb2576359d3770cd3"  # Qwen/Qwen2.5-VL-3B-Instruct on the hub


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_dir):
    root = tmp_path_factory.mktemp("card-in")
    copy_clip(clip_dir["pan.mp4"], root, "a.mp4")
    (root / "list.csv").write_text("path,label\na.mp4,happy\n")
    return root / "list.csv"


@pytest.fixture(scope="module")
def runs(clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    cache = root / "cache"
    run(clips, root / "one", cache, *EMBEDDED)
    run(clips, root / "same", cache, *EMBEDDED)
    run(clips, root / "fp32", cache, *EMBEDDED, "classify.model.dtype=float32")
    return root


def test_every_run_directory_has_a_run_card_and_report_md_shows_it(runs):
    card = RunDir(runs / "one").runcard()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert card["complete"] is True
    assert card["dfer"]["commit"] == head and card["dfer"]["version"] == "0.1.0"
    assert card["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert card["libraries"]["transformers"] == transformers.__version__
    assert "vllm" in card["libraries"]  # None where it is not installed, as here
    classify = card["models"]["classify"]
    assert classify["backend"] == "expression" and classify["identity"]["weights_sha256"]
    assert classify["device"] == "auto" and classify["resolved_device"] == "cpu"
    assert card["devices"]["faces"] == {"setting": "auto", "resolved": "cpu"}
    write_report(runs / "one")
    text = (runs / "one" / "report.md").read_text()
    assert "## Run card" in text and f"commit `{head}`" in text and f"torch {card['libraries']['torch']}" in text
    assert "| classify | `fer-mini-xception-fer2013` (expression) |" in text and "`auto` -> `cpu`" in text


def test_compare_warns_when_two_runs_cards_differ_and_not_when_they_agree(runs, capsys):
    assert main(["compare", str(runs / "one"), str(runs / "same")]) == 0
    assert "cards differ" not in capsys.readouterr().out
    assert main(["compare", str(runs / "one"), str(runs / "fp32")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Warning: the runs' cards differ in 1 entries**")
    assert "| models.classify.dtype | `auto` | `float32` |" in out


def test_compare_warns_about_a_run_without_a_card(runs, tmp_path, capsys):
    old = tmp_path / "old"
    (old).mkdir()
    for f in (runs / "one").iterdir():
        if f.name != "runcard.json":
            (old / f.name).write_bytes(f.read_bytes())
    assert main(["compare", str(runs / "one"), str(old)]) == 0
    assert "**Warning:** no run card for old (written before dfer recorded them)" in capsys.readouterr().out


def test_the_card_a_run_starts_with_holds_the_devices_as_set(runs):
    cfg = load_config(None, EMBEDDED)
    card = build_card({"faces": cfg.faces, "classify": cfg.classify}, complete=False)
    assert card["complete"] is False and "gpus" not in card["machine"]
    assert card["devices"]["faces"] == {"setting": "auto", "resolved": None}
    assert card["models"]["classify"]["resolved_device"] is None


def test_devices_not_resolved_here_are_unknown_not_different(runs, tmp_path, capsys):
    cfg = load_config(None, EMBEDDED)
    stages = RunDir(runs / "same").status()["stages"]
    card = build_card({s: getattr(cfg, s) for s in stages}, complete=True, here=False)  # e.g. on a Ray cluster
    assert card["models"]["classify"]["resolved_device"] is None and "gpus" not in card["machine"]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs / "same", elsewhere)
    RunDir(elsewhere).write_runcard(card)
    assert main(["compare", str(runs / "one"), str(elsewhere)]) == 0
    assert "cards differ" not in capsys.readouterr().out
    write_report(elsewhere)
    assert "so they were not resolved here" in (elsewhere / "report.md").read_text()


def _fake_hub_cache(root: Path, repo: str, commit: str, ref: str = "main") -> Path:
    """A Hugging Face cache as huggingface_hub lays it out: refs/<ref> holds the commit, snapshots/<commit>/ the files."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text('{"model_type": "qwen2_5_vl", "torch_dtype": "bfloat16"}')
    return root


def test_a_hub_model_resolves_to_the_commit_of_its_snapshot_in_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "Qwen/Qwen2.5-VL-3B-Instruct", "a" * 40)
    _fake_hub_cache(tmp_path / "hub", "Qwen/Qwen2.5-VL-3B-Instruct", "b" * 40, ref="v1")
    cfg = load_config()
    card = build_card({"classify": cfg.classify}, complete=True)["models"]["classify"]
    assert card["revision"] is None and card["resolved_revision"] == "a" * 40  # main
    assert card["resolved_device"] == "cpu" and card["resolved_dtype"] == "float32"  # auto on CPU
    assert card["attn_implementation"] == "auto"
    eager = load_config(None, ["classify.model.attn_implementation=eager"])
    assert build_card({"classify": eager.classify}, True)["models"]["classify"]["attn_implementation"] == "eager"
    tagged = load_config(None, ["classify.model.revision=v1"])
    assert build_card({"classify": tagged.classify}, True)["models"]["classify"]["resolved_revision"] == "b" * 40
    missing = load_config(None, ["classify.model.model=org/not-downloaded"])
    assert build_card({"classify": missing.classify}, True)["models"]["classify"]["resolved_revision"] is None


def test_the_msce_preset_pins_its_models_revision_and_drops_the_pin_for_another_model():
    cfg = load_config(preset="msce")
    assert cfg.classify.model.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.classify.model.revision == cfg.context.model.revision == QWEN_COMMIT
    other = load_config(preset="msce", overrides=["classify.model.model=org/other"])
    assert other.classify.model.revision is None and other.context.model.model == "org/other"
    assert load_config(preset="msce", overrides=["classify.model=org/other"]).classify.model.revision is None
    pinned = load_config(preset="msce", overrides=["classify.model.model=org/other", "classify.model.revision=abc"])
    assert pinned.classify.model.revision == "abc"


def test_the_card_of_a_model_on_a_vllm_server_records_the_servers_version(vllm_server, vllm_tiny_model):
    from tests import servers

    installed = subprocess.run([str(servers.vllm_python()), "-c", "import vllm; print(vllm.__version__)"],
                               capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout.strip()
    cfg = load_config(None, ["classify.model.backend=openai", f"classify.model.model={vllm_tiny_model}",
                             f"classify.model.server_url={vllm_server.v1}"])
    card = build_card({"classify": cfg.classify}, complete=True)["models"]["classify"]
    assert installed and card["server_version"] == installed
    assert card["identity"] == {"backend": "openai", "model": vllm_tiny_model}
