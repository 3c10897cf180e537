"""Pipeline configuration: one pydantic section per stage, YAML files and ``--set`` overrides.

Configs are inert data: building one never touches the disk or the network.
Fields that do not change a stage's output (devices, batch sizes, worker counts) carry
``json_schema_extra={"cache_key": False}`` and are left out of cache keys by :func:`key_fields`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from pipeline.core.errors import ConfigError, InputError, excerpt
from pipeline.core.paths import input_file
from pipeline.core.yamlsafe import MAX_BYTES, load_yaml
from pipeline.engine.sections import FinetuneConfig, RunSection
from stages import PIPELINE
from prompts import DIR as PROMPTS_DIR

BUILTIN_PRESETS = PROMPTS_DIR / "presets"
PRESET_PATH_ENV = "DFER_PRESET_PATH"
CLASSIFIER = "classify.model"
"""``context.model: classify.model``: the captioner is the classifier, whatever model ``classify.model`` ends up
being after the preset, the config file and ``--set`` (see :func:`_captioner_from_classifier`)."""


def _captioner_from_classifier(cls, data: Any, handler):
    """``context.model`` given as the words ``classify.model`` becomes a copy of the validated ``classify.model``
    (every setting, ``max_new_tokens`` included: the classifier never generates, so it is the captions' length
    limit). It resolves while the config is validated, before any cache key is computed, so the captioner's key
    holds the classifier's real identity and ``--set classify.model.model=X`` makes X caption too."""
    context = data.get("context") if isinstance(data, dict) else None
    same = isinstance(context, dict) and context.get("model") == CLASSIFIER
    if same:
        data = {**data, "context": {k: v for k, v in context.items() if k != "model"}}
    cfg = handler(data)
    if same:
        cfg.context.model = cfg.classify.model.model_copy(deep=True)
    return cfg


PipelineConfig = create_model(
    "PipelineConfig",
    __config__=ConfigDict(extra="forbid"),
    __validators__={"captioner_from_classifier": model_validator(mode="wrap")(_captioner_from_classifier)},
    run=(RunSection, Field(default_factory=RunSection)),
    **{stage.name: (stage.Config, Field(default_factory=stage.Config)) for stage in PIPELINE},
    finetune=(FinetuneConfig, Field(default_factory=FinetuneConfig)),  # used by `dfer finetune` only
)


