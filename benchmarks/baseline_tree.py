"""The repository as it was at a git revision, unpacked into a folder, so that a benchmark can run the code
before and after a change side by side (each in its own child process, ``PYTHONPATH`` pointing at one tree).

``BEFORE`` is the commit of ``main`` before the faces/keyframes/fingerprint performance work (issue 15):
pass ``--before REF`` to a benchmark to compare with another revision.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "3fb5e25"


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
