"""Prompt templates (Jinja2, in ``prompts/``) rendered into interleaved text + image prompts.

Images are passed to a template as placeholder strings (``item.image``); after rendering, the
text is split at the placeholders and the images are put back in their places, so a template
controls exactly where each image goes. Undefined variables are errors (``StrictUndefined``).
A user can point ``prompt_dir`` at their own folder; the hash of every template a stage renders
is part of its cache key.

A prompt folder may come from someone else (a shared config, a downloaded preset), so templates render in
Jinja2's immutable sandbox: no access to attributes that start with ``_`` (``__class__``, ``__globals__``, ...),
to functions' internals, or to methods that change the values passed in; ``range`` is bounded, and so are the
strings and lists ``*`` and ``**`` can build. A template that tries is a :class:`TemplateError` naming its file.
Only the templates of the stages a run computes, with a model that reads a prompt, are rendered (and checked).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from pipeline.core.errors import TemplateError
from pipeline.backends.base import Prompt
from prompts import DIR as PROMPTS_DIR

BUILTIN_DIR = PROMPTS_DIR
_MARK = "\u2063IMG{}\u2063"


def template_dir(prompt_dir: str | None) -> Path:
    d = Path(prompt_dir).expanduser() if prompt_dir else BUILTIN_DIR
    if not d.is_dir():
        raise TemplateError(f"prompt folder not found: {d}")
    return d


def template_path(prompt_dir: str | None, name: str) -> Path:
    p = template_dir(prompt_dir) / name
    if not p.is_file():
        raise TemplateError(f"prompt template not found: {p}")
    return p


def template_hash(prompt_dir: str | None, name: str) -> str:
    return hashlib.sha256(template_path(prompt_dir, name).read_bytes()).hexdigest()


class ImageSlot(str):
    """What a template sees for an image: a placeholder string that is replaced by the image."""


MAX_REPEAT = 100_000
"""The largest string or list a template's ``*`` may build, and the largest result of ``**``."""


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with ``*`` and ``**`` bounded (``'x' * 10**10`` would fill the memory)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) \
                and abs(right) > 64:
            raise jinja2.sandbox.SecurityError(f"{left} ** {right}: the exponent is too large for a template")
        if operator == "*":
            sizes = [len(x) for x in (left, right) if isinstance(x, (str, list, tuple))]
            counts = [x for x in (left, right) if isinstance(x, int)]
            if sizes and counts and sizes[0] * counts[0] > MAX_REPEAT:
                raise jinja2.sandbox.SecurityError(f"a template may not build a value of more than {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


def _env(prompt_dir: str | None) -> jinja2.Environment:
    return _Sandbox(loader=jinja2.FileSystemLoader(str(template_dir(prompt_dir))), undefined=jinja2.StrictUndefined,
                    keep_trailing_newline=False, autoescape=False)


class PromptRenderer:
    """Renders one template of one prompt folder into :class:`Prompt` objects."""

    def __init__(self, prompt_dir: str | None, name: str):
        self.path = template_path(prompt_dir, name)
        try:
            self.template = _env(prompt_dir).get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.path}:{exc.lineno}: template syntax error: {exc.message}") from None

    def render(self, images: list, **variables: Any) -> Prompt:
        """``images[i]`` goes where the template printed ``image_slots[i]`` (passed in ``variables``)."""
        try:
            text = self.template.render(**variables)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{self.path}: {exc.message} (variables provided: {', '.join(sorted(variables))})") from None
        except jinja2.sandbox.SecurityError as exc:
            raise TemplateError(f"{self.path}: the template tried something a prompt template may not do ({exc}); "
                                "templates render in a sandbox: print the variables the stage provides") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.path}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise TemplateError(f"{self.path}: the template failed while rendering ({type(exc).__name__}: {exc})") from None
        parts: list = []
        rest = text
        for i, img in enumerate(images):
            mark = _MARK.format(i)
            if mark not in rest:
                raise TemplateError(f"{self.path}: the template did not place image {i} (print each item's .image once)")
            before, rest = rest.split(mark, 1)
            if before.strip():
                parts.append(before)
            parts.append(img)
        if rest.strip():
            parts.append(rest)
        if "\u2063IMG" in "".join(p for p in parts if isinstance(p, str)):
            raise TemplateError(f"{self.path}: an image placeholder was printed twice")
        return Prompt(parts)


def image_slots(n: int) -> list[ImageSlot]:
    return [ImageSlot(_MARK.format(i)) for i in range(n)]
