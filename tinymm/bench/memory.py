"""Memory used by this process: resident set size now and at its peak, and GPU memory.

- Peak RSS comes from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which Linux reports in KiB
  and macOS in bytes; it is the high-water mark of the whole process so far, so it only grows.
  Linux carries a parent's peak into a child across fork + exec: a benchmark launched from a
  large process starts with that process's peak.
- Current RSS comes from ``/proc/self/statm`` (resident pages x page size) on Linux; elsewhere it
  is None.
- GPU memory: onnxruntime offers no cheap query of its CUDA arena, so it is read from
  ``nvidia-smi --query-compute-apps`` for this process id. onnxruntime's CUDA arena grows and is
  not returned to the driver, so the value after the timed runs is also their peak. On a Jetson
  (memory shared with the CPU) nvidia-smi has no per-process figure and the GPU value is None:
  the RSS and tegrastats' RAM line cover it there.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024 * 1024
STATM = Path("/proc/self/statm")
NVIDIA_SMI_APPS = ("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")


def _ru_maxrss_unit_bytes(platform: str = sys.platform) -> int:
    """Bytes per unit of ru_maxrss: bytes on macOS, KiB on Linux and the BSDs."""
    return 1 if platform == "darwin" else BYTES_PER_KIB


def peak_rss_bytes() -> int | None:
    """The largest resident set size this process has had, in bytes (None where unsupported)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _ru_maxrss_unit_bytes()


def current_rss_bytes() -> int | None:
    """This process's resident set size now, in bytes (Linux; None elsewhere)."""
    try:
        fields = STATM.read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError, AttributeError):
        return None


def parse_compute_apps(text: str, pid: int) -> int | None:
    """Bytes of GPU memory used by ``pid`` in ``nvidia-smi --query-compute-apps=pid,used_memory``
    (csv, noheader, nounits: MiB) output, summed over GPUs; None when the process is not listed."""
    total = None
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            total = (total or 0) + int(fields[1]) * BYTES_PER_MIB
    return total


def gpu_memory_bytes(run: Callable[[Sequence[str]], "str | None"] | None = None, pid: int | None = None) -> int | None:
    """GPU memory this process holds now, from nvidia-smi; None without nvidia-smi or a listing."""
    if run is None:
        from tinymm.bench.machine import run_command

        run = run_command
    text = run(NVIDIA_SMI_APPS)
    return None if text is None else parse_compute_apps(text, os.getpid() if pid is None else pid)


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory of this process at one moment, in bytes (None: not measurable here)."""

    rss_bytes: int | None
    peak_rss_bytes: int | None
    gpu_bytes: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def memory_snapshot(*, gpu: bool = False) -> MemorySnapshot:
    """RSS now and at its peak; GPU memory too when ``gpu`` (it runs nvidia-smi, ~0.1 s).

    Linux updates the high-water mark behind ru_maxrss lazily, so it can lag the current RSS
    by a little; the peak reported is never below the current value.
    """
    rss, peak = current_rss_bytes(), peak_rss_bytes()
    if rss is not None and peak is not None:
        peak = max(peak, rss)
    return MemorySnapshot(rss, peak, gpu_memory_bytes() if gpu else None)
