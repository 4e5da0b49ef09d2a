"""Streams for robots: vision tasks on live video, and spoken commands from a live microphone.

- ``video.watch(source, task, WatchOptions(...))``: a camera index, video file or RTSP URL; the
  task runs every N frames or every T seconds on the newest frame (frames are dropped, never
  queued, so latency stays bounded);
- ``audio.listen(pipeline, chunks, sample_rate)``: an energy voice activity detector with
  hangover cuts the stream into utterances, each transcribed (and parsed into an intent).

Both yield JSON-able dicts, one per result. Importing this package imports neither OpenCV nor
the pipelines.
"""

from __future__ import annotations

from tinymm.streams.audio import (
    EnergyVAD,
    Utterance,
    VADOptions,
    listen,
    pcm_chunks,
    segment,
    wav_chunks,
)
from tinymm.streams.video import WatchOptions, watch

__all__ = [
    "EnergyVAD",
    "Utterance",
    "VADOptions",
    "WatchOptions",
    "listen",
    "pcm_chunks",
    "segment",
    "watch",
    "wav_chunks",
]
