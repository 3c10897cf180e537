"""Per-clip errors. Each becomes one row of ``RUN/failures.jsonl``; the batch goes on.

Messages are written for the person running the pipeline: they name the clip and say what is
wrong in words they can act on.
"""


class ClipError(Exception):
    """A problem with one clip (not with the run)."""


class UnreadableFileError(ClipError):
    """The file cannot be opened or read (missing, permission denied, empty)."""


class NotAVideoError(ClipError):
    """The file is not a video container FFmpeg understands, or it has no video stream."""


class DecodeError(ClipError):
    """The video stream is damaged or truncated."""


class NoFaceError(ClipError):
    """No face was found in the clip (policy ``faces.no_face=fail``)."""


class UpstreamMissingError(ClipError):
    """An upstream artifact this stage needs is not in the cache."""


class StageInputError(ClipError):
    """The clip's upstream artifacts do not allow this stage to run (e.g. too few frames)."""
