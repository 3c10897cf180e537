"""Run the same pipeline on a Ray cluster (``dfer run ... --executor ray [--ray-address ADDR]``).

:class:`RayExecutor` is a :class:`pipeline.engine.executor.Executor` like the local one, so the runner and the
stages do not change; ``start(cache_root)`` connects and checks the cluster before any clip is scheduled:

* **Per-clip stages** (faces, keyframes): one Ray task per clip running
  :func:`pipeline.engine.executor.run_task`, which computes the artifact in the worker and writes it into
  the cache with :meth:`pipeline.core.cache.Cache.write` (temporary sibling + rename, same ``meta.json``),
  exactly as a local worker does. Ray reuses worker processes, so the module-level resource cache of
  ``executor.py`` loads MTCNN once per worker process. A task whose worker dies (killed, out of
  memory, node lost) is retried by Ray up to ``max_retries`` times; a clip that still cannot finish
  becomes a ``WorkerDied`` failure, as with the local executor.
* **Model stages** (context, classify): ``actors`` Ray actors per stage, each loading the model once
  in its constructor (``num_gpus_per_actor`` GPUs each: Ray sets ``CUDA_VISIBLE_DEVICES`` to the
  actor's GPUs, so ``device=auto``/``cuda`` is that GPU and ``balanced`` spreads over them). The
  driver cuts the clips into the same batches as the local path and hands them to idle actors; an
  actor runs :func:`pipeline.engine.batching.process_batches` on its batch (same failure isolation: a batch that
  raises is retried clip by clip) and writes the artifacts itself. Actors are restarted by Ray when
  their process dies (the model is reloaded and the batch retried) and killed at the end of the stage,
  so a stage's model is freed before the next stage loads its own.

  Why a small scheduler over actors rather than Ray Data's ``map_batches``: our items are clip tasks
  with nested paths and artifacts, not Arrow rows; results must stream back per batch to the runner
  (progress, ``failures.jsonl``, ``--strict``); and a batch lost with its actor must become per-clip
  failures instead of failing a whole dataset. ``ray.util.ActorPool`` is the same idea, but it gives
  up on the pool when an actor dies for good; the loop below replaces that actor instead.

Nothing that runs in a worker depends on the driver's memory: tasks carry the stage config as JSON
data, absolute cache paths and the driver's working directory (workers change into it when it exists
on their node, so relative input and model paths mean the same as on the driver). The cache must be
on a file system every node sees at the same path; :meth:`RayExecutor.start` checks that from a worker
on every node before any clip is scheduled, together with the address and the GPUs asked for.

Thread count: MTCNN's float results depend on torch's thread count, so per-clip tasks set
``torch.set_num_threads(task_threads)`` like the local workers do (default: the CPUs reserved per
task, ``num_cpus_per_task``; the local executor uses ``cpu_count // workers``). Pass ``task_threads``
(and ``actor_threads`` for the model actors, default ``num_cpus_per_actor``) to reproduce a local run
bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from pipeline.core.files import write_atomic
from pipeline.core.errors import ClusterError
from pipeline.core.cache import Artifact, Cache
from pipeline.engine.batching import process_batches
from pipeline.engine.executor import Executor, init_worker, run_task
from pipeline.core.jobs import ClipTask, TaskResult

PROBE_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--executor ray needs the 'ray' package: pip install 'dfer-pipeline[ray]' (or pip install 'ray[default]')"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` -> (host, port); None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A quick TCP connection to the head node (``ray.init`` itself retries for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start the head node with "
                           "'ray start --head' and pass its address (HOST:6379) with --ray-address") from None


def auth_hint() -> str:
    """What to set when a cluster that answers on its port refuses this client: Ray (2.5x) enables token
    authentication on a cluster started with ``ray start --head`` when a token exists (``~/.ray/auth_token``), and a
    client that names an address sends its token only when ``RAY_AUTH_MODE=token``."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return (". RAY_AUTH_MODE=token is set: check that this machine has the head node's token (~/.ray/auth_token, "
                "or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)")
    return (". The head answers on that port, so it most likely refused this client for lack of an authentication "
            "token: a cluster started with `ray start --head` uses token authentication when a token exists "
            "(~/.ray/auth_token), and a client that names an address sends its token only with RAY_AUTH_MODE=token. "
            "Set RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, or from RAY_AUTH_TOKEN / "
            "RAY_AUTH_TOKEN_PATH; copy it from the head node) and run again")


