"""How many worker processes ``run.workers=auto`` starts for a per-clip stage (faces, keyframes, expression).

One per CPU core this process may use (its CPU affinity, and a cgroup CPU quota such as a container's
``--cpus``), fewer where memory would not hold them, and never more than there are clips to compute:

* host memory: :data:`MEMORY_SHARE` of the memory available now (``MemAvailable``, or a cgroup's memory limit
  less what it uses), at :data:`RAM_PER_WORKER_GIB` per worker, :data:`CUDA_HOST_GIB` more for one that runs its
  model on a GPU (CUDA's libraries);
* GPU memory, where the stage's ``device`` setting means a GPU here (``faces.device=auto`` on a GPU machine):
  :data:`MEMORY_SHARE` of the device's free memory at :data:`GPU_PER_WORKER_GIB` per worker, since every worker
  process opens its own CUDA context and MTCNN's allocations stay in its caching allocator.

The figures behind the constants are in ``docs/cluster.md`` (GPU section) and ``benchmarks/workers_scaling.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.models.devices import resolve_device

RAM_PER_WORKER_GIB = 1.25
"""Host memory of one worker: torch, OpenCV and PyAV loaded, MTCNN, a clip's decoded frames in flight (measured:
0.93 GiB peak per faces worker on 640x360 clips, ``benchmarks/workers_scaling.py``; larger frames add their decoded
frames of about ``faces.full_frame_every_s``)."""
CUDA_HOST_GIB = 1.0
"""Host memory a worker needs besides, once it has initialised CUDA (the CUDA, cuDNN and cuBLAS libraries)."""
GPU_PER_WORKER_GIB = 8.0
"""GPU memory of one worker whose stage runs on the GPU: its CUDA context (0.3-0.5 GiB) and MTCNN's peak (7.1 GiB
measured with ``faces.detect_batch=16`` on 640x360 clips on an H200, ``benchmarks/gpu_throughput.py``)."""
MEMORY_SHARE = 0.8
"""Share of the available host or GPU memory the workers may plan for."""
GIB = 2**30


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers, and why that many (said in the run's stage line)."""

    workers: int
    why: str


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity, bounded by a cgroup CPU quota (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``) where one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.floor(quota)) if quota else cores)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cgroup_cpu_quota() -> float | None:
    v2 = _read("/sys/fs/cgroup/cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        return int(quota) / int(period) if quota != "max" and period else None
    quota, period = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def available_memory() -> int | None:
    """Bytes of host memory available to this process now: ``MemAvailable`` of ``/proc/meminfo``, less where a cgroup
    memory limit leaves less; None where neither can be read."""
    free = None
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            free = int(line.split()[1]) * 1024
    limit, used = _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory.current")
    if limit and used and limit != "max":
        left = int(limit) - int(used)
        free = left if free is None else min(free, left)
    return free


def gpu_free_memory(device: str) -> int:
    """Free bytes on GPU ``device`` (``cuda`` or ``cuda:N``)."""
    import torch  # start-up time: only where a stage's device is a GPU

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def auto_workers(config: dict, clips: int) -> WorkerPlan:
    """``run.workers=auto`` for a per-clip stage whose section is ``config`` (its ``device``, if it has one), with
    ``clips`` clips to compute (see the module docstring)."""
    cores = usable_cores()
    n, why = cores, f"{cores} CPU core{'s' if cores != 1 else ''}"
    device = config.get("device")
    try:  # (device=cpu: torch need not be imported in this process to know)
        on_gpu = isinstance(device, str) and device != "cpu" and resolve_device(device).startswith("cuda")
    except ConfigError:  # a GPU asked for where there is none: the stage says so for each clip
        on_gpu = False
    per_worker = RAM_PER_WORKER_GIB + (CUDA_HOST_GIB if on_gpu else 0.0)
    free = available_memory()
    if free is not None:
        by_ram = max(1, int(MEMORY_SHARE * free / GIB // per_worker))
        if by_ram < n:
            n, why = by_ram, f"{free / GIB:.1f} GiB of memory available, {per_worker:g} GiB per worker"
    if on_gpu:
        gpu = gpu_free_memory(resolve_device(device))
        by_gpu = max(1, int(MEMORY_SHARE * gpu / GIB // GPU_PER_WORKER_GIB))
        if by_gpu < n:
            n, why = by_gpu, f"{gpu / GIB:.1f} GiB free on {resolve_device(device)}, {GPU_PER_WORKER_GIB:g} GiB per worker"
    if clips < n:
        n, why = max(1, clips), f"{clips} clip{'s' if clips != 1 else ''} to compute"
    return WorkerPlan(n, why)
