"""Overhead of the Ray executor against the local process pool, on this machine, in one run.

    python benchmarks/ray_overhead.py [--clips 20] [--seconds 1.0] [--workers 2]

Makes ``--clips`` short synthetic face clips (tests/media.py; distinct content each), then runs the
per-clip stages (faces + keyframes) over them twice, each into its own empty cache:

* ``local``: ``LocalExecutor(workers)`` (spawned worker processes, MTCNN loaded once per worker);
* ``ray``: ``RayExecutor`` on a local Ray instance with ``num_cpus=workers`` (one CPU per task), so both
  run the same number of clips at once, with the same torch thread count per worker.

Both timings cover the whole ``Runner.run`` (worker start-up, model loading, scheduling, writing the
cache); starting the Ray instance itself is timed separately (on a cluster it is already running).
Prints both wall times and the ratio ray / local, and checks that both produced the same cache keys.
Ray sets ``OMP_NUM_THREADS`` to a task's CPUs in its workers while the local pool's spawned workers inherit
this process's environment, so run with ``OMP_NUM_THREADS=1`` to compare the executors rather than the
OpenMP thread counts (the value in effect is printed).
Needs the dev extras (scikit-image for the clips, ray).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each clip")
    ap.add_argument("--workers", type=int, default=2, help="local worker processes = Ray CPUs")
    ap.add_argument("--ray-first", action="store_true", help="run the Ray executor first (to see order effects)")
    args = ap.parse_args(argv)

    try:
        import ray
    except ImportError:
        print("ray is not installed: pip install 'dfer-pipeline[ray]'", file=sys.stderr)
        return 2

    from pipeline.engine.config import load_config
    from pipeline.engine.executor import LocalExecutor
    from pipeline.engine.executor_ray import RayExecutor
    from pipeline.engine.inputs import discover
    from pipeline.engine.runner import Runner
    from tests import media

    with tempfile.TemporaryDirectory(prefix="dfer-ray-bench-") as tmp:
        tmp = Path(tmp)
        clips = tmp / "clips"
        clips.mkdir()
        for i in range(args.clips):
            media.make_face_clip(clips / f"c{i:03d}.mp4", seconds=args.seconds, seed=1000 + i)
        refs = discover(clips)
        cfg = load_config(None, ["run.progress=false", f"run.workers={args.workers}"])

        def timed_run(name: str, executor) -> tuple[float, dict]:
            runner = Runner(cfg, tmp / f"run-{name}", cache_dir=tmp / f"cache-{name}", until="keyframes",
                            log=io.StringIO(), executor=executor)
            t0 = time.perf_counter()
            res = runner.run(refs)
            dt = time.perf_counter() - t0
            if res.n_failed:
                raise SystemExit(f"{name}: {res.n_failed} clips failed")
            return dt, res.keys

        def ray_run() -> tuple[float, dict, float]:
            ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            t0 = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, _temp_dir=ray_tmp, logging_level="ERROR",
                     log_to_driver=False)
            t_init = time.perf_counter() - t0
            try:
                threads = max(1, (os.cpu_count() or 1) // args.workers)  # what LocalExecutor gives each worker
                return (*timed_run("ray", RayExecutor(task_threads=threads)), t_init)
            finally:
                ray.shutdown()
                shutil.rmtree(ray_tmp, ignore_errors=True)

        if args.ray_first:
            t_ray, keys_ray, t_init = ray_run()
        t_local, keys_local = timed_run("local", LocalExecutor(args.workers))
        if not args.ray_first:
            t_ray, keys_ray, t_init = ray_run()

    same = keys_local == keys_ray
    print(f"{args.clips} clips of {args.seconds:g} s, faces + keyframes, {args.workers} at a time "
          f"(os.cpu_count()={os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"  local executor : {t_local:7.2f} s  ({args.clips / t_local:.2f} clips/s)")
    print(f"  ray executor   : {t_ray:7.2f} s  ({args.clips / t_ray:.2f} clips/s)   + {t_init:.1f} s to start the local Ray instance")
    print(f"  ratio ray / local: {t_ray / t_local:.2f}   (same cache keys: {same})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