def key_fields(section: BaseModel) -> dict[str, Any]:
    """The part of a stage's config that enters its cache key (recursively drops non-key fields)."""
    return {name: _plain(getattr(section, name)) for name, info in type(section).model_fields.items()
            if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("cache_key") is False)}


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
    for i, p in enumerate(parts[:-1]):
        if node.get(p) is None:
            node[p] = {}
        elif node[p] == CLASSIFIER and parts[:i + 1] == ["context", "model"]:
            rest = ".".join(parts[i + 1:])
            own = (f"--set context.model={value}" if rest == "model" else
                   f"--set 'context.model={{model: MODEL}}', then --set {dotted}=...")
            raise ConfigError(f"--set {dotted}: here context.model is '{CLASSIFIER}' (as --preset msce sets it): the "
                              f"captioner is the classifier and has no settings of its own. --set {CLASSIFIER}.{rest}=... "
                              f"changes both; to caption with another model, give the captioner its own: {own}")
        elif not isinstance(node[p], dict):
            raise ConfigError(f"--set {dotted}: '{p}' is a value, not a section")
        node = node[p]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value``; the value is parsed as YAML (so 3, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {excerpt(text, quote=True)}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not raw.strip():
        return key, ""
    try:
        yaml.safe_load(raw)  # aliases stay shared here: cheap, and only tells YAML from plain words
    except yaml.YAMLError:
        return key, raw  # not YAML: the words as typed
    return key, load_yaml(raw, f"--set {excerpt(key, 60)}")


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: Any = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _friendly(err: ValidationError, source: str, root: type[BaseModel]) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(root, loc)
            allowed = ", ".join(sorted(model.model_fields)) if model else "?"
            section = ".".join(str(p) for p in loc[:-1]) or "top level"
            lines.append(f"unknown key '{excerpt(dotted, 100)}' ({source}); allowed keys in [{section}]: {allowed}")
        else:
            lines.append(f"bad value for '{dotted}' ({source}): {e['msg']}; got {excerpt(e.get('input'), quote=True)}")
    if len(lines) > 20:
        lines = lines[:20] + [f"... and {len(lines) - 20} more"]
    return ConfigError("\n".join(lines))


def read_yaml_file(path: str | Path, what: str, error: type = ConfigError) -> Any:
    """A YAML file a user gives (config, preset, counts): a regular file of at most
    :data:`pipeline.core.yamlsafe.MAX_BYTES`, UTF-8, loaded with the bound on aliases; ``error`` names it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise error(f"{what} not found: {path}")
    try:
        input_file(path, what=what)
    except InputError as exc:
        raise error(f"{what} {exc}") from None
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise error(f"{what} {path} is {size / 1e6:.0f} MB; a YAML file dfer reads holds a few KB (is it the right file?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror})") from None
    return load_yaml(text, f"{what} {path}", error)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    loaded = read_yaml_file(path, what)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, section by section (a preset's other keys of a section survive a config file)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_dirs() -> list[Path]:
    """Where presets are looked up, in order: the folders in ``$DFER_PRESET_PATH`` (separated like ``PATH``),
    then the presets shipped with the package (``prompts/presets/``)."""
    extra = [Path(d).expanduser() for d in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep) if d]
    return [*extra, BUILTIN_PRESETS]


def preset_names() -> list[str]:
    """Every preset name found on :func:`preset_dirs` (a name found twice is the first folder's)."""
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; :class:`ConfigError` listing the available presets if there is none."""
    for d in preset_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    names = preset_names()
    raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(names) if names else '(none)'} "
                      f"(looked in {', '.join(str(d) for d in preset_dirs())})")


def _pins(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """``(path, model, revision)`` of every model a preset pins (a mapping with both ``model`` and ``revision``)."""
    if not isinstance(tree, dict):
        return []
    own = [(path, tree["model"], tree["revision"])] if "model" in tree and "revision" in tree else []
    return own + [pin for k, v in tree.items() for pin in _pins(v, (*path, str(k)))]


def _unpin_replaced_models(tree: dict, pins: list) -> None:
    """A preset's pinned revision belongs to its model: where the config file or ``--set`` chose another model and
    no revision of its own, the pin is dropped (it would name a commit of another repository)."""
    for path, model, revision in pins:
        node: Any = tree
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("model") != model and node.get("revision") == revision:
            del node["revision"]


def load_config(config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> BaseModel:
    """Resolve defaults <- preset <- YAML file <- ``--set`` overrides into a validated PipelineConfig (a revision
    the preset pins for its model is dropped where the file or ``--set`` choose another model)."""
    tree: dict[str, Any] = {}
    sources = []
    pins: list = []
    if preset is not None:
        path = preset_path(preset)
        tree = _read_yaml(path, f"preset {preset!r}")
        pins = _pins(tree)
        sources.append(f"preset {preset} ({path})")
    if config_file is not None:
        path = Path(config_file)
        tree = _merge(tree, _read_yaml(path, "config file"))
        sources.append(str(path))
    for text in overrides:
        _set_path(tree, *parse_override(text))
    if overrides:
        sources.append("--set")
    _unpin_replaced_models(tree, pins)
    return validated(PipelineConfig, tree, " + ".join(sources) or "defaults")


def validated(model: type[BaseModel], data: Any, source: str) -> BaseModel:
    """``model.model_validate(data)`` with errors turned into one :class:`ConfigError` naming each key and
    ``source`` (a file, ``--set``, a command's options)."""
    try:
        cfg = model.model_validate(data)
    except ValidationError as err:
        raise _friendly(err, source, model) from None
    bad = list(_non_finite(cfg, ()))
    if bad:
        raise ConfigError("\n".join(f"bad value for '{'.'.join(map(str, loc))}' ({source}): a number must be finite; "
                                    f"got {value}" for loc, value in bad))
    return cfg


def _non_finite(value: Any, loc: tuple):
    """``(location, value)`` of every NaN or infinite number in a validated config (no setting of dfer takes one;
    YAML's ``.nan``/``.inf`` and the words ``nan``/``inf`` would pass a float field's bounds or compare false)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield loc, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _non_finite(getattr(value, name), loc + (name,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, loc + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, loc + (k,))


def dump_config(cfg: BaseModel, extra: dict[str, BaseModel] | None = None) -> str:
    """Fully resolved config as YAML (defaults included), in section order; ``extra`` sections (of tool stages
    such as ``features``) follow."""
    doc = cfg.model_dump(mode="json")
    doc.update({name: section.model_dump(mode="json") for name, section in (extra or {}).items()})
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
