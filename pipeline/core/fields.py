"""Config field helpers shared by stage configs (kept free of imports from ``stages``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field


def not_in_key(default: Any = ..., **kwargs: Any) -> Any:
    """A config field that does not change the stage's output, so it is left out of cache keys
    (devices, batch sizes, thread counts)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["cache_key"] = False
    return Field(default, json_schema_extra=extra, **kwargs)
