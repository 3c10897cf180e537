"""The run directory: the names of its files, and the only code that writes or reads them.

A run directory is a view over the cache (deleting it loses nothing a model computed)::

    RUN/config.yaml       the fully resolved config (``dfer config show`` format)
    RUN/manifest.jsonl    one row per clip: video, path, label, fingerprint, artifacts {stage: cache key}
    RUN/cache_dir.txt     absolute path of the cache the artifacts are in
    RUN/failures.jsonl    one row per failed clip and stage: video, stage, error, message
    RUN/runcard.json      what produced the numbers besides the config: dfer's version and commit, library versions,
                          the models as resolved (hub commit, local fingerprint), devices and dtypes
                          (:mod:`pipeline.engine.runcard`)
    RUN/status.json       complete | stopped (and before which stage, why), clip and failure counts, stages, seconds,
                          fallbacks (stages that ran the embedded model: which model was asked for, which ran, why),
                          training_overlap (clips the adapter was trained on, where --allow-overlap let the run test
                          on them)
    RUN/scores.jsonl      classify only: video, label, labels, scores, prediction, raw, prompt_tokens, model, and
                          label_order (the order the prompt listed the labels) unless classify.label_order=fixed
    RUN/predictions.csv   classify only: video, prediction, p_<label>..., label, model (the model that scored it)
    RUN/labelset.json     classify only: name and labels of the label set the scores are over
    RUN/metrics.json, RUN/report.md and plots: written by ``dfer report``

JSON Lines files are written one row at a time (flushed, so a killed run keeps every finished row) and read
back with the line number of every row, so a reader can name ``file:line`` in its errors.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, TextIO

import yaml

from pipeline.core.cache import Cache
from pipeline.core.errors import RunDirError

CONFIG = "config.yaml"
MANIFEST = "manifest.jsonl"
CACHE_DIR = "cache_dir.txt"
FAILURES = "failures.jsonl"
STATUS = "status.json"
RUNCARD = "runcard.json"
SCORES = "scores.jsonl"
PREDICTIONS = "predictions.csv"
LABELSET = "labelset.json"
METRICS = "metrics.json"
REPORT = "report.md"
PLOTS = {"confusion": "confusion_matrix.png", "recall": "per_class_recall.png",
         "distribution": "label_distribution.png"}  # dfer report's, beside report.md
FREQUENCY_PLOT = "f1_vs_label_frequency.png"  # dfer report --label-frequency
VIEW = "view.html"  # dfer view
# what a run writes, and what report and view make from it: a new run in the same directory removes an earlier
# run's first, so that nothing there describes another run (config.yaml and failures.jsonl are rewritten at once)
RUN_OUTPUTS = (MANIFEST, STATUS, RUNCARD, SCORES, PREDICTIONS, LABELSET, METRICS, REPORT, *PLOTS.values(), FREQUENCY_PLOT, VIEW)


class JsonlWriter:
    """Appends one JSON object per line and flushes it (``ensure_ascii=False``, UTF-8)."""

    def __init__(self, path: Path):
        self.path = path
        self._f: TextIO = open(path, "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every non-blank line; ``[]`` for a missing file; :class:`RunDirError` naming
    ``file:line`` for a line that is not JSON."""
    if not path.is_file():
        return []
    rows = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise RunDirError(f"{path}:{no}: not valid JSON: {e}") from None
    return rows


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a run: its id, path as given, label (if any), content fingerprint (None if the file could not
    be read) and the cache key of each stage's artifact."""

    video: str
    path: str
    label: str | None
    fingerprint: str | None
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is not a file here
        return False


