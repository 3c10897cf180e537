"""A warm run over a big folder that is already fully cached, against the cold run that filled the cache; and what
checking every cached artifact before use costs (issue 19).

A run must fingerprint every clip (the sha256 of its bytes goes into every cache key). Before issue 15 a warm
run read every video again to do so; now the cache remembers each file's fingerprint with its size, mtime and
inode (:mod:`pipeline.engine.fingerprints`) and reads only files that changed. Since issue 19 a run also checks
every cached artifact it relies on before using it: it reads every file of the artifact and compares its sha256
with the one recorded when it was written (:func:`pipeline.engine.cachecheck.check_artifact`). Measured here,
each as one ``python -m pipeline.cli run FOLDER --until STAGE -q`` process (wall time of the whole command, Python
start-up included, as a user sees it):

* **cold**: empty cache, every clip computed (by the working tree);
* **warm**: the same command again: everything cached, fingerprints from the memo, every artifact's hashes checked;
* **warm, code before** (``--before REF``, default the commit before issue 19's cache checks): the same warm run
  by the code of ``REF`` (``git archive``, :mod:`baseline_tree`), which uses cached artifacts without reading
  them, on the same cache: the side-by-side price of the checks;
* **warm --rehash**: the working tree, every video read and hashed again (what every warm run did before issue 15).

Warm runs are interleaved (round r: the kinds in rotated order) and their medians compared.

Clips: ``--clips`` (default 2000) code-generated clips of ``--seconds`` (default 3) s, 160x120 at 10 fps
(``tests/media.py``, one face, a different background seed each, so every clip has its own content and key),
made once into ``--clips-dir`` (default ``~/.cache/dfer-bench/warm-N``) and reused. ``--until classify
--embedded`` runs every stage (the embedded expression model for context and classify), so five artifacts per
clip are checked instead of the faces artifact alone (the biggest: its JPEG crops).

Run: ``python benchmarks/warm_run.py`` (cold run several minutes on 2 cores), ``--clips 200`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from baseline_tree import env_for, unpack  # noqa: E402

BEFORE_CHECKS = "30b8e91"  # main before the cache checked what it reads (issue 19)
EMBEDDED = ("--set", "classify.model.backend=expression", "--set", "context.model.backend=expression")
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


def dfer_run(folder: Path, cache: Path, out: Path, until: str, extra: tuple[str, ...], label: str,
             tree: Path | None = None) -> tuple[float, float]:
    """One ``dfer run`` process (``tree``: the code tree it imports; default the working tree): its wall time and its
    CPU time (user + system, its worker processes included; less sensitive to other load on the machine)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--out", str(out), "--cache", str(cache),
           "--until", until, "-q", *extra]
    if out.exists():
        shutil.rmtree(out)  # a fresh run directory each time (the code before refuses none, the new one neither)
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=tree or REPO, env=env_for(tree) if tree else None, capture_output=True, text=True)
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stderr.strip().splitlines()
    print(f"  {label:26s} {seconds:8.2f} s (cpu {cpu:6.2f} s)   {lines[0] if lines else ''}", flush=True)
    return seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3, help="warm runs of each kind, interleaved (medians)")
    ap.add_argument("--clips-dir", default=None)
    ap.add_argument("--until", default="faces", help="last stage run (default faces)")
    ap.add_argument("--embedded", action="store_true", help="context and classify with the embedded model")
    ap.add_argument("--before", default=BEFORE_CHECKS,
                    help=f"git revision of the code before the checks (default {BEFORE_CHECKS}); 'none' to skip it")
    args = ap.parse_args()
    extra = EMBEDDED if args.embedded else ()
    folder = Path(args.clips_dir or Path.home() / ".cache" / "dfer-bench" / f"warm-{args.clips}-{args.seconds:g}s")
    t_start = time.perf_counter()
    make_clips(folder, args.clips, args.seconds)
    with tempfile.TemporaryDirectory(prefix="dfer-bench-warm-") as tmp_name:
        tmp = Path(tmp_name)
        before = None
        if args.before != "none":
            before, commit = unpack(args.before, tmp / "before")
            print(f"code before: {args.before} = {commit[:10]}, unpacked in {before}")
        cache = tmp / "cache"
        print(f"cold run (empty cache), --until {args.until}{' (embedded models)' if args.embedded else ''}:", flush=True)
        cold, _ = dfer_run(folder, cache, tmp / "run-cold", args.until, extra, "dfer run")
        kinds = ["warm", "rehash"] + (["before"] if before else [])
        times: dict[str, list[float]] = {k: [] for k in kinds}
        cpus: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:
                if kind == "warm":
                    wall, cpu = dfer_run(folder, cache, tmp / "run-warm", args.until, extra, "warm (checks)")
                elif kind == "rehash":
                    wall, cpu = dfer_run(folder, cache, tmp / "run-rehash", args.until, (*extra, "--rehash"),
                                         "warm --rehash")
                else:
                    wall, cpu = dfer_run(folder, cache, tmp / "run-before", args.until, extra, "warm, code before",
                                         tree=before)
                times[kind].append(wall)
                cpus[kind].append(cpu)
        mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and "fingerprints" not in p.parts) / 1e6
    warm, rehash = times["warm"], times["rehash"]
    print()
    print(f"=== {args.clips} clips of {args.seconds:g} s, `dfer run --until {args.until}` (whole command); warm runs: "
          f"median of {args.rounds}; cache {mb:.0f} MB of artifacts ===")
    print(f"cold {cold:.2f} s; warm {med(warm):.2f} s ({', '.join(f'{v:.2f}' for v in warm)}); "
          f"warm --rehash {med(rehash):.2f} s ({', '.join(f'{v:.2f}' for v in rehash)})")
    if before:
        b = times["before"]
        print(f"warm, code before {med(b):.2f} s ({', '.join(f'{v:.2f}' for v in b)})")
        print(f"warm with checks / warm, code before   {med([w / x for w, x in zip(warm, b)]):.3f}  (median of "
              f"per-round ratios; +{med(warm) - med(b):.2f} s, {1e3 * (med(warm) - med(b)) / args.clips:.2f} ms per clip)")
        cw, cb = cpus["warm"], cpus["before"]
        print(f"CPU time: warm with checks {med(cw):.2f} s, code before {med(cb):.2f} s: ratio "
              f"{med([w / x for w, x in zip(cw, cb)]):.3f} (+{1e3 * (med(cw) - med(cb)) / args.clips:.2f} ms per clip)")
    print(f"warm / cold            {med(warm) / cold:.4f}")
    print(f"warm --rehash / cold   {med(rehash) / cold:.4f}")
    print(f"warm / warm --rehash   {med([w / h for w, h in zip(warm, rehash)]):.3f}  (median of per-round ratios)")
    print(f"(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
