"""The cluster recipe of docs/cluster.md against a real head started with ``ray start --head`` in a subprocess (not only
against ``ray.init()``): with token authentication on, ``dfer run --ray-address`` says what to set, and with
``RAY_AUTH_MODE=token`` it runs.

The head gets a home folder of its own holding a token (``~/.ray/auth_token``: what any earlier local Ray session
leaves behind, and what makes ``ray start --head`` turn authentication on). It is stopped in teardown by ending
exactly the processes that run from its own temporary folder (never ``ray stop``, which would end every Ray
process of the machine).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.conftest import copy_clip  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_under(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (the head's temporary folder): the ones this head started."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(folder) in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-head")
    home = root / "home"
    temp = Path(f"/tmp/dfer-ray-{secrets.token_hex(4)}")  # short: Ray's socket paths must fit in 107 bytes
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false", f"--temp-dir={temp}",
           "--disable-usage-stats"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Token authentication is enabled" in proc.stdout + proc.stderr
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_under(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 15
            while _pids_under(temp) and time.time() < deadline:
                time.sleep(0.5)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_token_authentication_is_detected_and_the_fix_works(head, clip_dir, tmp_path):
    folder = tmp_path / "in"
    copy_clip(clip_dir["odd.avi"], folder, "a.avi")
    args = [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(tmp_path / "r"), "-q", "--until", "faces",
            "--cache", str(tmp_path / "cache"), "--executor", "ray", "--ray-address", head["address"],
            "--set", "run.ray_num_cpus_per_actor=1"]
    refused = subprocess.run(args, env=head["env"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "cannot connect to the Ray cluster" in refused.stderr and "Set RAY_AUTH_MODE=token" in refused.stderr
    assert not (tmp_path / "r").exists()

    ok = subprocess.run(args, env={**head["env"], "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "faces: 0 cached, 1 computed (1 new clip), 0 failed" in ok.stderr
