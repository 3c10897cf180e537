"""The run directory: the names of its files and folders, and the only code that writes or reads them.

A run directory is a view over the cache (deleting it loses nothing a model computed)::

    RUN/dfer-run.json     the marker: dfer made this folder (or took it over empty); see "Ownership" below
    RUN/config.yaml       the fully resolved config (``dfer config show`` format)
    RUN/manifest.jsonl    one row per clip: video, path, label, fingerprint, artifacts {stage: cache key}; a run that
                          splits clips into units (``faces.subjects=all``) adds a row for each other unit of a
                          clip, with its ``unit`` (``{"subject": 1}``) and its own keys
    RUN/cache_dir.txt     absolute path of the cache the artifacts are in
    RUN/failures.jsonl    one row per failed clip and stage: video, stage, error, message
    RUN/runcard.json      what produced the numbers besides the config: dfer's version and commit, library versions,
                          the models as resolved (hub commit, local fingerprint), devices and dtypes
                          (:mod:`pipeline.engine.runcard`)
    RUN/status.json       complete | stopped (and before which stage, why), clip and failure counts, stages, seconds,
                          fallbacks (stages that ran the embedded model: which model was asked for, which ran, why),
                          training_overlap (clips the adapter was trained on, where --allow-overlap let the run test
                          on them), models (the model each model stage ran), scoring (clips scored exact / partial /
                          none, abstentions, how labels were matched); "failed" when no clip was scored
    RUN/scores.jsonl      classify only: video, label, labels, scores, prediction, scored, abstained, raw (or answer),
                          label_matching, prompt_tokens, model, and label_order (the order the prompt listed the
                          labels) unless classify.label_order=fixed; with units, their fields and ``unit``
    RUN/predictions.csv   classify only: video, prediction, p_<label>..., label, model (the model that scored it), scored
                          (exact | partial | none), abstained (why there is no prediction; pipeline/eval/ranking.py);
                          with units, a column per field they split by after video (``subject``: 0 the clip's own)
    RUN/timeline.csv      a segmented run (``faces.segments``, docs/timelines.md) with classify: one row per segment of each
                          clip (and person under ``faces.subjects=all``): video, subject, segment, start_s, end_s,
                          face_share, prediction, p_<label>..., label (the labelled span overlapping it most, from a
                          list file with start_s/end_s), scored (exact | partial | none | too_little_face | failed), reason
    RUN/timeline_summary.csv  one row per clip (and person): duration, segments, scored segments, the dominant label,
                          share_<label> (share of the scored time), changes (label changes between scored segments)
    RUN/span_predictions.csv  labels with times (a list file with start_s/end_s): each labelled span with the
                          prediction of the segments overlapping it (``pipeline/eval/spans.py``); predictions.csv's
                          columns with start_s, end_s and segments (how many voted) after video
    RUN/frames.csv        ``dfer export --frames``: one row per face per frame (:mod:`pipeline.tools.export`)
    RUN/labelset.json     classify only: name and labels of the label set the scores are over
    RUN/metrics.json, RUN/report.md and plots (*.png): written by ``dfer report``
    RUN/view.html         ``dfer view``; with RUN/view_files/ (cards and thumbnails) for a run too big for one page
    RUN/inspect/          ``dfer inspect``'s figures, one PNG per clip
    RUN/llamafactory/, RUN/sharegpt/   ``dfer export --format``'s fine-tuning datasets (:mod:`pipeline.tools.export_dataset`)

Ownership. These names are dfer's only inside a folder that carries the marker. ``dfer run`` writes into a folder
that does not exist, is empty, or is marked; there it removes what an earlier run left (:data:`RUN_OUTPUTS`,
:data:`RUN_OUTPUT_DIRS`) and rewrites the rest. Any other folder that is not empty is refused
(:class:`RunDirError`, exit 2), so a user's own ``report.md`` or ``config.yaml`` is never removed or overwritten. A
folder written by a dfer from before the marker (its ``manifest.jsonl`` or ``scores.jsonl`` rows are dfer's) is
taken over: marked, and said so. A file the run reads (``--config``, the list file) is never one it writes or
removes: such a run is refused before anything is touched.

Whole files are written with :func:`pipeline.core.files.write_atomic` (temporary sibling, fsync, rename). JSON
Lines files are written one row at a time (flushed, so a killed run keeps every finished row) and read back with
the line number of every row, so a reader can name ``file:line`` in its errors. Video ids that are file names with
bytes that are not UTF-8 are kept exactly in JSON (``\\udcXX`` escapes) and shown as ``\\xNN`` in
``predictions.csv`` (:func:`pipeline.core.paths.shown`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, TextIO

from pipeline.core.cache import Cache
from pipeline.core.errors import InputError, RunDirError
from pipeline.core.files import json_text, open_stream, save_figure, write_atomic, write_json
from pipeline.core.paths import output_dir, shown, unshown
from pipeline.core.yamlsafe import load_yaml
from pipeline.core.jobs import unit_id

MARKER = "dfer-run.json"
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
INSPECT = "inspect"  # dfer inspect's figures
# what a run writes, and what report, view and inspect make from it: a new run in the same directory removes an
# earlier run's first, so that nothing there describes another run (config.yaml and failures.jsonl are rewritten at once)
FRAMES = "frames.csv"  # dfer export --frames
TIMELINE = "timeline.csv"  # a segmented run's classify output, one row per segment
TIMELINE_SUMMARY = "timeline_summary.csv"  # and one per clip (and person)
TIMELINE_PLOT = "timelines.png"  # dfer report of a segmented run
SPAN_PREDICTIONS = "span_predictions.csv"  # labels with times: each labelled span scored by its segments
RUN_OUTPUTS = (MANIFEST, STATUS, RUNCARD, SCORES, PREDICTIONS, LABELSET, METRICS, REPORT, *PLOTS.values(), FREQUENCY_PLOT, VIEW,
               FRAMES, TIMELINE, TIMELINE_SUMMARY, TIMELINE_PLOT, SPAN_PREDICTIONS)


def view_files_of(page: str | Path) -> Path:
    """The folder beside a view page that holds its cards and thumbnails when the run is too big for one page
    (``view.html`` -> ``view_files``)."""
    page = Path(page)
    return page.with_name(page.stem + "_files")


EXPORT_DIRS = {"llamafactory": "llamafactory", "sharegpt": "sharegpt"}  # dfer export --format's default folders
RUN_OUTPUT_DIRS = (INSPECT, view_files_of(VIEW).name, *EXPORT_DIRS.values())
SWEEP_FILES = {"table": "sweep.md", "plot": "sweep.png", "json": "sweep.json"}
"""``dfer sweep``'s files, in the folder that holds its run directories (marked like a run directory)."""
RUN_FILES = (MARKER, CONFIG, FAILURES, CACHE_DIR, *RUN_OUTPUTS)
"""Every file name dfer writes in a run directory (and :data:`RUN_OUTPUT_DIRS` the folders)."""


