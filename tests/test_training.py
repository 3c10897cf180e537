"""The checkpoint session both trainers use (pipeline.training.checkpoint.CheckpointSession): a run saved, killed and
resumed ends with the weights of an uninterrupted run; a kill during a save leaves the previous checkpoint usable;
several processes write one checkpoint."""

from __future__ import annotations

import json
import threading

import torch

from pipeline.training.checkpoint import CheckpointSession
from pipeline.training.optim import make_optimizer, make_scheduler

STEPS = 8


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model.parameters(), lr=0.1)
    return model, opt, make_scheduler(opt, "cosine", STEPS, warmup_steps=2)


def _step(model, opt, sched) -> None:
    x = torch.randn(5, 4)  # drawn from the RNG the checkpoint saves
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _write_weights(model):
    return lambda folder: torch.save(model.state_dict(), folder / "weights.pt")


def test_a_run_resumed_from_its_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    model, opt, sched = _parts()
    torch.manual_seed(1)
    for _ in range(STEPS):
        _step(model, opt, sched)
    uninterrupted = model.weight.detach().clone()

    model, opt, sched = _parts()
    torch.manual_seed(1)
    session = CheckpointSession(tmp_path)
    for step in range(1, 6):
        _step(model, opt, sched)
        if step % 2 == 0:
            session.save(f"step-{step:07d}", {"step": step}, opt, sched, _write_weights(model))
    (session.root / ".tmp-step-0000006").mkdir()  # a save killed half-way
    torch.manual_seed(99)  # the process dies; a new one starts with other random state

    model, opt, sched = _parts(seed=5)
    session = CheckpointSession(tmp_path)
    folder, state = session.resumable()
    assert folder.name == "step-0000004" and state == {"step": 4}
    assert sorted(p.name for p in session.root.iterdir()) == ["latest.json", "step-0000004"]  # older and killed: gone
    model.load_state_dict(torch.load(folder / "weights.pt"))
    session.restore(folder, opt, sched)
    for _ in range(state["step"], STEPS):
        _step(model, opt, sched)
    assert torch.equal(model.weight, uninterrupted)


def test_no_checkpoint_yet_means_nothing_to_resume(tmp_path):
    assert CheckpointSession(tmp_path / "new").resumable() is None


def test_several_processes_write_one_checkpoint_with_each_ones_random_state(tmp_path):
    """Two processes (threads here, with a real barrier between them): the main one writes the weights, optimizer,
    scheduler and state, each one its own RNG file; the checkpoint is published once, after both wrote."""
    barrier = threading.Barrier(2, timeout=30)
    errors = []

    def process(index: int) -> None:
        try:
            model, opt, sched = _parts()
            session = CheckpointSession(tmp_path, process=index, main=index == 0, barrier=barrier.wait)
            session.save("step-0000001", {"step": 1}, opt, sched, _write_weights(model))
        except Exception as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folder = tmp_path / "checkpoints" / "step-0000001"
    assert sorted(p.name for p in folder.iterdir()) == ["optimizer.json", "optimizer.safetensors", "rng-0.json",
                                                        "rng-1.json", "scheduler.json", "state.json", "weights.pt"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == {"dir": "step-0000001"}
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
