"""The report layer: a run's metrics, calibration and plots (`dfer report`), runs side by side (`dfer compare`).

Modules: ``build`` (what ``metrics.json`` holds, from the run directory; :func:`write_report` writes it with
``report.md`` and the plots), ``headline`` (the headline over all clips, abstentions and failed clips as errors, and
the scored clips' figure beside it), ``markdown`` (``report.md``, the printed summary and the number formats other
reports share), ``plots`` (the PNG figures), ``compare`` (runs side by side, folds), ``paired`` (two runs clip by clip:
paired-bootstrap CIs of the differences, McNemar's test)."""

from pipeline.report.build import build_report, write_report
from pipeline.report.compare import card_differences, compare_folds, compare_runs, fold_summary
from pipeline.report.markdown import HEADLINE, calibration_text, ci_text, markdown_table, pct, pct_ci, summary

__all__ = ["HEADLINE", "build_report", "calibration_text", "card_differences", "ci_text", "compare_folds", "compare_runs",
           "fold_summary",
           "markdown_table", "pct", "pct_ci", "summary", "write_report"]
