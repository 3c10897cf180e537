"""The HTML page: the template, stylesheet and script in ``assets/`` with the run's data embedded as JSON. No CDN,
no server: it opens from disk, offline.

A run of at most ``one_file_max`` clips (default :data:`ONE_FILE_MAX`) is one self-contained file: every card,
its thumbnails as ``data:`` URIs. A bigger run would make a page no browser opens (50,000 clips: 627 MB), so its
page holds the summary and a small index of the clips (id, labels, outcome, confidence, margin: what the filters
and sorts need), and the folder beside it (``view.html`` -> ``view_files/``,
:func:`pipeline.engine.rundir.view_files_of`) holds the cards in scripts of :data:`CHUNK` cards, loaded when a
card of theirs is shown, and the thumbnails as JPEG files the browser loads as they scroll into view (one file per
face track and frame: clips with the same content share them). Writing streams the cards to disk, so memory stays
that of the index; the folder is built beside the old one and swapped in whole.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import jinja2

from pipeline.core.errors import RunDirError
from pipeline.core.files import atomic_dir, json_text, write_atomic
from pipeline.core.paths import output_file, shown
from pipeline.eval.labels import LabelError
from pipeline.engine.rundir import RunDir, view_files_of
from pipeline.view.cards import Thumbs, build_card, inline_thumbs, jpegs
from pipeline.view.collect import RunData, collect_run
from pipeline.view.summary import build_summary, run_label_set

ASSETS = "assets"
ONE_FILE_MAX = 2000
"""Runs with more clips than this write their cards and thumbnails into a folder beside the page."""
CHUNK = 100
"""Cards per script file of a big run's page."""
FILES_MARKER = "dfer-view.json"
INDEX_KEYS = ("id", "true", "pred", "outcome", "conf", "margin")


def _asset(name: str) -> str:
    return resources.files("pipeline.view").joinpath(ASSETS, name).read_text(encoding="utf-8")


def _embed(data: Any) -> str:
    """JSON that can sit inside a <script> element: no '<' can close it or open a comment."""
    return json_text(data, separators=(",", ":")).replace("<", "\\u003c")


def _cards(run: RunData, labels: list[str], thumbs: Thumbs) -> Iterator[dict]:
    ls = run_label_set(run) if run.report is None else None
    for clip in run.clips:
        card = build_card(clip, run, labels, thumbs)
        if ls is not None and card["true"]:  # unscored run: true labels from the input list, resolved if known
            try:
                card["true"] = ls.canonical(card["true"])
            except LabelError:  # a word outside the label set stays as written
                pass
        yield card


def _labels(run: RunData) -> list[str]:
    ls = run_label_set(run)
    return list(ls.names) if ls else []


def build_view(run_dir: str | Path, thumb_size: int = 80, quality: int = 75, **report_kwargs: Any) -> dict:
    """The page's data: ``summary`` and one card per clip (see :mod:`pipeline.view.cards`), thumbnails inline."""
    run = collect_run(run_dir, **report_kwargs)
    labels = _labels(run)
    cards = list(_cards(run, labels, inline_thumbs(thumb_size, quality)))
    return {"summary": build_summary(run, labels), "cards": cards}


def render_page(data: dict) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_asset("page.html"))
    return template.render(title=f"dfer view: {data['summary']['run']}", css=_asset("view.css"),
                           js=_asset("view.js"), data=_embed(data))


class ThumbFiles:
    """Thumbnails as JPEG files under ``folder/thumbs/``, one per face track (cache key) and frame; ``prefix`` is
    the folder as the page refers to it."""

    def __init__(self, folder: Path, prefix: str, size: int, quality: int):
        self.folder, self.prefix, self.size, self.quality = folder, prefix, size, quality

    def __call__(self, key: str, track, indices: list[int]) -> list[str]:
        names = [f"thumbs/{key[:2]}/{key}-{i}.jpg" for i in indices]
        todo = [(i, n) for i, n in zip(indices, names) if not (self.folder / n).is_file()]
        if todo:
            (self.folder / names[0]).parent.mkdir(parents=True, exist_ok=True)
            for (_, name), data in zip(todo, jpegs(track, [i for i, _ in todo], self.size, self.quality)):
                (self.folder / name).write_bytes(data)  # (in a folder renamed into place)
        return [f"{self.prefix}/{n}" for n in names]


def _claim_files(folder: Path) -> None:
    """The folder beside the page may be replaced only when dfer view made it (or it is absent)."""
    if (folder.exists() or folder.is_symlink()) and not (folder / FILES_MARKER).is_file():
        raise RunDirError(f"{shown(folder)} exists and was not written by `dfer view` (no {FILES_MARKER} in it); "
                          "dfer view puts a big run's cards there: move it away or write the page elsewhere (-o)")


def _write_files(run: RunData, labels: list[str], folder: Path, thumb_size: int, quality: int) -> list[dict]:
    """A big run's cards and thumbnails into ``folder`` (swapped in whole); returns the index of the clips."""
    index: list[dict] = []
    with atomic_dir(folder) as tmp:
        marker = json_text({"written_by": "dfer view", "chunk": CHUNK})
        (tmp / FILES_MARKER).write_text(marker, encoding="utf-8")  # (in a folder renamed into place)
        thumbs = ThumbFiles(tmp, quote(folder.name), thumb_size, quality)
        chunk: list[dict] = []

        def flush() -> None:
            k = (len(index) - 1) // CHUNK
            script = f"dferChunk({k},{json_text(chunk, separators=(',', ':'))});\n"
            (tmp / f"cards-{k:05d}.js").write_text(script, encoding="utf-8")  # (in a folder renamed into place)
            chunk.clear()

        for card in _cards(run, labels, thumbs):
            index.append({k: card[k] for k in INDEX_KEYS})
            chunk.append(card)
            if len(chunk) == CHUNK:
                flush()
        if chunk:
            flush()
    return index


def write_view(run_dir: str | Path, output: str | Path | None = None, thumb_size: int = 80, quality: int = 75,
               one_file_max: int = ONE_FILE_MAX, **report_kwargs: Any) -> Path:
    """Write the page of a run (default ``RUN/view.html``) and return its path; a run of more than ``one_file_max``
    clips also writes the folder beside it (:func:`pipeline.engine.rundir.view_files_of`). ``report_kwargs`` go
    to :func:`pipeline.report.run_report.build_report` (the labels file and calibration)."""
    run = collect_run(run_dir, **report_kwargs)
    if output is None:
        RunDir(run_dir).claim()  # the run directory's page (a run of an earlier dfer is taken over)
        out = RunDir(run_dir).view_page()
    else:
        out = output_file(output, "-o")
    folder = view_files_of(out)
    labels = _labels(run)
    summary = build_summary(run, labels)
    if len(run.clips) <= one_file_max:
        cards = list(_cards(run, labels, inline_thumbs(thumb_size, quality)))
        write_atomic(out, render_page({"summary": summary, "cards": cards}))
        if (folder / FILES_MARKER).is_file():  # the folder of an earlier, bigger page of this name
            _remove(folder)
        return out
    _claim_files(folder)
    index = _write_files(run, labels, folder, thumb_size, quality)
    files = {"dir": quote(folder.name), "chunk": CHUNK, "count": len(index)}
    write_atomic(out, render_page({"summary": summary, "index": index, "files": files}))
    return out


def _remove(folder: Path) -> None:
    if folder.is_symlink():
        os.unlink(folder)
    else:
        shutil.rmtree(folder)
