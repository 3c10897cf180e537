"""Resumable training checkpoints, written atomically and without pickle (``dfer finetune``, SocialFusion).

Layout under a training output folder ``OUT`` (``dfer finetune``'s shown)::

    checkpoints/latest.json          {"dir": "step-0000040"}: the checkpoint to resume from
    checkpoints/step-0000040/        adapter/ (PEFT adapter + dfer_adapter.json), optimizer.safetensors +
                                     optimizer.json, scheduler.json, state.json (epoch, step, best, history),
                                     rng-<process>.json (python, numpy, torch and CUDA generator states)
    checkpoints/best-step-0000032/   adapter of the best validation UAR so far (named in state.json)

A checkpoint is written into a hidden temporary sibling and renamed into place, then ``latest.json`` is
replaced (write + ``os.replace``), then older checkpoints are removed: a kill at any moment leaves
``latest.json`` pointing at a complete checkpoint. Tensors go to safetensors, everything else to JSON.

:class:`CheckpointSession` is that sequence, saving and resuming, for every trainer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.core.files import json_text, write_atomic

CHECKPOINTS = "checkpoints"
POINTER = "latest.json"


def write_json(path: Path, obj) -> None:
    write_atomic(path, json_text(obj, indent=1, allow_nan=True))  # a loss can be NaN: kept as it was written


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ state pieces


def optimizer_to_files(sd: dict, folder: Path) -> None:
    """An optimizer ``state_dict`` as ``optimizer.safetensors`` (tensors) + ``optimizer.json`` (the rest)."""
    tensors, state = {}, {}
    for pid, entry in sd["state"].items():
        out = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                name = f"{pid}.{k}"
                tensors[name] = v.detach().to("cpu").contiguous()
                out[k] = {"tensor": name}
            else:
                out[k] = {"value": v}
        state[str(pid)] = out
    save_file(tensors, str(folder / "optimizer.safetensors"))  # (in a folder renamed into place)
    write_json(folder / "optimizer.json", {"state": state, "param_groups": sd["param_groups"]})


def optimizer_from_files(folder: Path) -> dict:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    doc = read_json(folder / "optimizer.json")
    state = {}
    for pid, entry in doc["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    return {"state": state, "param_groups": doc["param_groups"]}


def rng_state() -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    doc = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        doc["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return doc


def set_rng_state(doc: dict) -> None:
    py = doc["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = doc["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(doc["torch"], dtype=torch.uint8))
    if "cuda" in doc and torch.cuda.is_available():
        states = [torch.tensor(s, dtype=torch.uint8) for s in doc["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ------------------------------------------------------------------------------------------ folders


def root(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def latest(out_dir: Path) -> Path | None:
    """The complete checkpoint to resume from, or None."""
    pointer = root(out_dir) / POINTER
    if not pointer.is_file():
        return None
    d = root(out_dir) / read_json(pointer)["dir"]
    return d if (d / "state.json").is_file() else None


def remove_stale(out_dir: Path) -> None:
    """Temporary folders of a killed save."""
    r = root(out_dir)
    if r.is_dir():
        for p in r.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def tmp_dir(out_dir: Path, name: str, create: bool = True) -> Path:
    """The hidden folder checkpoint ``name`` is written into before :func:`publish`; ``create``: emptied (the
    leftover of a killed save removed) and created (the other processes of a multi-GPU run only need its path)."""
    tmp = root(out_dir) / f".tmp-{name}"
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder into place (an orphan of a killed earlier attempt is replaced)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def point_to(out_dir: Path, name: str, keep: set[str]) -> None:
    """Make ``name`` the checkpoint to resume from; then remove checkpoints and best adapters not in ``keep``."""
    write_json(root(out_dir) / POINTER, {"dir": name})
    for p in root(out_dir).iterdir():
        if p.is_dir() and (p.name.startswith("step-") or p.name.startswith("best-")) and p.name not in keep | {name}:
            shutil.rmtree(p, ignore_errors=True)


def replace_dir_from(src: Path, dest: Path) -> None:
    """Make ``dest`` a copy of ``src`` (copy to a temporary sibling, then swap)."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copytree(src, tmp)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def scheduler_state(scheduler) -> dict:
    """A learning-rate scheduler's ``state_dict`` as JSON data (its ``lr_lambdas`` are functions: dropped; the
    scheduler that loads it rebuilds them from the same settings)."""
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


class CheckpointSession:
    """The save and resume sequence of one training run's checkpoints under ``OUT/checkpoints``, the same for every
    trainer (``dfer finetune``, SocialFusion).

    A run may have several processes (accelerate): ``main`` says whether this one writes the shared files,
    ``barrier`` waits for the others, ``process`` numbers this process's RNG file. The weights are the trainer's:
    it writes them into the checkpoint folder (``save``'s ``write_weights``) and loads them itself on resume.
    """

    def __init__(self, out_dir: str | Path, *, process: int = 0, main: bool = True,
                 barrier: Callable[[], None] = lambda: None):
        self.out, self.process, self.main, self.barrier = Path(out_dir), process, main, barrier

    @property
    def root(self) -> Path:
        return root(self.out)

    def resumable(self) -> tuple[Path, dict] | None:
        """The checkpoint to resume from and its ``state.json``, or None; the temporary folders of a killed save are
        removed first (by the main process)."""
        if self.main:
            remove_stale(self.out)
        folder = latest(self.out)
        return None if folder is None else (folder, read_json(folder / "state.json"))

    def save(self, name: str, state: dict, optimizer, scheduler, write_weights: Callable[[Path], None],
             keep: set[str] = frozenset()) -> None:
        """Write checkpoint ``name`` (weights, optimizer, scheduler, ``state.json``, every process's RNG state) into a
        temporary folder, rename it into place, make it the one to resume from, and remove the older checkpoints
        and best adapters not in ``keep``."""
        tmp = tmp_dir(self.out, name, create=self.main)
        if self.main:
            write_weights(tmp)
            optimizer_to_files(optimizer.state_dict(), tmp)
            write_json(tmp / "scheduler.json", scheduler_state(scheduler))
            write_json(tmp / "state.json", state)
        self.barrier()
        write_json(tmp / f"rng-{self.process}.json", rng_state())
        self.barrier()
        if self.main:
            publish(tmp, self.root / name)
            point_to(self.out, name, set(keep))
        self.barrier()

    def restore(self, folder: Path, optimizer, scheduler) -> None:
        """Optimizer, scheduler and this process's RNG state from checkpoint ``folder`` (a run resumed on more
        processes than it was saved by keeps the new processes' RNG states)."""
        optimizer.load_state_dict(optimizer_from_files(folder))
        scheduler.load_state_dict(read_json(folder / "scheduler.json"))
        rng = folder / f"rng-{self.process}.json"
        if rng.is_file():
            set_rng_state(read_json(rng))

    def publish_folder(self, name: str, write: Callable[[Path], None]) -> None:
        """A folder beside the checkpoints (e.g. the best adapter so far), written by the main process into a
        temporary folder and renamed into place."""
        if self.main:
            tmp = tmp_dir(self.out, name)
            write(tmp)
            publish(tmp, self.root / name)
        self.barrier()