def _first_row_is(path: Path, keys: set[str], whole: bool = False) -> bool:
    """The first line of ``path`` (``whole``: all of it, a JSON file of at most 16 MB) is a JSON object with
    ``keys``."""
    try:
        if not path.is_file() or (whole and path.stat().st_size > 16 << 20):
            return False
        with open(path, encoding="utf-8") as f:
            text = f.read() if whole else f.readline(1 << 20)
        row = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and keys <= set(row)


class JsonlWriter:
    """Appends one JSON object per line and flushes it (UTF-8; :func:`pipeline.core.files.json_text`)."""

    def __init__(self, path: Path):
        self.path = path
        self._f: TextIO = open_stream(path)

    def write(self, row: dict) -> None:
        # a score a model gave as NaN is written as NaN, as json.loads reads it back: the report names that row
        self._f.write(json_text(row, allow_nan=True) + "\n")
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
    """One clip (or unit of a clip) of a run: its id, path as given, label (if any), content fingerprint (None if
    the file could not be read), the cache key of each stage's artifact, and the unit (``{}``: the clip's own)."""

    video: str
    path: str
    label: str | None
    fingerprint: str | None
    artifacts: dict[str, str] = field(default_factory=dict)
    unit: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The unit's id: the clip's id for its own unit, else ``clip#subject=1``."""
        return unit_id(self.video, self.unit)

    def to_json(self) -> dict:
        row = asdict(self)
        if not self.unit:
            del row["unit"]
        return row


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is not a file here
        return False