class RunDir:
    """One run directory (it need not exist yet). Writers are used by the runner and the classify outputs;
    readers by report, compare, inspect, the diagnostics and the tests."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ writing
    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def begin_run(self) -> list[str]:
        """Make the directory for a run, removing what an earlier run left there (:data:`RUN_OUTPUTS`: its
        predictions, manifest and status, and the report and page made from them; artifacts stay in the cache).
        Returns the names removed."""
        self.create()
        removed = [name for name in RUN_OUTPUTS if (self.path / name).is_file()]
        for name in removed:
            (self.path / name).unlink()
        return removed

    def write_config(self, text: str) -> None:
        (self.path / CONFIG).write_text(text, encoding="utf-8")

    def failure_log(self) -> JsonlWriter:
        return JsonlWriter(self.path / FAILURES)

    def write_manifest(self, rows: Iterable[ManifestRow], cache_root: Path) -> None:
        with JsonlWriter(self.path / MANIFEST) as f:
            for row in rows:
                f.write(row.to_json())
        (self.path / CACHE_DIR).write_text(str(Path(cache_root).resolve()) + "\n", encoding="utf-8")

    def write_status(self, doc: dict) -> None:
        (self.path / STATUS).write_text(json.dumps(doc, indent=1), encoding="utf-8")

    def write_runcard(self, doc: dict) -> None:
        (self.path / RUNCARD).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def score_writers(self, labels: list[str]) -> tuple[JsonlWriter, "PredictionWriter"]:
        """``scores.jsonl`` and ``predictions.csv`` writers (close both)."""
        return JsonlWriter(self.path / SCORES), PredictionWriter(self.path / PREDICTIONS, labels)

    def write_labelset(self, name: str, labels: list[str]) -> None:
        (self.path / LABELSET).write_text(json.dumps({"name": name, "labels": labels}), encoding="utf-8")

    def write_metrics(self, doc: dict) -> None:
        (self.path / METRICS).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def write_report(self, markdown: str) -> None:
        (self.path / REPORT).write_text(markdown, encoding="utf-8")

    # ------------------------------------------------------------------ reading
    def _written_by_run(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise RunDirError(f"{path} not found: is {self.path} a run directory written by `dfer run`?")
        return path

    def _json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def manifest(self) -> list[ManifestRow]:
        return [ManifestRow(r["video"], r["path"], r.get("label"), r.get("fingerprint"), r.get("artifacts") or {})
                for _, r in read_jsonl(self._written_by_run(MANIFEST))]

    def find(self, video: str) -> ManifestRow:
        """The clip ``video``: its id, its path as the manifest gives it (the path of the input or list file row),
        the same file by another path, or a part of exactly one id."""
        rows = self.manifest()
        exact = [r for r in rows if r.video == video] or [r for r in rows if r.path == video]
        if not exact and os.path.isfile(video):
            exact = [r for r in rows if _same_file(r.path, video)]
        if exact:
            return exact[0]
        partial = [r for r in rows if video in r.video]
        if len(partial) == 1:
            return partial[0]
        where = self.path / MANIFEST
        if not partial:
            raise RunDirError(f"no video '{video}' in {where} ({len(rows)} clips listed)")
        raise RunDirError(f"'{video}' matches {len(partial)} clips in {where}: " + ", ".join(r.video for r in partial[:5]))

    def cache(self) -> Cache:
        """The cache the run's artifacts are in."""
        return Cache(Path(self._written_by_run(CACHE_DIR).read_text(encoding="utf-8").strip()))

    def failures(self) -> list[tuple[int, dict]]:
        return read_jsonl(self.path / FAILURES)

    def scores(self) -> list[tuple[int, dict]]:
        return read_jsonl(self.path / SCORES)

    def labelset(self) -> tuple[str, list[str]] | None:
        data = self._json(LABELSET)
        return None if data is None else (str(data["name"]), [str(x) for x in data["labels"]])

    def status(self) -> dict | None:
        return self._json(STATUS)

    def runcard(self) -> dict | None:
        """``runcard.json``, or None for a run written before dfer wrote run cards (or not by ``dfer run``)."""
        return self._json(RUNCARD)

    def config(self) -> dict[str, Any] | None:
        path = self.path / CONFIG
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else None

    def metrics(self) -> dict | None:
        return self._json(METRICS)


class PredictionWriter:
    """``predictions.csv``: ``video, prediction, p_<label>..., label, model`` (probabilities with 6 decimals; the model
    that scored the clip)."""

    def __init__(self, path: Path, labels: list[str]):
        self._f = open(path, "w", newline="", encoding="utf-8")
        self._w = csv.writer(self._f)
        self._w.writerow(["video", "prediction", *[f"p_{lab}" for lab in labels], "label", "model"])

    def write(self, video: str, prediction: str, probs: Iterable[float], label: str | None, model: str | None = None) -> None:
        self._w.writerow([video, prediction, *[f"{p:.6f}" for p in probs], label or "", model or ""])

    def close(self) -> None:
        self._f.close()
