"""``dfer view``: one self-contained HTML page per run, for error analysis.

:mod:`~pipeline.view.collect` reads the run directory and its cache, :mod:`~pipeline.view.cards`
and :mod:`~pipeline.view.summary` turn them into the page's data, :mod:`~pipeline.view.page`
puts that data into the template, stylesheet and script in ``assets/``.
"""

from pipeline.view.collect import RunDirError
from pipeline.view.page import build_view, write_view

__all__ = ["RunDirError", "build_view", "write_view"]
