"""One error hierarchy for everything dfer reports to the person running it, with its exit code.

Every error here is a :class:`DferError`: its message names the file, setting, clip or model at fault
and says what to do; the CLI's ``main`` prints it as one line (no traceback) and exits with the error's
``exit_code``. Anything else that escapes is a bug and keeps its traceback.

Two kinds:

* **Per-clip errors** (:class:`ClipError` and below) become one row of ``RUN/failures.jsonl``; the batch
  goes on. They never reach ``main`` unless ``--strict`` turns the first one into :class:`StrictFailure`.
* **Run errors** (everything else) stop the command before any clip is processed, or at the point
  named, without losing what is already in the cache. Among them, :class:`RunStopError` and below are failures
  of the run met while clips are processed (a full disk, a cache that cannot be written or is gone, a model server
  that does not answer): wherever they are met (a worker, the runner), the runner stops at the first one with its
  message instead of blaming every clip (:func:`run_stop_class`).

Each class also derives from the built-in exception it replaced (``ValueError`` for bad input,
``RuntimeError`` for an environment that cannot work), so ``except ValueError`` in user code keeps working.
"""

import errno
import reprlib

EXIT_OK = 0
"""Success, or a run that stopped before a model stage whose weights are not available here."""
EXIT_FAILED_CLIPS = 1
"""The command finished but some clips failed (listed in ``RUN/failures.jsonl``), or ``dfer cache verify`` found
damaged artifacts (moved aside with ``--repair``)."""
EXIT_USAGE = 2
"""Bad usage, configuration or input: nothing was computed that was not already cached."""
EXIT_STOPPED = 3
"""A ``--strict`` run stopped at its first failure (or before a model stage it could not run), or a run stopped
on a failure of the run, not of a clip (:class:`RunStopError`: a full disk, a cache that cannot be written or
vanished, a model server that does not answer)."""
EXIT_NOTHING_SCORED = 4
"""The run went through its stages but scored no clip (every clip failed before or at classify): ``status.json``
says ``"status": "failed"``; there is nothing to report."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C); finished artifacts and checkpoints are kept, run the same command to go on."""


MESSAGE_EXCERPT = 200
"""At most this many characters of an input are quoted in an error message (see :func:`excerpt`)."""
_REPR = reprlib.Repr()  # a repr that stops early: quoting a huge value costs no more than quoting a small one
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, MESSAGE_EXCERPT, MESSAGE_EXCERPT, 60
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = 8


def excerpt(value: object, limit: int = MESSAGE_EXCERPT, quote: bool = False) -> str:
    """``value`` for an error message, cut to about ``limit`` characters, saying how much was left out: an error
    message quotes a bounded excerpt of the input, never all of it (a config value can be megabytes). A string is
    shown as it is (``quote``: as ``repr`` shows it), anything else as a ``repr`` that stops early."""
    if not isinstance(value, str):
        return _REPR.repr(value)
    more = f"... ({len(value) - limit} more characters)" if len(value) > limit else ""
    return (repr(value[:limit]) if quote else value[:limit]) + more


class DferError(Exception):
    """Root of every error dfer reports to its user."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------------------------------- per clip


class ClipError(DferError):
    """A problem with one clip (not with the run)."""


class UnreadableFileError(ClipError):
    """The file cannot be opened or read (missing, permission denied, empty)."""


class NotAVideoError(ClipError):
    """The file is not a video container FFmpeg understands, or it has no video stream."""


class DecodeError(ClipError):
    """The video stream is damaged or truncated."""


class NoFaceError(ClipError):
    """No face was found in the clip (policy ``faces.no_face=fail``)."""


class VideoChangedError(ClipError):
    """The file changed (was overwritten, replaced or removed) while the run read it: what was computed from it is
    not cached under the fingerprint of its former content; the next run takes the file as it is then."""


class ThinEvidenceError(ClipError):
    """The clip's subject is on too few of its frames to judge (``faces.min_presence`` with
    ``faces.thin_evidence=fail``); checked again on every run, never remembered."""


class UpstreamMissingError(ClipError):
    """An upstream artifact this stage needs is not in the cache (the runner records it under this name)."""


class StageInputError(ClipError):
    """The clip's upstream artifacts do not allow this stage to run (e.g. too few frames)."""


REMEMBERED_FAILURES = frozenset({"NotAVideoError", "DecodeError", "NoFaceError", "StageInputError"})
"""Per-clip errors that the same file, settings and code repeat: the cache remembers them under the stage's key,
so a later run does not try such a clip again (``dfer run --retry-failed`` does). Not remembered: files that could
not be read (permissions change), upstream artifacts missing, and unexpected errors (out of memory, a full disk)."""


class StrictFailure(DferError, RuntimeError):
    """``--strict``: the first clip failure stops the run."""

    exit_code = EXIT_STOPPED


# ---------------------------------------------------------------------------------------------- input and configuration


class ConfigError(DferError, ValueError):
    """A configuration file, preset or override is invalid; the message names the key and the problem."""


class InputError(DferError, ValueError):
    """The input itself (not a single clip) is unusable: missing folder, malformed list file."""