class RunDir:
    """One run directory (it need not exist yet). Writers are used by the runner, the classify outputs, the report,
    the view and inspect; readers by report, compare, inspect, the view, the diagnostics and the tests."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ ownership
    def is_marked(self) -> bool:
        return (self.path / MARKER).is_file()

    def _looks_like_earlier_run(self) -> bool:
        """A run directory (or sweep folder) of a dfer from before the marker: its manifest or scores rows, or its
        sweep.json, are dfer's."""
        return (_first_row_is(self.path / MANIFEST, {"video", "path", "artifacts"})
                or _first_row_is(self.path / SCORES, {"video", "labels", "scores"})
                or _first_row_is(self.path / SWEEP_FILES["json"], {"grid", "rows"}, whole=True))

    def check_claim(self) -> str | None:
        """What :meth:`claim` would do, without writing anything: :class:`RunDirError` if it would refuse the folder,
        else its note (None, or the note that an earlier dfer's run directory is taken over)."""
        try:
            output_dir(self.path, "run directory")
        except InputError as exc:
            raise RunDirError(str(exc)) from None
        if self.is_marked() or not self.path.exists():
            return None
        present = sorted(os.listdir(self.path))
        if not present:
            return None
        if not self._looks_like_earlier_run():
            listed = ", ".join(shown(n) for n in present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
            raise RunDirError(
                f"{shown(self.path)} is not empty and is not a dfer run directory (no {MARKER}; it holds {listed}). "
                "dfer writes a run only into a new or empty folder or into one of its own, so that no file of "
                "yours is removed or overwritten: give another folder (e.g. a new subfolder), or move what is "
                "there elsewhere first")
        return (f"{shown(self.path)}: a run directory of an earlier dfer version (no {MARKER}); marked as a dfer "
                "run directory, its files named in docs/run_directory.md are dfer's from now on")

    def claim(self) -> str | None:
        """Make sure dfer may write its files here, and mark the folder: it is made if missing, taken as it is when
        marked or empty, taken over (and said so: the returned note) when an earlier dfer wrote it; any other folder
        that holds something is refused with :class:`RunDirError` (nothing in it is touched)."""
        note = self.check_claim()
        if self.is_marked():
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / MARKER, {"dfer_run_directory": 1, "marked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "note": "dfer owns the files of this folder that docs/run_directory.md names; "
                                                "it removes an earlier run's before a new run"})
        return note

    def create(self) -> str | None:
        """:meth:`claim` (kept for callers that only need the folder)."""
        return self.claim()

    def _owned_paths(self) -> list[Path]:
        return [self.path / n for n in (*RUN_FILES, *RUN_OUTPUT_DIRS)]

    def begin_run(self, protect: Iterable[str | Path] = ()) -> tuple[list[str], str | None]:
        """Claim the directory for a run (:meth:`claim`) and remove what an earlier run left there
        (:data:`RUN_OUTPUTS`: its predictions, manifest and status, the report, page and figures made from them;
        artifacts stay in the cache). ``protect``: files the run reads (``--config``, the list file); if one of
        them is a file the run would write or remove, :class:`RunDirError` before anything is touched. Returns the
        names removed and :meth:`claim`'s note."""
        self.check_begin(protect)
        note = self.claim()
        removed = []
        for name in RUN_OUTPUTS:
            p = self.path / name
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(name)
        for name in RUN_OUTPUT_DIRS:
            p = self.path / name
            if p.is_symlink():
                p.unlink()  # the link, never what it points to
            elif p.is_dir():
                shutil.rmtree(p)
            else:
                continue
            removed.append(name + "/")
        return removed, note

    def check_begin(self, protect: Iterable[str | Path] = ()) -> None:
        """What :meth:`begin_run` checks before it touches anything (:meth:`check_claim`, and that no file in
        ``protect`` is one the run writes or removes); writes nothing."""
        self.check_claim()
        inputs = [Path(p).expanduser() for p in protect if p is not None]
        for src in (p for p in inputs if p.exists()):
            real = src.resolve()
            for owned in self._owned_paths():
                if owned.exists() and (os.path.samefile(src, owned) or owned.resolve() in real.parents):
                    raise RunDirError(
                        f"{shown(src)} is read by this run, but {shown(owned)} is what the run writes or removes in "
                        f"{shown(self.path)}: copy it elsewhere and give the copy (e.g. cp {shown(src)} "
                        f"my-{shown(src.name)}), so that it is never overwritten")

    # ------------------------------------------------------------------ writing
    def write_config(self, text: str) -> None:
        write_atomic(self.path / CONFIG, text)

    def failure_log(self) -> JsonlWriter:
        return JsonlWriter(self.path / FAILURES)

    def write_manifest(self, rows: Iterable[ManifestRow], cache_root: Path) -> None:
        with JsonlWriter(self.path / MANIFEST) as f:
            for row in rows:
                f.write(row.to_json())
        write_atomic(self.path / CACHE_DIR, str(Path(cache_root).resolve()) + "\n", encoding="utf-8")

    def write_status(self, doc: dict) -> None:
        write_json(self.path / STATUS, doc)

    def write_runcard(self, doc: dict) -> None:
        write_json(self.path / RUNCARD, doc, newline=True)

    def score_writers(self, labels: list[str], unit_fields: tuple[str, ...] = ()) -> tuple[JsonlWriter, "PredictionWriter"]:
        """``scores.jsonl`` and ``predictions.csv`` writers (close both); ``unit_fields``: columns of a run that split
        its clips into units."""
        return JsonlWriter(self.path / SCORES), PredictionWriter(self.path / PREDICTIONS, labels, unit_fields)

    def timeline_writers(self, labels: list[str]) -> tuple["TimelineWriter", "TimelineSummaryWriter"]:
        """``timeline.csv`` and ``timeline_summary.csv`` writers, row by row (close both)."""
        return TimelineWriter(self.path / TIMELINE, labels), TimelineSummaryWriter(self.path / TIMELINE_SUMMARY, labels)

    def span_writer(self, labels: list[str]) -> "PredictionWriter":
        """``span_predictions.csv``: predictions.csv's columns, with ``start_s``, ``end_s`` and ``segments`` (those
        that voted) after ``video``."""
        return PredictionWriter(self.path / SPAN_PREDICTIONS, labels, ("start_s", "end_s", "segments"))

    def timeline(self) -> list[dict] | None:
        """``timeline.csv``'s rows (None: the run wrote none): times and probabilities as numbers, empty cells None."""
        return _read_csv(self.path / TIMELINE)

    def timeline_summary(self) -> list[dict] | None:
        return _read_csv(self.path / TIMELINE_SUMMARY)

    def write_labelset(self, name: str, labels: list[str]) -> None:
        write_json(self.path / LABELSET, {"name": name, "labels": labels}, indent=None)

    def write_metrics(self, doc: dict) -> None:
        write_json(self.path / METRICS, doc, indent=2, newline=True)

    def write_report(self, markdown: str) -> None:
        write_atomic(self.path / REPORT, markdown)

    def write_plot(self, name: str, fig: Any) -> Path:
        """A matplotlib figure as ``RUN/<name>`` (one of :data:`PLOTS` or :data:`FREQUENCY_PLOT`), PNG at 100 dpi."""
        if name not in (*PLOTS.values(), FREQUENCY_PLOT, TIMELINE_PLOT):
            raise ValueError(f"{name} is not a plot of the run directory")
        return save_figure(fig, self.path / name, dpi=100)

    def inspect_figure(self, video: str) -> Path:
        """Where ``dfer inspect`` draws clip (or unit) ``video``: ``RUN/inspect/<video, / and # as __>.png``."""
        return self.path / INSPECT / f"{video.replace('/', '__').replace('#', '__')}.png"

    def view_page(self) -> Path:
        return self.path / VIEW

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
        return [ManifestRow(r["video"], r["path"], r.get("label"), r.get("fingerprint"), r.get("artifacts") or {},
                            r.get("unit") or {})
                for _, r in read_jsonl(self._written_by_run(MANIFEST))]

    def find(self, video: str) -> ManifestRow:
        """The clip ``video``: its id or its path as the manifest gives it (the path of the input or list file row;
        either also as messages show names that are not UTF-8), the same file by another path, or a part of exactly
        one id; or one unit of a clip by its id (``clip#subject=1``)."""
        rows = self.manifest()
        own = [r for r in rows if not r.unit]
        names = (video, unshown(video))
        exact = ([r for r in rows if r.id in names] or [r for r in own if r.video in names]
                 or [r for r in own if r.path in names])
        if not exact and os.path.isfile(unshown(video)):
            exact = [r for r in own if _same_file(r.path, unshown(video))]
        if exact:
            return exact[0]
        partial = [r for r in own if video in r.video or video in shown(r.video)]
        if len(partial) == 1:
            return partial[0]
        where = self.path / MANIFEST
        if not partial:
            raise RunDirError(f"no video '{shown(video)}' in {where} ({len(rows)} clips listed)")
        raise RunDirError(f"'{shown(video)}' matches {len(partial)} clips in {where}: "
                          + ", ".join(shown(r.video) for r in partial[:5]))

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
        return (load_yaml(path.read_text(encoding="utf-8"), str(path), RunDirError) or {}) if path.is_file() else None

    def metrics(self) -> dict | None:
        return self._json(METRICS)


