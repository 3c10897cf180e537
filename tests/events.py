"""What a training run logged to TensorBoard, read back from its event files with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files in ``folder`` (one run's folder), in step order; events an
    interrupted run logged after the step a resumed run went on from are purged, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(folder).glob("events.out.tfevents.*"))
    if not files:
        raise AssertionError(f"no TensorBoard event files in {folder}")
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
