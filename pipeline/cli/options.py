"""Options shared by several commands, declared once: ``--config/--set/--preset`` (what the pipeline config
is) and ``-q`` (quiet). A command that takes them lists the parent parsers below; :func:`load_config` turns
them into the resolved config."""

from __future__ import annotations

import argparse
import os
import types
import typing

from pydantic import BaseModel

from pipeline.engine import config
from pipeline.eval.labels import LABEL_FORMATS


def config_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (defaults < --preset < --config < --set)")
    g.add_argument("--preset", metavar="NAME",
                   help="a named set of settings shipped with dfer (or found in $DFER_PRESET_PATH)")
    g.add_argument("--config", metavar="FILE", help="YAML config file (sections per stage)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set keyframes.k=8")
    return p


def label_options() -> argparse.ArgumentParser:
    """The true labels of the clips, as ``dfer report`` reads them (report, view, sweep)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--labels", metavar="FILE", help="true labels: CSV video,label or an official split file/folder")
    p.add_argument("--label-format", default="csv", choices=LABEL_FORMATS, help="format of --labels")
    p.add_argument("--fold", type=int, help="DFEW/MAFW fold (1-5) when --labels is the dataset's split folder")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="DFEW/MAFW split when --labels is a folder")
    return p


def execution_options() -> argparse.ArgumentParser:
    """Where a run's artifacts go and where its work runs (run, sweep)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cache", "--cache-dir", metavar="DIR", help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
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
            kw.update(action="append", type=typing.get_args(ann)[0])
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