class LabelError(DferError, ValueError):
    """A label set or annotation file cannot be used as written; the message names file and line."""


class TemplateError(DferError, ValueError):
    """A prompt template is missing, has a syntax error or uses a variable the stage does not provide."""


class UnknownStageError(DferError, ValueError):
    """``--until``/``--force`` name a stage that does not exist."""


class RunDirError(DferError, ValueError):
    """A run directory is missing, incomplete or does not hold what was asked for (a video id, a file)."""


class OverlapError(DferError, ValueError):
    """Training (or tuning) clips and test clips overlap: the same file content on both sides. Raised before
    anything is computed; the message names the clips and the option that allows it."""


# ---------------------------------------------------------------------------------------------- environment


class CacheError(DferError, RuntimeError):
    """An artifact on disk is missing, incomplete or unreadable."""


class DamagedArtifactError(CacheError):
    """An artifact in the cache is damaged: a file missing, truncated, with other bytes than were written (its sha256
    differs from the one its ``meta.json`` recorded) or that does not decode. The message names the stage, the
    clip, the key and the file; the artifact has been moved aside (``CACHE/damaged/``), so it is never used again
    and the next run recomputes it (the runner does so at once). ``stage``, ``key``, ``file`` and ``problem`` say
    the same as data."""

    def __init__(self, message: str, stage: str = "", key: str = "", file: str = "", problem: str = ""):
        super().__init__(message)
        self.stage, self.key, self.file, self.problem = stage, key, file, problem

    def __reduce__(self):
        return (type(self), (str(self), self.stage, self.key, self.file, self.problem))


class PreflightError(DferError, RuntimeError):
    """A model stage cannot run with this configuration (bad model id/path, template, label file).
    Raised before any clip is processed."""


class ClusterError(DferError, RuntimeError):
    """The Ray cluster cannot run this job (not reachable, not authenticated, cache not shared, resources
    missing). Raised before any clip is scheduled."""


class ModelUnavailableError(DferError, RuntimeError):
    """The weights cannot be had: offline (or the hub is unreachable) and there is no local copy, or a local
    path that does not exist. The message names the model and says how to point at a local checkpoint."""


class ModelLoadError(DferError, RuntimeError):
    """The model exists but cannot be loaded as the kind of model asked for, or the server is down. The message
    names the model or the URL."""


class BackendRequestError(DferError, RuntimeError):
    """A request to a model server was rejected or kept failing after all retries (the message has the URL,
    the HTTP status and the server's own error text)."""


class LabelScoringUnsupportedError(DferError, RuntimeError):
    """The backend cannot score labels (e.g. a server that returns no logprobs), or cannot tell these labels
    apart (labels that share a first token on a server that scores the first token only)."""


class VideoInputUnsupportedError(DferError, RuntimeError):
    """The model or backend cannot take a :class:`pipeline.backends.base.Video` prompt part (the message names the
    model)."""


class EncoderError(DferError, ValueError):
    """A vision encoder is not a usable vision model (or cannot be loaded, or cannot pool as asked)."""


class LayerError(EncoderError):
    """A requested layer does not exist in the encoder."""


class SocialFusionError(DferError, ValueError):
    """A SocialFusion model cannot be built, loaded or trained as asked."""


# ---------------------------------------------------------------------------------------------- failures of the run


class RunStopError(DferError):
    """A failure of the run, not of the clip being processed: every later clip would fail alike, so the run stops
    at the first one with one message naming what failed, where, and what to do; what is finished stays in the
    cache. Met in a worker, it travels to the runner as a failure row's error name and the runner raises it again
    (:func:`run_stop_class`) instead of writing the row."""

    exit_code = EXIT_STOPPED


class DiskFullError(RunStopError, OSError):
    """The disk of the cache or the run directory is full (or over quota): not a problem of the clip being
    written, and every later one would fail alike, so the run stops; what is finished stays in the cache."""


class CacheUnusableError(RunStopError, CacheError):
    """The cache cannot be written (read-only, permission denied, an I/O error) or read (permission denied), or its
    directory vanished while the run used it."""


class ServerDownError(RunStopError, ModelLoadError):
    """The model server stopped answering during the run (connection refused or timed out on every retry)."""


def run_stop_class(name: str | None) -> type[RunStopError] | None:
    """The :class:`RunStopError` subclass a failure row's error name names, or None (a failure of the clip)."""
    todo = [RunStopError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


# ---------------------------------------------------------------------------------------------- tools


class ExportError(DferError, ValueError):
    """``dfer export`` cannot write what was asked (an unknown file type, Parquet without pyarrow)."""


class DiagnosticsError(DferError, ValueError):
    """A diagnostics input cannot work; the message names the model, layer or column at fault."""


class FinetuneError(DferError, ValueError):
    """Fine-tuning cannot start (or resume) with these inputs; the message names the file or setting."""


class TrackingError(DferError, ValueError):
    """Experiment tracking asked for cannot work here (an unknown tracker, or its package is not installed); the
    message names the setting and the package."""


class AdapterError(DferError, ValueError):
    """An adapter folder is missing, incomplete, or was made for another base model."""
