"""The repository as it was at a git revision, unpacked into a folder, so that a benchmark can run the code
before and after a change side by side (each in its own child process, ``PYTHONPATH`` pointing at one tree).

``BEFORE`` is the commit of ``main`` before the faces/keyframes/fingerprint performance work (issue 15):
pass ``--before REF`` to a benchmark to compare with another revision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "4902b3a"  # main when this work was rebased on it (its faces, tracking and video code: as at 5701304)


def unpack(ref: str, dest: Path | None = None) -> tuple[Path, str]:
    """``git archive`` of ``ref`` unpacked under ``dest`` (a new temporary folder by default); returns the folder
    and the full commit id."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    dest = Path(dest) if dest else Path(tempfile.mkdtemp(prefix=f"dfer-{commit[:8]}-"))
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as buf:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], stdout=buf, check=True)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(dest, filter="data")
    return dest, commit


def env_for(tree: Path) -> dict[str, str]:
    """Environment for a child process that must import ``pipeline`` and ``stages`` from ``tree`` (not from the
    editable install of the working tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    return env


class TreeProcess:
    """A long-lived child process ``python SCRIPT --child ARGS...`` that imports from ``tree``; it reads one JSON
    command per line on stdin and answers one JSON object per line (``{"error": ...}`` when the command failed)."""

    def __init__(self, script: Path, tree: Path, *args: str):
        self.tree = tree
        self.proc = subprocess.Popen([sys.executable, str(script), "--child", *args], cwd=tree, env=env_for(tree),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"child for {self.tree} died (exit {self.proc.wait()}) on {cmd}")
        out = json.loads(line)
        if "error" in out:
            raise SystemExit(f"child for {self.tree}: {out['error']}")
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
