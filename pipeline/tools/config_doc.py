"""Markdown reference of every config key (generated from the pydantic models and their docstrings), kept in
``docs/configuration.md`` between two markers: ``python -m pipeline.tools.config_doc --write`` rewrites it there,
without ``--write`` it prints it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from pipeline.core.files import write_atomic
from pipeline.engine.config import PipelineConfig


def _fmt_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    return "`" + json.dumps(value if not isinstance(value, tuple) else list(value)) + "`"


def _type_name(info) -> str:
    ann = info.annotation
    if get_origin(ann) is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(ann))
    if get_origin(ann) is not None:
        return str(ann).replace("typing.", "").replace("|", "or")
    return getattr(ann, "__name__", None) or str(ann)


def _rows(model: type[BaseModel], prefix: str, defaults: BaseModel) -> list[str]:
    """Rows for one section; default values come from the section's default instance (so nested
    models such as ``classify.model`` show the stage's own defaults)."""
    rows = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        value = getattr(defaults, name)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{prefix}{name}.", value)
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        note = "" if extra.get("cache_key", True) else " *(not in cache key)*"
        doc = (info.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(info)} | {_fmt_default(value)} | {doc}{note} |")
    return rows


def config_reference() -> str:
    out = []
    for section, info in PipelineConfig.model_fields.items():
        out += [f"### `{section}`\n", "| key | type | default | meaning |", "|---|---|---|---|",
                *_rows(info.annotation, f"{section}.", info.get_default(call_default_factory=True)), ""]
    return "\n".join(out)


START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def update_doc(path: Path = DOC) -> bool:
    """Rewrite the block between the markers in ``path`` (``docs/configuration.md``); True if it changed."""
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{config_reference()}\n{END}{tail}"
    if new != text:
        write_atomic(path, new)
    return new != text


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        print(f"{DOC} updated" if update_doc() else f"{DOC} already up to date")
    else:
        print(config_reference())
