"""What kind of thing a path names, checked before dfer reads or writes it, and how a name is shown.

* :func:`input_file`, :func:`input_path`, :func:`output_dir`, :func:`output_file`: the checks of every path a
  user gives (``--config``, ``--out``, ``--cache``, ``-o``, list and label files, ...). A path of the wrong kind
  (a file where a folder is expected, a folder where a file is, a FIFO or a device where a file is) raises
  :class:`InputError` naming the path, what it is and what was expected, before any work starts.
* :func:`regular_file_kind`: None for a regular file (links followed), else what it is. A FIFO, a socket or a
  device named ``*.mp4`` is never opened: reading a FIFO waits for a writer forever, ``/dev/zero`` never ends.
* :func:`shown`: a name as messages, CSV cells and the view page show it. Bytes of a file name that are not
  UTF-8 (Python holds them as lone surrogates, ``os.fsdecode``) appear as ``\\xNN``; :func:`unshown` reverses it.
  JSON files keep such names exactly (:func:`pipeline.core.files.json_text`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pipeline.core.errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def shown(name: str | os.PathLike) -> str:
    """``name`` with every byte that is not UTF-8 written as ``\\xNN`` (other characters unchanged)."""
    text = os.fspath(name)
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unshown(text: str) -> str:
    """The name :func:`shown` showed as ``text`` (``\\xNN`` escapes of bytes 0x80-0xff back to those bytes)."""
    if "\\x" not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)


def kind_of(mode: int) -> str:
    for test, what in _KINDS:
        if test(mode):
            return what
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def regular_file_kind(path: str | Path) -> str | None:
    """None if ``path`` is a regular file (following links); else what it is (``"a FIFO (named pipe)"``, ...).
    OSError (missing, permission denied) propagates."""
    mode = os.stat(path).st_mode
    return None if stat.S_ISREG(mode) else kind_of(mode)


def _where(path: Path, option: str | None) -> str:
    return f"{option} {shown(path)}" if option else shown(path)


def input_file(path: str | Path, option: str | None = None, what: str = "file") -> Path:
    """An existing regular file (to read); :class:`InputError` otherwise."""
    path = Path(path).expanduser()
    try:
        kind = regular_file_kind(path)
    except FileNotFoundError:
        raise InputError(f"{_where(path, option)}: no such {what}") from None
    except OSError as exc:
        raise InputError(f"{_where(path, option)}: cannot be read ({exc.strerror})") from None
    if kind is not None:
        raise InputError(f"{_where(path, option)}: is {kind}, not a {what}")
    return path


def input_path(path: str | Path, option: str | None = None) -> Path:
    """An existing folder or regular file (to read); :class:`InputError` for anything else."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{_where(path, option)}: not found") from None
    except OSError as exc:
        raise InputError(f"{_where(path, option)}: cannot be read ({exc.strerror})") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InputError(f"{_where(path, option)}: is {kind_of(mode)}, not a file or a folder")
    return path


def _parents_are_folders(path: Path, option: str | None) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{_where(path, option)}: {shown(parent)} is a file, so nothing can be written below it")
            return


def output_dir(path: str | Path, option: str | None = None) -> Path:
    """A folder to write into: absent (it will be made) or a folder; :class:`InputError` for a file (or a path
    below one)."""
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            what = "a broken link" if not path.exists() else kind_of(os.stat(path).st_mode)
            raise InputError(f"{_where(path, option)}: is {what}, not a folder; give a folder (it is made if missing)")
        return path
    _parents_are_folders(path, option)
    return path


def output_file(path: str | Path, option: str | None = None) -> Path:
    """A file to write: absent or a regular file (replaced); :class:`InputError` for a folder or a device."""
    path = Path(path).expanduser()
    if path.exists():
        kind = regular_file_kind(path)
        if kind is not None:
            raise InputError(f"{_where(path, option)}: is {kind}; give the name of a file to write")
        return path
    _parents_are_folders(path, option)
    return path
