"""Streaming video decoding with PyAV.

Frames are yielded one at a time (never the whole video in memory), each with its timestamp in
seconds taken from its pts (so variable frame rate is right) and upright according to the
stream's display-matrix rotation (so phone videos are not sideways). Opening errors are turned
into :mod:`pipeline.core.errors` types with messages that name the file.

The video stream read is the one ``ffmpeg`` would pick (:func:`choose_stream`): the default one, unless another
is much larger; cover art last. The header's
duration is the length of the content: a container that counts its duration from zero while its first frame is
stamped a day later (a recording's wall-clock start) says ``start + length``, and the start is subtracted.
Only regular files are opened (a FIFO would wait for a writer forever).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from pipeline.core.errors import DecodeError, NotAVideoError, UnreadableFileError
from pipeline.core.paths import kind_of


@dataclass
class VideoInfo:
    path: str
    codec: str
    width: int  # as stored
    height: int
    rotation: int  # degrees counter-clockwise to apply for upright display (0/90/180/270)
    display_width: int
    display_height: int
    avg_fps: float | None
    header_duration: float | None  # seconds, from the container/stream header (may be absent)
    header_frames: int | None

    def to_json(self) -> dict:
        return asdict(self)


def _check_readable(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: file not found") from None
    except PermissionError:
        raise UnreadableFileError(f"{path}: permission denied (cannot access the file)") from None
    size = st.st_size
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableFileError(f"{path}: is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFileError(f"{path}: is {kind_of(st.st_mode)}, not a video file (never opened)")
    if size == 0:
        raise UnreadableFileError(f"{path}: file is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise UnreadableFileError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read the file ({os.strerror(exc.errno or errno.EIO)})") from None


DEFAULT_BONUS = 5_000_000
"""What the ``default`` disposition adds to a stream's pixel count when ``ffmpeg`` picks a video stream."""


def choose_stream(streams) -> "av.video.stream.VideoStream | None":
    """The video stream ``ffmpeg`` maps by default (``fftools/ffmpeg_mux_init.c``, ``map_auto_video``): the highest
    score ``width x height + 5,000,000 if its disposition is default``, cover art (attached pictures) scoring 1, the
    first stream winning a tie. A default stream is chosen unless another has 5 megapixels more."""
    best, best_score = None, 0
    for s in streams:
        cc = s.codec_context
        score = int(cc.width or 0) * int(cc.height or 0)
        score += DEFAULT_BONUS if s.disposition & av.stream.Disposition.default else 0
        if s.disposition & av.stream.Disposition.attached_pic:
            score = 1
        if best is None or score > best_score:
            best, best_score = s, score
    return best


def _normalise_rotation(deg: float) -> int:
    return int(round(deg / 90.0)) % 4 * 90


def upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an HxWxC array counter-clockwise by ``rotation`` degrees (multiple of 90)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


class VideoReader:
    """Open one video file for streaming; use as a context manager.

    Each reader owns its own container and decoder; never share one across processes.
    """

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        _check_readable(self.path)
        try:
            self.container = av.open(str(self.path), mode="r")
        except av.error.InvalidDataError:
            raise NotAVideoError(
                f"{self.path}: not a video file FFmpeg can read (invalid data; wrong extension or damaged header)"
            ) from None
        except av.error.FFmpegError as exc:
            raise NotAVideoError(f"{self.path}: cannot open as a video ({exc})") from None
        try:
            if not self.container.streams.video:
                kinds = sorted({s.type for s in self.container.streams}) or ["none"]
                raise NotAVideoError(
                    f"{self.path}: no video stream in this file (streams found: {', '.join(kinds)}); audio-only?"
                )
            self.stream = choose_stream(self.container.streams.video)
            self.stream.thread_type = "AUTO"
            if threads:
                self.stream.codec_context.thread_count = threads
            self.info = self._read_info()
        except BaseException:
            self.container.close()
            raise

    def _read_info(self) -> VideoInfo:
        s = self.stream
        cc = s.codec_context
        rot = 0
        # Display-matrix rotation is also exposed per frame; the stream side data is read at open
        # when present, and the per-frame value wins during decoding.
        try:
            rot = _normalise_rotation(getattr(s, "rotation", 0) or 0)
        except Exception:
            rot = 0
        tag = (s.metadata or {}).get("rotate")
        if not rot and tag:
            try:
                rot = _normalise_rotation(-float(tag))
            except ValueError:
                pass
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w <= 0 or h <= 0:
            raise NotAVideoError(f"{self.path}: the video stream has no frame size (damaged or unsupported codec)")
        dur = None
        if s.duration is not None and s.time_base is not None:
            dur = float(s.duration * s.time_base)  # the stream's own length
        elif self.container.duration:
            dur = self.container.duration / 1_000_000
            start = (self.container.start_time or 0) / 1_000_000
            if 0 < start < dur:  # counted from zero, the content starting at `start` (e.g. Matroska's segment)
                dur -= start
        fps = float(s.average_rate) if s.average_rate else None
        dw, dh = (h, w) if rot in (90, 270) else (w, h)
        return VideoInfo(
            path=str(self.path),
            codec=cc.name,
            width=w,
            height=h,
            rotation=rot,
            display_width=dw,
            display_height=dh,
            avg_fps=fps,
            header_duration=dur,
            header_frames=int(s.frames) if s.frames else None,
        )

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """Yield ``(t_seconds, frame)`` in presentation order, ``t`` relative to the first frame.

        Frames without a pts get the previous timestamp plus one nominal frame interval.
        A damaged stream raises :class:`DecodeError` naming the file and the time reached.
        """
        t_first = None
        last_t = None
        step = 1.0 / self.info.avg_fps if self.info.avg_fps else 1 / 30
        tb = self.stream.time_base
        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is not None and tb is not None:
                    t = float(frame.pts * tb)
                elif last_t is not None:
                    t = last_t + step
                else:
                    t = 0.0
                if t_first is None:
                    t_first = t
                t_rel = t - t_first
                if last_t is not None and t_rel <= last_t:
                    t_rel = last_t + 1e-6  # duplicated/non-monotonic pts: keep strictly increasing
                last_t = t_rel
                yield t_rel, frame
        except av.error.FFmpegError as exc:
            where = f"after {last_t:.2f} s" if last_t is not None else "before the first frame"
            raise DecodeError(f"{self.path}: the video stream is damaged {where} ({exc})") from None

    def frame_rotation(self, frame: av.VideoFrame) -> int:
        try:
            r = frame.rotation
        except Exception:
            r = 0
        return _normalise_rotation(r) if r else self.info.rotation