class PredictionWriter:
    """``predictions.csv``: ``video, prediction, p_<label>..., label, model, scored, abstained`` (probabilities with 6
    decimals; the model that scored the clip; how it was scored; an abstention has no prediction and no
    probabilities, and says why; a video id with bytes that are not UTF-8 as :func:`pipeline.core.paths.shown` shows
    it); a run split into units has a column per ``unit_fields`` after ``video``."""

    def __init__(self, path: Path, labels: list[str], unit_fields: tuple[str, ...] = ()):
        self._f = open_stream(path, newline="")
        self._w = csv.writer(self._f)
        self._n = len(labels)
        self.unit_fields = tuple(unit_fields)
        self._w.writerow(["video", *self.unit_fields, "prediction", *[f"p_{lab}" for lab in labels], "label", "model",
                          "scored", "abstained"])

    def write(self, video: str, prediction: str | None, probs: Iterable[float] | None, label: str | None,
              model: str | None = None, scored: str = "exact", abstained: str | None = None,
              unit: dict | None = None) -> None:
        cells = [f"{p:.6f}" for p in probs] if probs is not None else [""] * self._n
        cols = [(unit or {}).get(k, "") for k in self.unit_fields]
        self._w.writerow([shown(video), *cols, prediction or "", *cells, label or "", model or "", scored,
                          abstained or ""])

    def close(self) -> None:
        self._f.close()


