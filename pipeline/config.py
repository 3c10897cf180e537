"""Pipeline configuration: one pydantic section per stage, YAML files and ``--set`` overrides.

Configs are inert data: building one never touches the disk or the network.
Fields that do not change a stage's output (devices, batch sizes, worker counts) carry
``json_schema_extra={"cache_key": False}`` and are left out of cache keys by :func:`key_fields`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.fields import not_in_key  # noqa: F401  (re-exported)
from pipeline.finetune.config import FinetuneConfig
from stages import STAGE_MODULES


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the problem."""


class RunSection(BaseModel):
    """How the run executes. Nothing here changes any artifact, so none of it enters a cache key."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    workers: int = Field(2, ge=1)
    """Worker processes for per-clip stages (decode + face detection). Each opens its own decoder."""
    batch_size: int = Field(8, ge=1)
    """Clips handed to a model stage at once."""
    progress: bool = True
    """Show a progress bar per stage (``--quiet`` turns it off)."""
    ray_num_cpus_per_task: float = Field(1.0, gt=0)
    """``--executor ray``: CPUs reserved per clip task (faces, keyframes); torch in the task uses that many threads."""
    ray_num_gpus_per_task: float = Field(0.0, ge=0)
    """``--executor ray``: GPUs per clip task (a fraction such as 0.25 shares one); 0: Ray hides the GPUs and face
    detection runs on CPU."""
    ray_num_gpus_per_actor: float | None = Field(None, ge=0)
    """``--executor ray``: GPUs per model actor (context, classify); each actor loads the model once. ``null``: 1 if the
    cluster has GPUs, else CPU actors. More than 1 with ``*.model.device=balanced`` spreads a large model over them."""
    ray_num_cpus_per_actor: float = Field(1.0, gt=0)
    """``--executor ray``: CPUs reserved per model actor (its torch thread count on CPU)."""
    ray_actors: int | None = Field(None, ge=1)
    """``--executor ray``: model actors per model stage. ``null``: as many as the cluster's GPUs hold (one per GPU by
    default), or 1 on a cluster without GPUs."""
    ray_max_retries: int = Field(3, ge=0)
    """``--executor ray``: retries of a clip task, and restarts of a model actor, whose worker process dies."""


def _stage_sections() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for mod in STAGE_MODULES:
        fields[mod.NAME] = (mod.Config, Field(default_factory=mod.Config))
    return fields


def _build_pipeline_config() -> type[BaseModel]:
    from pydantic import create_model

    return create_model(
        "PipelineConfig",
        __config__=ConfigDict(extra="forbid"),
        run=(RunSection, Field(default_factory=RunSection)),
        **_stage_sections(),
        finetune=(FinetuneConfig, Field(default_factory=FinetuneConfig)),  # used by `dfer finetune` only
    )


PipelineConfig = _build_pipeline_config()


def key_fields(section: BaseModel) -> dict[str, Any]:
    """The part of a stage's config that enters its cache key (recursively drops non-key fields)."""
    out: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("cache_key") is False:
            continue
        value = getattr(section, name)
        out[name] = key_fields(value) if isinstance(value, BaseModel) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return key_fields(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}=...: empty key segment")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value``; the value is parsed as YAML (so 3, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _friendly(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = ", ".join(_allowed_keys(model)) if model else "?"
            section = ".".join(str(p) for p in loc[:-1]) or "top level"
            lines.append(f"unknown key '{dotted}' ({source}); allowed keys in [{section}]: {allowed}")
        else:
            got = e.get("input")
            lines.append(f"bad value for '{dotted}' ({source}): {e['msg']}; got {got!r}")
    return ConfigError("\n".join(lines))


def load_config(config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """Resolve defaults <- YAML file <- ``--set`` overrides into a validated PipelineConfig."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        source = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    if overrides:
        source = f"{source} + --set"
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise _friendly(err, source) from None


def dump_config(cfg: BaseModel) -> str:
    """Fully resolved config as YAML (defaults included), in section order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
