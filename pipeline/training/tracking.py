"""Experiment tracking of everything that trains (``dfer finetune``, ``dfer socialfusion train``, ``dfer conflict``),
through accelerate's trackers (``accelerate.tracking``): TensorBoard, Weights & Biases, MLflow.

``report_to`` names them (``finetune.report_to`` or ``--report-to``, repeatable); each needs its package, and a
missing one is a :class:`TrackingError` naming the setting and the package before any training starts. Where they
write, with ``folder`` the run's output folder (``CKPT/tracking``, ``OUT/training/tracking``):

* ``tensorboard``: event files in ``folder/tensorboard/RUN/`` (``tensorboard --logdir folder/tensorboard``); a resumed
  run purges what the interrupted one logged after its checkpoint (``SummaryWriter(purge_step=...)``);
* ``wandb``: offline, in ``folder/wandb/`` (``wandb sync``), unless ``WANDB_MODE`` says otherwise;
* ``mlflow``: the tracking server of ``MLFLOW_TRACKING_URI``, else a file store in ``folder/mlruns``.

The run's settings are logged once as hyperparameters (lists and None as text), then scalars at optimizer steps.
Only the main process of a multi-process run logs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.core.errors import TrackingError

TRACKERS = ("tensorboard", "wandb", "mlflow")
"""What ``report_to`` may name."""
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_EXTRA = {"tensorboard": " (or pip install 'dfer-pipeline[tracking]')"}


def check_trackers(names: list[str], setting: str) -> None:
    """:class:`TrackingError` for a name that is not a tracker or whose package is not installed here."""
    for name in names:
        if name not in _PACKAGES:
            raise TrackingError(f"{setting}={name}: unknown tracker; trackers are {', '.join(TRACKERS)}")
        package = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise TrackingError(f"{setting}={name} needs the '{package}' package, which is not installed here: "
                                f"pip install {package}{_EXTRA.get(name, '')}")


def hyperparameters(values: dict) -> dict:
    """``values`` flattened (``a.b``) to what every tracker takes as a hyperparameter: bool, int, float or text."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in hyperparameters(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = "none" if value is None else str(value)
    return out


def _tracker(name: str, folder: Path, project: str, run: str, resume_step: int):
    from accelerate import tracking  # start-up time: only a run that tracks imports the trackers

    if name == "tensorboard":
        kw = {"purge_step": resume_step + 1} if resume_step else {}
        return tracking.TensorBoardTracker(run, folder / "tensorboard", **kw)
    if name == "wandb":
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        return tracking.WandBTracker(project, name=run, dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"))
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        mlflow.set_tracking_uri((folder / "mlruns").resolve().as_uri())
    return tracking.MLflowTracker(experiment_name=project, run_name=run)


class Tracking:
    """The trackers of one training run: :meth:`log` scalars at a step, :meth:`finish` at the end. ``active=False``
    (a process other than the main one) logs nothing. ``resume_step``: the step a resumed run goes on from."""

    def __init__(self, names: list[str], setting: str, folder: str | os.PathLike, project: str, run: str,
                 config: dict, resume_step: int = 0, active: bool = True):
        check_trackers(names, setting)
        self.trackers = []
        if not active:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = hyperparameters(config)
        for name in dict.fromkeys(names):
            tracker = _tracker(name, folder, project, run, resume_step)
            tracker.start()
            tracker.store_init_configuration(params)
            self.trackers.append(tracker)

    def log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