TIMELINE_TEXT = ("video", "prediction", "label", "scored", "reason", "dominant")
TIMELINE_INT = ("subject", "segment", "segments", "scored_segments", "changes")


class TimelineWriter:
    """``timeline.csv`` (see the module docstring), one segment a row, flushed as written."""

    def __init__(self, path: Path, labels: list[str]):
        self._f = open_stream(path, newline="")
        self._w = csv.writer(self._f)
        self._n = len(labels)
        self._w.writerow(["video", "subject", "segment", "start_s", "end_s", "face_share", "prediction",
                          *[f"p_{lab}" for lab in labels], "label", "scored", "reason"])

    def write(self, video: str, subject: int, segment: int, start: float, end: float, face_share: float,
              prediction: str | None, probs: Iterable[float] | None, label: str | None, scored: str,
              reason: str | None) -> None:
        cells = [f"{p:.6f}" for p in probs] if probs is not None else [""] * self._n
        self._w.writerow([shown(video), subject, segment, f"{start:.3f}", f"{end:.3f}", f"{face_share:.4f}",
                          prediction or "", *cells, label or "", scored, reason or ""])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TimelineSummaryWriter:
    """``timeline_summary.csv``: per clip (and person) its duration, segments, scored segments, dominant label, share
    of the scored time per label and number of changes."""

    def __init__(self, path: Path, labels: list[str]):
        self._f = open_stream(path, newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(["video", "subject", "duration_s", "segments", "scored_segments", "dominant",
                          *[f"share_{lab}" for lab in labels], "changes"])

    def write(self, video: str, subject: int, duration: float, segments: int, scored: int, dominant: str | None,
              shares: Iterable[float] | None, changes: int, n_labels: int) -> None:
        cells = [f"{s:.4f}" for s in shares] if shares is not None else [""] * n_labels
        self._w.writerow([shown(video), subject, f"{duration:.3f}", segments, scored, dominant or "", *cells, changes])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_csv(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {}
        for k, v in r.items():
            if k in TIMELINE_TEXT:
                row[k] = v or None
            elif k in TIMELINE_INT:
                row[k] = int(v) if v != "" else None
            else:
                row[k] = float(v) if v != "" else None
        out.append(row)
    return out
