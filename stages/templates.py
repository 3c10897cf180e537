"""Prompt templates (Jinja2, in ``prompts/``) rendered into interleaved text + image prompts.

Images are passed to a template as placeholder strings (``item.image``); after rendering, the
text is split at the placeholders and the images are put back in their places, so a template
controls exactly where each image goes. Undefined variables are errors (``StrictUndefined``).
A user can point ``prompt_dir`` at their own folder; the hash of every template a stage renders
is part of its cache key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2

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


def _env(prompt_dir: str | None) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir(prompt_dir))), undefined=jinja2.StrictUndefined,
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
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.path}: {exc}") from None
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
