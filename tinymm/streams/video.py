"""``watch``: run a vision task on a camera, video file or RTSP stream with bounded latency.

A reader thread pulls frames from ``cv2.VideoCapture`` and keeps only the newest one: when the
task is slower than the camera, frames are dropped, never queued, so a result is always about
a recent frame (latency <= one task run + one frame interval). The caller's loop takes the newest
frame, applies the policy (every N frames, or every T seconds of stream time) and runs the task.

Pacing (``WatchOptions.pace``):

- ``live``: read as fast as the source delivers (cameras and network streams pace themselves);
- ``realtime``: read a file at its own frame rate, as if it were a camera (dropping like one);
- ``all``: hand every frame of a file to the policy, nothing dropped (offline processing);
- ``auto``: ``realtime`` for files, ``live`` for camera indices and URLs.

Each result is a JSON-able dict: ``frame`` (index from 0), ``t_s`` (stream time: frame index /
fps for files, seconds since the first frame otherwise), ``latency_ms`` (from the frame's
capture to the task's end), ``task_ms``, ``dropped`` and ``skipped`` (frames lost to the reader
and frames the policy passed over since the previous result) and ``result`` (the task's dict).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from tinymm.errors import InputError

logger = logging.getLogger(__name__)

PACES = ("auto", "live", "realtime", "all")
MS_PER_S = 1000.0
READER_JOIN_TIMEOUT_S = 2.0  # how long closing waits for the reader thread (a network read may hang)
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")

VideoSource = int | str | Path  # camera index, file path or stream URL
Task = Callable[[np.ndarray], Any]  # (H, W, 3) uint8 BGR frame -> dict, or a result with to_dict()


@dataclass(frozen=True)
class WatchOptions:
    """When the task runs and how the source is read; a bad value is a ValueError."""

    every_n_frames: int | None = None  # run once at least N frames passed since the last run (None: every frame)
    every_s: float | None = None  # run once at least T seconds of stream time passed since the last run
    pace: str = "auto"  # auto | live | realtime | all (see the module docstring)
    max_results: int | None = None  # stop after this many results; None: until the source ends

    def __post_init__(self) -> None:
        if self.every_n_frames is not None and self.every_s is not None:
            raise ValueError("give every_n_frames or every_s, not both")
        n = self.every_n_frames
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"every_n_frames={n!r} must be a positive integer")
        t = self.every_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
            raise ValueError(f"every_s={t!r} must be a positive number of seconds")
        if self.pace not in PACES:
            raise ValueError(f"pace={self.pace!r} is not one of {list(PACES)}")
        m = self.max_results
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_results={m!r} must be a positive integer or None")


@dataclass(frozen=True)
class Frame:
    """One frame as the reader got it."""

    index: int  # 0-based position in the stream
    t_s: float  # stream time in seconds
    read_at: float  # time.perf_counter() when it was read
    image: np.ndarray  # (H, W, 3) uint8 BGR


def camera_index(source: VideoSource) -> int | None:
    """The camera index of ``source`` (an int, or a string of digits such as "0"), else None."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, str) and source.isdigit():
        return int(source)
    return None


def open_capture(source: VideoSource) -> tuple[Any, bool]:
    """An opened cv2.VideoCapture for ``source`` and whether it is a file; InputError otherwise."""
    import cv2

    index = camera_index(source)
    text = str(source)
    is_url = text.lower().startswith(URL_SCHEMES)
    is_file = index is None and not is_url
    if is_file and not Path(text).is_file():
        raise InputError(
            f"video source {text!r} is not a file, a camera index (0, 1, ...) or a stream URL "
            f"({', '.join(URL_SCHEMES)}); check the path"
        )
    capture = cv2.VideoCapture(index if index is not None else text)
    if not capture.isOpened():
        capture.release()
        what = f"camera {index}" if index is not None else repr(text)
        raise InputError(f"OpenCV cannot open video source {what}; check that it exists and is a supported video")
    return capture, is_file


