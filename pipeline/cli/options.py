"""Options shared by several commands, declared once: ``--config/--set/--preset`` (what the pipeline config
is) and ``-q`` (quiet). A command that takes them lists the parent parsers below; :func:`load_config` turns
them into the resolved config.

Every path and number a command takes is checked here, before any work: a path given with one of the actions
below (:data:`INPUT`, :data:`INPUT_FILE`, :data:`OUT_DIR`, :data:`OUT_FILE`, :data:`RUN_DIR`) is checked by
:func:`check_paths` before the command runs (a file where a folder is expected and vice versa, a FIFO or a device
where a file is), a number (:func:`number`) when the command line is parsed (out of range, NaN and infinities);
either is refused with exit 2, naming the option.
"""

from __future__ import annotations

import argparse
import math
import os
import types
import typing
from typing import Callable

from pydantic import BaseModel

from pipeline.core import paths
from pipeline.core.errors import InputError
from pipeline.engine import config
from pipeline.eval.labels import LABEL_FORMATS


def _checked(kind: Callable[[str], object], what: str) -> type[argparse.Action]:
    """An argparse action for a path of ``kind`` (a :mod:`pipeline.core.paths` check): parsing only records it;
    :func:`check_paths` checks it before the command runs (so that parsing a command line touches no file)."""

    class Checked(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            setattr(namespace, self.dest, values)
            label = option_string or self.dest
            pending = getattr(namespace, PENDING, None) or []
            pending += [(label, kind, v) for v in (values if isinstance(values, list) else [values])]
            setattr(namespace, PENDING, pending)

    Checked.__name__ = f"Checked({what})"
    return Checked


PENDING = "_paths_to_check"


def check_paths(args: argparse.Namespace) -> None:
    """Check every path the command line gave (:data:`INPUT`, :data:`OUT_DIR`, ...) for its kind, before the command
    runs; :class:`InputError` ``argument OPTION: PATH: is ...`` (exit 2) for the first of the wrong kind."""
    for label, kind, value in getattr(args, PENDING, None) or []:
        try:
            kind(value)
        except InputError as exc:
            raise InputError(f"argument {label}: {exc}") from None
    if hasattr(args, PENDING):
        delattr(args, PENDING)


def _run_dir(text: str) -> str:
    path = paths.input_path(text)
    if not path.is_dir():
        raise InputError(f"{paths.shown(path)}: is a file; give a run directory (the --out of `dfer run`)")
    return text


INPUT = _checked(paths.input_path, "file or folder")
"""An existing folder or regular file to read (a folder of clips, a list file, labels)."""
INPUT_FILE = _checked(paths.input_file, "file")
"""An existing regular file to read (``--config``, counts)."""
OUT_DIR = _checked(paths.output_dir, "folder")
"""A folder to write into (absent or a folder): ``--out``, ``--cache``."""
OUT_FILE = _checked(paths.output_file, "file name")
"""A file to write (absent or a regular file): ``-o``."""
RUN_DIR = _checked(_run_dir, "run directory")
"""An existing folder (a run directory: what is in it is checked by the command)."""
MODEL_PATH_FIELDS = {"input": INPUT, "labels": INPUT, "out": OUT_DIR, "cache": OUT_DIR}
"""Options models' fields that are paths (:func:`model_options`), and their kind."""


def number(kind: type = float, lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (``int`` refuses ``2.5``) in ``[lo, hi]`` (either bound may be None)."""
    bounds = {(True, True): f" in [{lo}, {hi}]", (True, False): f" >= {lo}", (False, True): f" <= {hi}"}
    name = ("an integer" if kind is int else "a finite number") + bounds.get((lo is not None, hi is not None), "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def config_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (defaults < --preset < --config < --set)")
    g.add_argument("--preset", metavar="NAME",
                   help="a named set of settings shipped with dfer (or found in $DFER_PRESET_PATH)")
    g.add_argument("--config", metavar="FILE", action=INPUT_FILE, help="YAML config file (sections per stage)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set keyframes.k=8")
    return p


def label_options() -> argparse.ArgumentParser:
    """The true labels of the clips, as ``dfer report`` reads them (report, view, sweep)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--labels", metavar="FILE", action=INPUT,
                   help="true labels: CSV video,label or an official split file/folder")
    p.add_argument("--label-format", default="csv", choices=LABEL_FORMATS, help="format of --labels")
    p.add_argument("--fold", type=number(int, 1, 5), help="DFEW/MAFW fold (1-5) when --labels is the dataset's split folder")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="DFEW/MAFW split when --labels is a folder")
    return p


def execution_options() -> argparse.ArgumentParser:
    """Where a run's artifacts go and where its work runs (run, sweep)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cache", "--cache-dir", metavar="DIR", action=OUT_DIR,
                   help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where per-clip work and model stages run: local processes, or a Ray cluster (run.ray_* settings)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="--executor ray: the cluster's head, HOST:6379 (default: $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="run even if some clips are among those classify.adapter was trained or validated on (same "
                        "file content); without it that stops before anything runs. The overlap is recorded")
    return p


def quiet_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (for logs)")
    return p


def model_options(model: type[BaseModel], positional: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
    """A parent parser with one option per field of an options model: ``--field-name``, its help the field's
    docstring, its default, choices (``Literal``) and type from the model, ``store_true`` for booleans,
    repeatable for lists, required where the model requires it; ``positional`` fields are arguments."""
    p = argparse.ArgumentParser(add_help=False)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kw: dict = {"help": (field.description or "").replace("%", "%%")}
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
            ann = args[0]
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif ann is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(ann) is list:
            item = typing.get_args(ann)[0]
            if typing.get_origin(item) is typing.Literal:
                kw.update(action="append", choices=list(typing.get_args(item)))
            else:
                kw.update(action="append", type=item)
        elif name in MODEL_PATH_FIELDS:
            kw["action"] = MODEL_PATH_FIELDS[name]
        else:
            kw["type"] = ann
        if name in positional:
            p.add_argument(name, metavar=name.upper(), **kw)
            continue
        if field.is_required():
            kw["required"] = True
        elif kw.get("action") != "append":
            kw["default"] = field.default
        p.add_argument("--" + name.replace("_", "-"), dest=name, **kw)
    return p


def load_config(args):
    """The config named by ``--preset/--config/--set``; with ``-q`` progress bars are off, here and in the
    Hugging Face libraries."""
    cfg = config.load_config(args.config, args.overrides, preset=args.preset)
    if getattr(args, "quiet", False):
        cfg.run.progress = False
        quiet_libraries()
    return cfg


def quiet_libraries() -> None:
    """No download/loading progress bars from the Hugging Face libraries."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
