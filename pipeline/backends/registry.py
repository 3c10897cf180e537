"""The backend registry: a backend name (``ModelConfig.backend``) -> the class that implements it.

Adding a backend is one entry here: ``"name": "module:Class"``, a subclass of
:class:`pipeline.backends.base.Backend` (its abstract methods are enforced when it is instantiated). Classes
are imported only when their backend is used, so importing this module loads no model library.
"""

from __future__ import annotations

import importlib

BACKENDS: dict[str, str] = {
    "transformers": "pipeline.backends.hf:TransformersBackend",
    "openai": "pipeline.backends.openai_http:OpenAIBackend",
    "socialfusion": "pipeline.backends.socialfusion:SocialFusionBackend",
    "expression": "pipeline.backends.expression:ExpressionBackend",
}


def backend_class(name: str):
    """The class registered as ``name`` (imported now). ``ValueError`` listing the names for an unknown one."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