class LatestFrameReader:
    """A thread that reads ``capture`` and keeps only its newest frame (or, pace "all", each frame in turn)."""

    def __init__(self, capture: Any, *, pace: str, fps: float, is_file: bool) -> None:
        self._capture, self._pace, self._is_file = capture, pace, is_file
        self._fps = fps if fps > 0 and math.isfinite(fps) else 0.0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self.frames_read = 0
        self.dropped = 0  # frames overwritten before anyone took them
        self._thread = threading.Thread(target=self._run, name="tinymm-video-reader", daemon=True)

    def start(self) -> LatestFrameReader:
        self._thread.start()
        return self

    def _stream_time(self, index: int, now: float, start: float) -> float:
        return index / self._fps if self._is_file and self._fps else now - start

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            while not self._stop.is_set():
                ok, image = self._capture.read()
                if not ok or image is None:
                    break
                index = self.frames_read
                if self._pace == "realtime" and self._fps:
                    delay = start + index / self._fps - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                now = time.perf_counter()
                frame = Frame(index, self._stream_time(index, now, start), now, image)
                with self._cond:
                    while self._pace == "all" and self._latest is not None and not self._stop.is_set():
                        self._cond.wait()
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.frames_read += 1
                    self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - a failed read (cv2.error, ...) goes to the consumer, which raises it
            self._error = e
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def take(self) -> Frame | None:
        """The newest frame not taken yet, waiting for one; None once the source has ended."""
        with self._cond:
            while self._latest is None and not self._ended:
                self._cond.wait()
            if self._error is not None:
                raise InputError(f"reading the video failed: {self._error}") from self._error
            frame, self._latest = self._latest, None
            self._cond.notify_all()
            return frame

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(READER_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the video reader did not stop within %.1f s; leaving it to exit", READER_JOIN_TIMEOUT_S)


def _due(frame: Frame, last: Frame | None, options: WatchOptions) -> bool:
    if last is None:
        return True
    if options.every_n_frames is not None:
        return frame.index - last.index >= options.every_n_frames
    if options.every_s is not None:
        return frame.t_s - last.t_s >= options.every_s
    return True


def _as_dict(result: Any) -> Any:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    return dict(result) if isinstance(result, Mapping) else result


def watch(source: VideoSource, task: Task, options: WatchOptions | None = None) -> Iterator[dict[str, Any]]:
    """Run ``task`` on frames of ``source`` by ``options``; yield one JSON-able dict per run.

    Args:
        source: a camera index (0 or "0"), a video file, or a stream URL (rtsp://...).
        task: called with each chosen frame, (H, W, 3) uint8 BGR; returns a dict or a result
            with ``to_dict()`` (e.g. ``lambda frame: vlm.caption(frame)``).
        options: the policy and pacing (default: every frame, auto pacing, until the end).

    Raises:
        InputError: the source cannot be opened, or yields no frame at all.
    """
    import cv2

    options = options if options is not None else WatchOptions()
    capture, is_file = open_capture(source)
    pace = options.pace if options.pace != "auto" else ("realtime" if is_file else "live")
    reader = LatestFrameReader(capture, pace=pace, fps=float(capture.get(cv2.CAP_PROP_FPS)), is_file=is_file)
    reader.start()
    last: Frame | None = None
    results = skipped = dropped_before = 0
    try:
        while options.max_results is None or results < options.max_results:
            frame = reader.take()
            if frame is None:
                break
            if not _due(frame, last, options):
                skipped += 1
                continue
            started = time.perf_counter()
            output = _as_dict(task(frame.image))
            done = time.perf_counter()
            dropped = reader.dropped
            yield {
                "frame": frame.index,
                "t_s": round(frame.t_s, 3),
                "latency_ms": round((done - frame.read_at) * MS_PER_S, 3),
                "task_ms": round((done - started) * MS_PER_S, 3),
                "dropped": dropped - dropped_before,
                "skipped": skipped,
                "result": output,
            }
            last, results, skipped, dropped_before = frame, results + 1, 0, dropped
    finally:
        reader.stop()
        capture.release()
    if reader.frames_read == 0:
        raise InputError(f"no frame could be read from video source {str(source)!r}; is it a valid, non-empty video?")