def to_rgb(frame: av.VideoFrame, rotation: int, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Convert (and optionally resize, in the stored orientation) a frame to an upright RGB array."""
    if width and height:
        arr = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    else:
        arr = frame.to_ndarray(format="rgb24")
    return upright(arr, rotation)


class FramePixels:
    """The upright RGB picture of one decoded frame, converted from YUV only where it is read.

    ``pixels[y0:y1, x0:x1]`` and ``pixels.shape`` behave like those of ``to_rgb(frame, rotation)``
    and give the same bytes. For the common case (yuv420p, no rotation) only the requested region is
    converted: its planes are copied (widened to even coordinates) into a small frame that goes
    through the same swscale conversion as the whole frame would, so the pixels are byte-identical
    (``tests/test_video.py`` checks it) at a fraction of the cost when the region is small.
    Anything else is converted whole, once.
    """

    _SUBFRAMES_KEPT = 8  # small frames (and their swscale contexts) reused by region size ...
    _SUBFRAMES_PIXELS = 8 << 20  # ... at most this many pixels in all (12 MiB of yuv420p)

    _subframes: dict = {}

    def __init__(self, frame: av.VideoFrame, rotation: int):
        self.frame, self.rotation = frame, rotation
        w, h = frame.width, frame.height
        self.shape = (w, h, 3) if rotation in (90, 270) else (h, w, 3)
        # odd-sized frames go through another swscale path whose pixels a region conversion does not reproduce
        self._region_ok = rotation == 0 and frame.format.name == "yuv420p" and w % 2 == 0 and h % 2 == 0
        self._full: np.ndarray | None = None
        self._kept: tuple[int, int, int, int, np.ndarray] | None = None

    def keep(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Convert the region ``[y0:y1, x0:x1]`` (clipped to the frame) now and serve later requests inside it
        from it (e.g. several crops around one face)."""
        h, w = self.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            self._kept = None
            self._kept = (x0, y0, x1, y1, self[y0:y1, x0:x1])

    def full(self) -> np.ndarray:
        if self._full is None:
            self._full = to_rgb(self.frame, self.rotation)
        return self._full

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key
        h, w = self.shape[:2]
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        if self._kept is not None:
            kx0, ky0, kx1, ky1, kept = self._kept
            if kx0 <= x0 and ky0 <= y0 and x1 <= kx1 and y1 <= ky1:
                return kept[y0 - ky0 : y1 - ky0, x0 - kx0 : x1 - kx0]
        sub = self._subframe(x0, y0, x1, y1)
        if sub is None:
            return self.full()[y0:y1, x0:x1]
        frame, ax0, ay0 = sub
        return frame.to_ndarray(format="rgb24")[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]

    @staticmethod
    def _span(a: int, b: int, limit: int, step: int = 32) -> tuple[int, int]:
        """Start and length of an even-aligned span covering ``[a, b)``, its length rounded up to ``step`` (so that
        regions of slightly different sizes share a small frame) and kept inside ``[0, limit)``."""
        start = a - a % 2
        length = min(-(-(b - start) // step) * step, limit)
        return min(start, limit - length), length

    def _subframe(self, x0: int, y0: int, x1: int, y1: int):
        """The region's planes in a small yuv420p frame: (frame, x0, y0 of its corner), or None when only a
        whole-frame conversion can give the same pixels."""
        if not self._region_ok or self._full is not None:
            return None
        ax0, ww = self._span(x0, x1, self.frame.width)
        ay0, hh = self._span(y0, y1, self.frame.height)
        kept = FramePixels._subframes
        sub = kept.pop((ww, hh), None)
        if sub is None:
            sub = av.VideoFrame(ww, hh, "yuv420p")
            while kept and (len(kept) >= self._SUBFRAMES_KEPT or sum(w * h for w, h in kept) + ww * hh > self._SUBFRAMES_PIXELS):
                kept.pop(next(iter(kept)))
        kept[(ww, hh)] = sub  # most recently used last
        for k, (src_plane, dst_plane) in enumerate(zip(self.frame.planes, sub.planes)):
            d = 1 if k == 0 else 2
            src = np.frombuffer(src_plane, np.uint8).reshape(src_plane.height, src_plane.line_size)
            dst = np.frombuffer(dst_plane, np.uint8).reshape(dst_plane.height, dst_plane.line_size)
            dst[:, : ww // d] = src[ay0 // d : (ay0 + hh) // d, ax0 // d : (ax0 + ww) // d]
        sub.colorspace, sub.color_range = self.frame.colorspace, self.frame.color_range
        return sub, ax0, ay0
