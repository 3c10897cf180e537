"""Config: defaults, YAML + --set, errors that name the key, `dfer config show`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.engine.config import ConfigError, key_fields, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("faces:\n  crop_size: 160\nkeyframes:\n  k: 6\n")
    cfg = load_config(f, ["keyframes.k=8", "faces.thresholds=[0.5, 0.6, 0.7]", "faces.no_face=full_frame"])
    assert cfg.faces.crop_size == 160
    assert cfg.keyframes.k == 8  # --set wins over the file
    assert cfg.faces.thresholds == (0.5, 0.6, 0.7)
    assert cfg.faces.no_face == "full_frame"
    assert load_config().keyframes.k == 4


def test_unknown_key_names_it_and_lists_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'faces\.crop_sise'.*allowed keys in \[faces\]:.*crop_size"):
        load_config(None, ["faces.crop_sise=200"])
    f = tmp_path / "c.yaml"
    f.write_text("keyframe:\n  k: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'keyframe'.*c\.yaml.*allowed keys in \[top level\]:.*keyframes"):
        load_config(f)


def test_bad_value_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"bad value for 'keyframes\.k'.*integer.*'many'"):
        load_config(None, ["keyframes.k=many"])
    with pytest.raises(ConfigError, match=r"bad value for 'keyframes\.strategy'.*'uniform', 'motion_apex', 'hybrid' or 'expression_apex'"):
        load_config(None, ["keyframes.strategy=random"])
    with pytest.raises(ConfigError, match=r"--set expects section\.key=value"):
        load_config(None, ["keyframes.k"])


def test_bad_yaml_file_is_named(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("faces: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_key_fields_leave_out_devices_and_batch_sizes():
    cfg = load_config(None, ["faces.device=cpu", "faces.detect_batch=2"])
    kf = key_fields(cfg.faces)
    assert "device" not in kf and "detect_batch" not in kf and "decoder_threads" not in kf
    assert kf["crop_size"] == 224


def test_config_show_prints_resolved_config():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "config", "show", "--set", "keyframes.k=7"],
        capture_output=True, text=True, check=True,
    ).stdout
    doc = yaml.safe_load(out)
    assert doc["keyframes"]["k"] == 7
    assert doc["faces"]["crop_size"] == 224  # defaults included
    assert list(doc)[:4] == ["run", "faces", "expression", "keyframes"]
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--set", "nope.x=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key 'nope'" in bad.stderr


def _preset_folder(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "fast.yaml").write_text("keyframes:\n  k: 2\n  strategy: uniform\nclassify:\n  labels: mafw\n")
    monkeypatch.setenv("DFER_PRESET_PATH", str(folder))
    return folder


def test_preset_is_applied_before_config_file_and_overrides(tmp_path, monkeypatch):
    _preset_folder(tmp_path, monkeypatch)
    f = tmp_path / "c.yaml"
    f.write_text("keyframes:\n  k: 3\n")
    assert load_config(None, preset="fast").keyframes.k == 2
    cfg = load_config(f, preset="fast")
    assert (cfg.keyframes.k, cfg.keyframes.strategy, cfg.classify.labels) == (3, "uniform", "mafw")
    assert load_config(f, ["keyframes.k=5"], preset="fast").keyframes.k == 5


def test_unknown_preset_lists_the_available_ones(tmp_path, monkeypatch):
    _preset_folder(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=r"unknown preset 'fats'; available presets: fast"):
        load_config(None, preset="fats")
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "fats"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "available presets: fast" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "fast"],
                        capture_output=True, text=True, check=True)
    assert yaml.safe_load(ok.stdout)["keyframes"]["k"] == 2


def test_a_model_id_alone_sets_the_model_of_either_model_section():
    cfg = load_config(None, ["classify.model=/models/qwen", "context.model=org/captioner"])
    assert cfg.classify.model.model == "/models/qwen" and cfg.classify.model.backend == "transformers"
    assert cfg.context.model.model == "org/captioner"


@pytest.mark.parametrize("override", ["context.model.model=org/captioner", "context.model=org/captioner"])
def test_a_partial_model_override_keeps_the_stages_other_model_defaults(override):
    cfg = load_config(None, [override])
    assert cfg.context.model.model == "org/captioner"
    assert cfg.context.model.max_new_tokens == 40  # the captioner's default, not ModelConfig's 48
    assert load_config(None, ["context.model.batch_size=2"]).context.model.model == "HuggingFaceTB/SmolVLM-256M-Instruct"


def test_a_partial_model_section_in_a_config_file_keeps_the_stages_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("context:\n  model:\n    dtype: bfloat16\nclassify:\n  model:\n    revision: abc\n")
    cfg = load_config(f, [])
    assert (cfg.context.model.model, cfg.context.model.max_new_tokens, cfg.context.model.dtype) == (
        "HuggingFaceTB/SmolVLM-256M-Instruct", 40, "bfloat16")
    assert (cfg.classify.model.model, cfg.classify.model.revision) == ("Qwen/Qwen2.5-VL-3B-Instruct", "abc")


def test_naming_a_backend_with_a_model_of_its_own_gives_that_model():
    cfg = load_config(None, ["context.model.backend=expression"])
    assert cfg.context.model.model == "fer-mini-xception-fer2013" and cfg.context.model.max_new_tokens == 40
    assert load_config(None, ["classify.model.backend=openai"]).classify.model.model == "Qwen/Qwen2.5-VL-3B-Instruct"
