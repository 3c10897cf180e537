"""A warm run over a big folder that is already fully cached, against the cold run that filled the cache.

A run must fingerprint every clip (the sha256 of its bytes goes into every cache key). Before issue 15 a warm
run read every video again to do so; now the cache remembers each file's fingerprint with its size, mtime and
inode (:mod:`pipeline.engine.fingerprints`) and reads only files that changed. Measured here, each as one
``python -m pipeline.cli run FOLDER --until faces -q`` process (wall time of the whole command, Python start-up
included, as a user sees it):

* **cold**: empty cache, every clip decoded and its faces found;
* **warm**: the same command again: everything cached, fingerprints from the memo;
* **warm --rehash**: the same, but every file read and hashed again (what every warm run did before).

Clips: ``--clips`` (default 2000) code-generated clips of ``--seconds`` (default 3) s, 160x120 at 10 fps
(``tests/media.py``, one face, a different background seed each, so every clip has its own content and key),
made once into ``--clips-dir`` (default ``~/.cache/dfer-bench/warm-N``) and reused. Small files keep the cold
run short; with real videos (megabytes each) hashing costs more and the warm run gains more.

Run: ``python benchmarks/warm_run.py`` (cold run several minutes on 2 cores), ``--clips 200`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
med = statistics.median


def make_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    sys.path.insert(0, str(REPO))
    from tests.media import make_face_clip

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    t0 = time.perf_counter()
    for i in range(n):
        p = folder / f"c{i:05d}.mp4"
        if not p.is_file():
            tmp = folder / f".c{i:05d}.mp4"
            make_face_clip(tmp, size=(160, 120), fps=10, seconds=seconds, motion="pan", seed=i)
            os.replace(tmp, p)
        paths.append(p)
    print(f"{n} clips in {folder} ({sum(p.stat().st_size for p in paths) / 1e6:.1f} MB; made or found in "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


def dfer_run(folder: Path, cache: Path, out: Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(out), "--cache", str(cache),
           "--until", "faces", "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(['dfer run', *extra]) or 'dfer run':24s} {seconds:8.2f} s   {proc.stderr.strip().splitlines()[0]}", flush=True)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3, help="warm and warm --rehash runs, interleaved (medians)")
    ap.add_argument("--clips-dir", default=None)
    args = ap.parse_args()
    folder = Path(args.clips_dir or Path.home() / ".cache" / "dfer-bench" / f"warm-{args.clips}-{args.seconds:g}s")
    t_start = time.perf_counter()
    make_clips(folder, args.clips, args.seconds)
    with tempfile.TemporaryDirectory(prefix="dfer-bench-warm-") as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "cache"
        print("cold run (empty cache):", flush=True)
        cold = dfer_run(folder, cache, tmp / "run-cold")
        warm, rehash = [], []
        for r in range(args.rounds):
            for kind in (("warm", "rehash") if r % 2 == 0 else ("rehash", "warm")):
                if kind == "warm":
                    warm.append(dfer_run(folder, cache, tmp / "run-warm"))
                else:
                    rehash.append(dfer_run(folder, cache, tmp / "run-rehash", "--rehash"))
    print()
    print(f"=== {args.clips} clips of {args.seconds:g} s, `dfer run --until faces` (whole command); warm runs: median of "
          f"{args.rounds} ===")
    print(f"cold {cold:.2f} s; warm {med(warm):.2f} s ({', '.join(f'{v:.2f}' for v in warm)}); "
          f"warm --rehash {med(rehash):.2f} s ({', '.join(f'{v:.2f}' for v in rehash)})")
    print(f"warm / cold            {med(warm) / cold:.4f}")
    print(f"warm --rehash / cold   {med(rehash) / cold:.4f}")
    print(f"warm / warm --rehash   {med([w / h for w, h in zip(warm, rehash)]):.3f}  (median of per-round ratios)")
    print(f"(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
