"""Power and temperature on a Jetson, sampled from ``tegrastats`` while a benchmark runs.

``tegrastats --interval MS`` prints one line per interval. The parts read here, by JetPack era:

- Jetson Nano / TX1 (L4T R32): rails as ``POM_5V_IN 4520/4680`` (current/average mW, no unit),
  temperatures as ``CPU@60.5C GPU@59C thermal@59.75C``;
- Xavier (R32): ``VDD_IN 14025/14416 VDD_CPU 2209/2538``, temperatures may be negative
  (``BCPU@-45C``);
- Orin (R35/R36): a timestamp first, rails with units ``VDD_IN 4556mW/4556mW``, lower-case
  temperatures ``cpu@47.687C tj@48.625C``; a sensor that is off reads ``-256C`` and is dropped.

``parse_tegrastats_line`` turns one line into a ``TegrastatsSample`` (rails in mW, temperatures in
degrees C, RAM in MB, GPU load in %); ``TegrastatsSampler`` runs the tool in a thread for the
duration of a ``with`` block and ``summarize_samples`` gives, per rail, the mean and peak power
and the energy (trapezoid rule, joules), and per sensor the mean and peak temperature.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

TEGRASTATS = "tegrastats"
DEFAULT_INTERVAL_MS = 100
MIN_INTERVAL_MS = 10  # tegrastats itself refuses much faster rates; below this is a mistake
MS_PER_S = 1000.0
MW_PER_W = 1000.0
SENSOR_OFF_C = -256.0  # what Orin's tegrastats prints for a powered-down thermal sensor
STOP_TIMEOUT_S = 2.0  # how long stop() waits for tegrastats to exit before killing it
# The rail that measures the whole module's input power, in order of preference:
# Orin NX/Nano and Xavier: VDD_IN; Nano/TX1: POM_5V_IN; AGX Orin: VIN_SYS_5V0.
TOTAL_POWER_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")

# "NAME 1234/5678" or "NAME 1234mW/5678mW": a rail's current and average power in mW. The value
# must end at a space or the end of the line, so "RAM 4722/7844MB" and "SWAP 0/1024MB" do not match.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# "NAME@-45.5C": a temperature sensor (the name starts with a letter, so "55%@2035" is not one).
_TEMPERATURE = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ (\d+)%")


@dataclass(frozen=True)
class TegrastatsSample:
    """One tegrastats line."""

    t_s: float  # when it was read, seconds on the sampler's clock
    rails_mw: Mapping[str, float] = field(default_factory=dict)  # rail -> current power, mW
    rails_avg_mw: Mapping[str, float] = field(default_factory=dict)  # rail -> tegrastats' running average, mW
    temperatures_c: Mapping[str, float] = field(default_factory=dict)  # sensor -> degrees C
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    gpu_load_percent: float | None = None  # GR3D_FREQ, the integrated GPU's load


def parse_tegrastats_line(line: str, t_s: float = 0.0) -> TegrastatsSample | None:
    """The sample in one tegrastats line; None when the line holds no rail, temperature or RAM."""
    rails = {name: float(cur) for name, cur, _ in _RAIL.findall(line)}
    averages = {name: float(avg) for name, _, avg in _RAIL.findall(line)}
    temperatures = {name: float(value) for name, value in _TEMPERATURE.findall(line) if float(value) > SENSOR_OFF_C}
    ram = _RAM.search(line)
    gpu = _GPU_LOAD.search(line)
    if not rails and not temperatures and ram is None:
        return None
    return TegrastatsSample(
        t_s=t_s,
        rails_mw=rails,
        rails_avg_mw=averages,
        temperatures_c=temperatures,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
        gpu_load_percent=float(gpu.group(1)) if gpu else None,
    )


@dataclass(frozen=True)
class RailSummary:
    mean_mw: float
    peak_mw: float
    energy_j: float  # integral of power over the sampled time (trapezoid rule)


@dataclass(frozen=True)
class TemperatureSummary:
    mean_c: float
    peak_c: float


@dataclass(frozen=True)
class PowerSummary:
    """What tegrastats saw during a benchmark."""

    samples: int
    duration_s: float  # first to last sample
    rails: Mapping[str, RailSummary]
    temperatures: Mapping[str, TemperatureSummary]
    total_rail: str | None  # the rail of TOTAL_POWER_RAILS found, the module's input power
    gpu_load_mean_percent: float | None = None

    @property
    def total_power_mean_w(self) -> float | None:
        return None if self.total_rail is None else self.rails[self.total_rail].mean_mw / MW_PER_W

    def to_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "duration_s": round(self.duration_s, 6),
            "total_rail": self.total_rail,
            "total_power_mean_w": self.total_power_mean_w,
            "rails": {k: {"mean_mw": round(v.mean_mw, 3), "peak_mw": v.peak_mw, "energy_j": round(v.energy_j, 6)}
                      for k, v in self.rails.items()},
            "temperatures": {k: {"mean_c": round(v.mean_c, 3), "peak_c": v.peak_c}
                             for k, v in self.temperatures.items()},
            "gpu_load_mean_percent": self.gpu_load_mean_percent,
        }


def _energy_j(times_s: Sequence[float], power_mw: Sequence[float]) -> float:
    return math.fsum((t1 - t0) * (p0 + p1) / 2.0 for t0, t1, p0, p1 in
                     zip(times_s, times_s[1:], power_mw, power_mw[1:])) / MW_PER_W


def summarize_samples(samples: Sequence[TegrastatsSample]) -> PowerSummary:
    """Per rail: mean and peak mW and energy in J; per sensor: mean and peak degrees C."""
    rails: dict[str, RailSummary] = {}
    for name in dict.fromkeys(n for s in samples for n in s.rails_mw):
        points = [(s.t_s, s.rails_mw[name]) for s in samples if name in s.rails_mw]
        times, power = [p[0] for p in points], [p[1] for p in points]
        rails[name] = RailSummary(math.fsum(power) / len(power), max(power), _energy_j(times, power))
    temperatures: dict[str, TemperatureSummary] = {}
    for name in dict.fromkeys(n for s in samples for n in s.temperatures_c):
        values = [s.temperatures_c[name] for s in samples if name in s.temperatures_c]
        temperatures[name] = TemperatureSummary(math.fsum(values) / len(values), max(values))
    loads = [s.gpu_load_percent for s in samples if s.gpu_load_percent is not None]
    return PowerSummary(
        samples=len(samples),
        duration_s=samples[-1].t_s - samples[0].t_s if samples else 0.0,
        rails=rails,
        temperatures=temperatures,
        total_rail=next((r for r in TOTAL_POWER_RAILS if r in rails), None),
        gpu_load_mean_percent=math.fsum(loads) / len(loads) if loads else None,
    )


def tegrastats_available() -> bool:
    return shutil.which(TEGRASTATS) is not None


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in a background thread and keeps the parsed samples.

    >>> with TegrastatsSampler(interval_ms=100) as sampler:   # doctest: +SKIP
    ...     run_the_benchmark()
    >>> sampler.summary().total_power_mean_w                     # doctest: +SKIP

    ``command`` replaces the tegrastats command line (tests feed recorded lines through it).
    Starting raises FileNotFoundError when the tool is missing; check ``tegrastats_available()``.
    """

    def __init__(
        self,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        *,
        command: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < MIN_INTERVAL_MS:
            raise ValueError(f"tegrastats interval {interval_ms!r} ms must be an integer >= {MIN_INTERVAL_MS}")
        self.command = list(command) if command is not None else [TEGRASTATS, "--interval", str(interval_ms)]
        self._clock = clock
        self._samples: list[TegrastatsSample] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._start_s = 0.0

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("this TegrastatsSampler is already running")
        self._start_s = self._clock()
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._thread = threading.Thread(target=self._read, args=(self._process,), name="tegrastats-reader", daemon=True)
        self._thread.start()

    def _read(self, process: "subprocess.Popen[str]") -> None:
        for line in process.stdout or ():
            sample = parse_tegrastats_line(line.strip(), self._clock() - self._start_s)
            if sample is not None:
                with self._lock:
                    self._samples.append(sample)

    def stop(self) -> list[TegrastatsSample]:
        """Stop tegrastats (the process this sampler started) and return the samples."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._thread is not None:
                self._thread.join(STOP_TIMEOUT_S)
            if process.stdout is not None:
                process.stdout.close()
        return self.samples

    @property
    def samples(self) -> list[TegrastatsSample]:
        with self._lock:
            return list(self._samples)

    def summary(self) -> PowerSummary:
        return summarize_samples(self.samples)

    def __enter__(self) -> "TegrastatsSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