# ------------------------------------------------------------------------------------- worker side
# Module-level functions and classes: Ray pickles them by reference, so workers import this module.


def _enter(cwd: str | None, threads: int) -> None:
    """Worker setup: the driver's working directory (when this node has it) and the thread count."""
    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    init_worker(threads)


def _run_in_worker(task_fn: Callable[[ClipTask], TaskResult], task: ClipTask, threads: int, cwd: str | None) -> TaskResult:
    _enter(cwd, threads)
    return task_fn(task)


def _probe_worker(root: str, token: str) -> dict:
    """Runs on a worker: read the driver's probe file under the cache root, write one back."""
    host = socket.gethostname()
    probe = Path(root) / f".dfer-probe-{token}"
    try:
        seen = (probe / "driver").read_text(encoding="utf-8")
    except OSError as exc:
        return {"ok": False, "host": host, "detail": f"cannot read {probe / 'driver'}: {exc.strerror or exc}"}
    if seen != token:
        return {"ok": False, "host": host, "detail": f"{probe / 'driver'} holds another run's probe"}
    try:
        write_atomic(probe / f"worker-{uuid.uuid4().hex[:8]}", token)
    except OSError as exc:
        return {"ok": False, "host": host, "detail": f"cannot write under {probe}: {exc.strerror or exc}"}
    return {"ok": True, "host": host, "detail": ""}


class _ModelWorker:
    """A Ray actor holding one model stage's resources (the model) for the whole stage."""

    def __init__(self, stage: str, config: dict, threads: int, cwd: str | None, batch_fn: Callable | None = None):
        _enter(cwd, threads)
        self._batch_fn = batch_fn
        self._error: BaseException | None = None
        try:
            from stages import STAGES  # start-up order: after _enter set the worker's thread limits

            self._stage = STAGES[stage]
            self._cfg = self._stage.Config.model_validate(config)
            self._resources = self._stage.open(self._cfg)
        except Exception as exc:  # noqa: BLE001 - re-raised by ready() in the driver, with its own type
            self._error = exc

    def ready(self) -> str:
        if self._error is not None:
            raise self._error
        return socket.gethostname()

    def run(self, chunk: list[tuple[str, ClipTask]], cache_root: str, batch_size: int) -> list[tuple[str, TaskResult]]:
        fn = self._batch_fn or process_batches
        return list(fn(self._stage, self._cfg, self._resources, chunk, Cache(cache_root, create_root=False), batch_size))


# ------------------------------------------------------------------------------------- driver side


def _absolute_task(task: ClipTask) -> ClipTask:
    """Cache paths as absolute paths (a worker's working directory may differ); the clip path is kept
    as given, so failure messages read the same as with the local executor."""
    root = os.path.abspath(task.cache_root)
    upstream = {k: Artifact(a.stage, a.key, Path(os.path.abspath(a.root))) for k, a in task.job.upstream.items()}
    job = dataclasses.replace(task.job, upstream=upstream)
    return dataclasses.replace(task, cache_root=root, job=job)


def _died(task: ClipTask, tries: int, exc: BaseException) -> TaskResult:
    return TaskResult(False, error_type="WorkerDied",
                      message=f"{task.job.path}: the Ray worker died {tries} times while computing stage {task.stage} "
                      f"(killed, out of memory, or its node was lost): {type(exc).__name__}")


