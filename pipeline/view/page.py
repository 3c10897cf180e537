"""The self-contained HTML page: the template, stylesheet and script in ``assets/`` with the run's
data embedded as JSON. No CDN, no server: it opens from disk, offline."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from pipeline.eval.labels import LabelError
from pipeline.engine.rundir import VIEW
from pipeline.view.cards import build_card
from pipeline.view.collect import collect_run
from pipeline.view.summary import build_summary, run_label_set

ASSETS = "assets"


def _asset(name: str) -> str:
    return resources.files("pipeline.view").joinpath(ASSETS, name).read_text(encoding="utf-8")


def _embed(data: Any) -> str:
    """JSON that can sit inside a <script> element: no '<' can close it or open a comment."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def build_view(run_dir: str | Path, thumb_size: int = 80, quality: int = 75, **report_kwargs: Any) -> dict:
    """The page's data: ``summary`` and one card per clip (see :mod:`pipeline.view.cards`)."""
    run = collect_run(run_dir, **report_kwargs)
    ls = run_label_set(run)
    labels = list(ls.names) if ls else []
    cards = [build_card(c, run, labels, thumb_size, quality) for c in run.clips]
    if run.report is None and ls is not None:  # unscored run: true labels from the input list, resolved if known
        for card in cards:
            try:
                card["true"] = ls.canonical(card["true"]) if card["true"] else None
            except LabelError:  # a word outside the label set stays as written
                pass
    return {"summary": build_summary(run, labels), "cards": cards}


def render_page(data: dict) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_asset("page.html"))
    return template.render(title=f"dfer view: {data['summary']['run']}", css=_asset("view.css"),
                           js=_asset("view.js"), data=_embed(data))


def write_view(run_dir: str | Path, output: str | Path | None = None, **kwargs: Any) -> Path:
    """Write the page of a run (default ``RUN/view.html``) and return its path. ``kwargs`` go to
    :func:`build_view` (thumbnail size, and the report's labels file and calibration)."""
    data = build_view(run_dir, **kwargs)
    out = Path(output) if output is not None else Path(run_dir) / VIEW
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    tmp.replace(out)
    return out