class RayExecutor(Executor):
    """Per-clip tasks and model actors on a Ray cluster; see the module docstring.

    ``address``: ``None`` starts a local Ray instance (or uses ``$RAY_ADDRESS`` when set, as Ray does);
    ``HOST:PORT`` / ``ray://HOST:PORT`` / ``auto`` connect to a running cluster. If Ray is already
    initialised in this process (e.g. by a test), that connection is used and left open by ``close()``.
    ``num_gpus_per_actor=None``: 1 GPU per model actor if the cluster has GPUs, else CPU actors.
    ``actors=None``: as many GPU actors as the cluster's GPUs hold, or 1 CPU actor.
    ``task_fn`` is the function a task runs (default :func:`pipeline.engine.executor.run_task`) and ``batch_fn`` the
    one a model actor runs on its batches (default :func:`pipeline.engine.batching.process_batches`); tests wrap them.
    """

    def __init__(self, address: str | None = None, num_cpus_per_task: float = 1, num_gpus_per_task: float = 0,
                 num_gpus_per_actor: float | None = None, num_cpus_per_actor: float = 1, actors: int | None = None,
                 max_retries: int = 3, task_threads: int | None = None, actor_threads: int | None = None,
                 task_fn: Callable[[ClipTask], TaskResult] | None = None, batch_fn: Callable | None = None,
                 init_kwargs: dict | None = None):
        self.address = address
        self.num_cpus_per_task = num_cpus_per_task
        self.num_gpus_per_task = num_gpus_per_task
        self.num_gpus_per_actor = num_gpus_per_actor
        self.num_cpus_per_actor = num_cpus_per_actor
        self.actors = actors
        self.max_retries = max_retries
        self.task_threads = task_threads or max(1, int(num_cpus_per_task))
        self.actor_threads = actor_threads or max(1, int(num_cpus_per_actor))
        self.task_fn = task_fn or run_task
        self.batch_fn = batch_fn
        self.init_kwargs = dict(init_kwargs or {})
        self._ray = None
        self._owns = False
        self._cwd = os.getcwd()
        self._gpus_per_actor, self._n_actors, self._window = 0.0, 1, 8

    @classmethod
    def from_config(cls, run_section, address: str | None = None, **kwargs) -> "RayExecutor":
        """From the ``run`` section of a :class:`pipeline.engine.config.PipelineConfig` (``run.ray_*`` settings)."""
        r = run_section
        return cls(address=address, num_cpus_per_task=r.ray_num_cpus_per_task, num_gpus_per_task=r.ray_num_gpus_per_task,
                   num_gpus_per_actor=r.ray_num_gpus_per_actor, num_cpus_per_actor=r.ray_num_cpus_per_actor,
                   actors=r.ray_actors, max_retries=r.ray_max_retries, **kwargs)

    # ------------------------------------------------------------------ setup and checks
    def start(self, cache_root: str | os.PathLike) -> None:
        """Connect (or start a local instance), then check resources and the cache from every node.
        Raises :class:`ClusterError` with what is wrong; nothing has been scheduled then."""
        ray = _import_ray()
        self._ray = ray
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            if address:
                check_reachable(address)
            kwargs = {"logging_level": "WARNING", **self.init_kwargs}
            if not address:
                kwargs.setdefault("include_dashboard", False)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                hint = auth_hint() if address and address not in ("auto", "local") else ""
                raise ClusterError(f"cannot connect to the Ray cluster at {address or 'a new local instance'}: {exc}{hint}") from None
            self._owns = True
        try:
            self._check_resources()
            self._check_cache(Path(cache_root))
        except BaseException:
            self.close()
            raise

    def _nodes(self) -> list[dict]:
        return [n for n in self._ray.nodes() if n.get("Alive", n.get("alive", False))]

    def _check_resources(self) -> None:
        nodes = self._nodes()
        cpus = [n["Resources"].get("CPU", 0.0) for n in nodes]
        gpus = [n["Resources"].get("GPU", 0.0) for n in nodes]
        total_gpus = sum(gpus)
        where = f"the Ray cluster at {self.address}" if self.address else "the Ray cluster"
        desc = f"{len(nodes)} node(s), {sum(cpus):g} CPUs, {total_gpus:g} GPUs" + (
            f" (per node: {', '.join(f'{g:g}' for g in gpus)})" if total_gpus else ""
        )
        if max(cpus, default=0) < self.num_cpus_per_task:
            raise ClusterError(f"run.ray_num_cpus_per_task={self.num_cpus_per_task:g}: no node of {where} has that many CPUs ({desc})")
        if self.num_gpus_per_task and max(gpus, default=0) < self.num_gpus_per_task:
            raise ClusterError(f"run.ray_num_gpus_per_task={self.num_gpus_per_task:g}: no node of {where} has that many GPUs ({desc})")
        per_actor = self.num_gpus_per_actor if self.num_gpus_per_actor is not None else float(total_gpus >= 1)
        self._gpus_per_actor = float(per_actor)
        ca = self.num_cpus_per_actor

        def fits(c: float, g: float) -> int:  # actors one node holds (an actor never spans nodes)
            n = math.floor(c / ca + 1e-9)
            return min(n, math.floor(g / per_actor + 1e-9)) if per_actor > 0 else n

        fit = sum(fits(c, g) for c, g in zip(cpus, gpus))
        want = self.actors or (fit if per_actor > 0 else 1)
        if fit == 0 or want > fit:
            if per_actor > 0:
                raise ClusterError(
                    f"{want or 1} model actor(s) x {per_actor:g} GPU(s) each (run.ray_actors, run.ray_num_gpus_per_actor) "
                    f"need {max(want, 1) * per_actor:g} GPU(s) and {max(want, 1) * ca:g} CPUs, on one node per actor; "
                    f"{where} has {desc}"
                )
            raise ClusterError(
                f"{want} model actor(s) x {ca:g} CPU(s) each (run.ray_actors, run.ray_num_cpus_per_actor) do not fit on "
                f"{where}: {desc}"
            )
        self._n_actors = want
        self._window = max(8, 4 * int(sum(cpus) / max(self.num_cpus_per_task, 1e-3)))

    def _check_cache(self, root: Path) -> None:
        """A probe task on every node reads a file the driver wrote under the cache and writes one back."""
        ray = self._ray
        root = Path(os.path.abspath(root))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClusterError(f"cache directory {root}: cannot create it ({exc.strerror or exc})") from None
        token = uuid.uuid4().hex
        probe = root / f".dfer-probe-{token}"
        probe.mkdir()
        try:
            write_atomic(probe / "driver", token)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            fn = ray.remote(_probe_worker)
            refs = []
            for node in self._nodes():
                if node["Resources"].get("CPU", 0) <= 0:
                    continue
                strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
                refs.append(fn.options(num_cpus=0, scheduling_strategy=strategy, max_retries=1).remote(str(root), token))
            try:
                answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - timeouts and worker start-up failures alike
                raise ClusterError(
                    f"cache directory {root}: the probe task on the Ray workers did not finish ({type(exc).__name__}: {exc})"
                ) from None
            written = {p.name for p in probe.iterdir() if p.name.startswith("worker-")}
            bad = [a for a in answers if not a["ok"]]
            if bad or len(written) < len(answers):
                detail = "; ".join(f"{a['host']}: {a['detail']}" for a in bad) or (
                    f"{len(answers) - len(written)} worker(s) wrote a probe file the driver cannot see"
                )
                raise ClusterError(
                    f"cache directory {root} is not shared with the Ray workers ({detail}). The cache must be on a "
                    "file system that every node mounts at the same path (NFS, Lustre, ...); pass it with --cache"
                )
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    def _ensure(self):
        if self._ray is None or not self._ray.is_initialized():
            raise RuntimeError("RayExecutor.start(cache_root) must be called before map()/map_batched()")
        return self._ray

    # ------------------------------------------------------------------ per-clip tasks
    def map(self, tasks: list[ClipTask]) -> Iterator[tuple[int, TaskResult]]:
        """Run tasks as Ray tasks; yield ``(task index, result)`` as they finish (any order)."""
        ray = self._ensure()
        if not tasks:
            return
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(_run_in_worker).options(
            num_cpus=self.num_cpus_per_task, num_gpus=self.num_gpus_per_task, max_retries=self.max_retries
        )
        fn_ref = ray.put(self.task_fn)
        pending = deque(range(len(tasks)))
        inflight: dict = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < self._window:
                    i = pending.popleft()
                    inflight[remote.remote(fn_ref, _absolute_task(tasks[i]), self.task_threads, self._cwd)] = i
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    i = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:  # run_task catches everything; a custom task_fn may not
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        result = TaskResult(False, error_type=type(cause).__name__, message=f"{tasks[i].job.path}: {cause}")
                    except RayError as exc:
                        result = _died(tasks[i], self.max_retries + 1, exc)
                    yield i, result
        finally:
            for ref in inflight:
                ray.cancel(ref, force=True)

    # ------------------------------------------------------------------ model stages
    def _new_actor(self, stage, config: dict):
        ray = self._ray
        cls = ray.remote(_ModelWorker).options(num_cpus=self.num_cpus_per_actor, num_gpus=self._gpus_per_actor,
                                               max_restarts=self.max_retries, max_task_retries=self.max_retries)
        return cls.remote(stage.name, config, self.actor_threads, self._cwd, self.batch_fn)

    def map_batched(self, stage, cfg, todo: list[tuple[str, ClipTask]], cache: Cache, batch_size: int) -> Iterator[tuple[str, TaskResult]]:
        """Model stage ``stage`` over ``todo`` in batches of ``batch_size`` on model actors; yields
        ``(video id, result)`` per clip as batches finish."""
        ray = self._ensure()
        if not todo:
            return
        from ray.exceptions import RayActorError, RayError

        root = os.path.abspath(cache.root)
        items = [(vid, _absolute_task(task)) for vid, task in todo]
        chunks = deque(items[i : i + batch_size] for i in range(0, len(items), batch_size))
        config = cfg.model_dump(mode="json")
        actors = [self._new_actor(stage, config) for _ in range(min(self._n_actors, len(chunks)))]
        inflight: dict = {}
        dead: set[int] = set()  # actors lost for good, replaced once their last batch has reported
        try:
            ray.get([a.ready.remote() for a in actors])  # a model that cannot load raises here, with its own type

            def submit(slot: int) -> None:
                if chunks and actors[slot] is not None and slot not in dead:
                    chunk = chunks.popleft()
                    inflight[actors[slot].run.remote(chunk, root, batch_size)] = (slot, chunk)

            for slot in range(len(actors)):  # two batches per actor: the next one waits next to the model
                submit(slot)
                submit(slot)
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                ref = done[0]
                slot, chunk = inflight.pop(ref)
                try:
                    results = ray.get(ref)
                except RayError as exc:
                    results = [(vid, _died(task, self.max_retries + 1, exc)) for vid, task in chunk]
                    if isinstance(exc, RayActorError):  # the actor died more often than it may be restarted
                        dead.add(slot)
                yield from results
                if slot in dead and all(s != slot for s, _ in inflight.values()):
                    actors[slot] = self._replace(actors[slot], stage, config)
                    dead.discard(slot)
                submit(slot)
                if not inflight and chunks:  # no model actor is left: what remains fails
                    for rest in chunks:
                        for vid, task in rest:
                            yield vid, _died(task, self.max_retries + 1, RuntimeError("no model actor left"))
                    chunks.clear()
        finally:
            for ref in inflight:
                ray.cancel(ref, force=True)
            for a in actors:  # frees the model (and its GPU memory) before the next stage loads its own
                if a is not None:
                    ray.kill(a, no_restart=True)

    def _replace(self, actor, stage, config: dict):
        ray = self._ray
        ray.kill(actor, no_restart=True)
        fresh = self._new_actor(stage, config)
        try:
            ray.get(fresh.ready.remote())
        except Exception:  # noqa: BLE001 - no replacement possible: its remaining batches fail
            ray.kill(fresh, no_restart=True)
            return None
        return fresh

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Disconnect if this executor connected (or started the local instance); idempotent."""
        if self._owns and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False
