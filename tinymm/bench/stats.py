"""Latency statistics and per-stage timing records, in pure Python (no numpy needed).

- ``percentile`` interpolates linearly between the two nearest ranks, as numpy's default
  (``method="linear"``) does, so the numbers match ``np.percentile`` exactly;
- ``summarize`` gives the count, mean, population standard deviation (ddof=0, as ``np.std``),
  min, p50, p90, p99 and max of a list of durations in seconds;
- ``StageTimer`` times the named stages of one run; ``StageRecorder`` keeps one ``RunRecord``
  per timed run (end-to-end seconds, stage seconds, items, tokens) and checks that the stages add
  up to the end-to-end time: what the stages do not account for is reported as the
  ``"overhead"`` stage.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

PERCENTILES = (50.0, 90.0, 99.0)  # the percentiles every Summary reports
MS_PER_S = 1000.0
OVERHEAD_STAGE = "overhead"  # end-to-end time that no stage accounts for
# Stages may add up to a little more or less than the end-to-end time (separate clock reads).
# The check allows this share of the end-to-end time ...
STAGE_TOLERANCE = 0.05
# ... plus this absolute slack in seconds, so that sub-millisecond runs are not judged on noise.
STAGE_SLACK_S = 50e-6


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between ranks (numpy's default).

    Raises ValueError for an empty sequence or ``q`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty sequence: time at least one run")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q!r} must be within [0, 100]")
    ordered = sorted(float(v) for v in values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of an empty sequence: time at least one run")
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Population standard deviation (ddof=0, as ``np.std``)."""
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def throughput(count: float, seconds: float) -> float:
    """``count`` per second over ``seconds``; 0 when no time passed (nothing was measured)."""
    if seconds < 0:
        raise ValueError(f"throughput over {seconds!r} s: a duration cannot be negative")
    return count / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Summary:
    """Statistics of a list of durations, all in seconds."""

    count: int
    mean_s: float
    std_s: float
    min_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    def to_dict(self) -> dict[str, float | int]:
        """Milliseconds, the unit people read latencies in: ``{"count", "mean_ms", ...}``."""
        ms = {f"{k[:-2]}_ms": round(v * MS_PER_S, 6) for k, v in self.__dict__.items() if k.endswith("_s")}
        return {"count": self.count, **ms}


def summarize(durations_s: Sequence[float]) -> Summary:
    """Summary of ``durations_s`` (seconds). Raises ValueError when it is empty."""
    values = [float(v) for v in durations_s]
    p50, p90, p99 = (percentile(values, q) for q in PERCENTILES)
    return Summary(len(values), mean(values), std(values), min(values), p50, p90, p99, max(values))


@dataclass(frozen=True)
class RunRecord:
    """One timed run: its end-to-end time and what the stages inside it took."""

    total_s: float  # end-to-end wall time of the run
    stages: Mapping[str, float] = field(default_factory=dict)  # stage name -> seconds, in order
    items: int = 1  # inputs processed by the run (the batch size)
    tokens: int | None = None  # tokens generated, when the results say
    token_times_s: tuple[float, ...] = ()  # per-token decode times, when the results give them

    @property
    def accounted_s(self) -> float:
        return math.fsum(self.stages.values())

    @property
    def overhead_s(self) -> float:
        """End-to-end time no stage accounts for; negative when the stages add up to more."""
        return self.total_s - self.accounted_s


@dataclass(frozen=True)
class StageCheck:
    """Whether the stages of every run add up to its end-to-end time."""

    ok: bool
    tolerance: float  # allowed share of the end-to-end time
    overhead_share: float  # median over runs of overhead / end-to-end time
    runs_over_total: int  # runs whose stages add up to more than their end-to-end time (+ tolerance)
    message: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class StageTimer:
    """Times the named stages of one run with a monotonic clock.

    >>> timer = StageTimer()
    >>> with timer.stage("preprocess"):
    ...     pass
    >>> timer.add("decode", 0.002)  # a duration measured elsewhere
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._stages: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self.add(name, self._clock() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (a stage timed twice in a run adds up)."""
        if name == OVERHEAD_STAGE:
            raise ValueError(f"stage name {OVERHEAD_STAGE!r} is reserved for the unaccounted time")
        if not seconds >= 0:
            raise ValueError(f"stage {name!r} took {seconds!r} s: a duration must be >= 0")
        self._stages[name] = self._stages.get(name, 0.0) + float(seconds)

    @property
    def stages(self) -> dict[str, float]:
        return dict(self._stages)


class StageRecorder:
    """Collects one RunRecord per timed run and summarizes them stage by stage."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.runs: list[RunRecord] = []

    def record(self, run: RunRecord) -> None:
        if not run.total_s >= 0:
            raise ValueError(f"a run took {run.total_s!r} s: a duration must be >= 0")
        self.runs.append(run)

    @contextlib.contextmanager
    def run(self, items: int = 1, tokens: int | None = None) -> Iterator[StageTimer]:
        """Time one run end to end; the StageTimer it yields times its stages."""
        timer = StageTimer(self._clock)
        start = self._clock()
        yield timer
        self.record(RunRecord(self._clock() - start, timer.stages, items, tokens))

    def stage_names(self) -> list[str]:
        """Every stage that took time in some run, in first-seen order, then ``"overhead"``.

        A stage that is 0 s in every run (e.g. the decode stage of a task that runs no decoder)
        is left out.
        """
        names: dict[str, None] = {}
        for run in self.runs:
            names.update(dict.fromkeys(name for name, seconds in run.stages.items() if seconds > 0.0))
        return [*names, OVERHEAD_STAGE]

    def stage_summaries(self) -> dict[str, Summary]:
        """Stage name -> Summary over the runs (a run without the stage counts 0 s for it).

        ``"overhead"`` is the unaccounted time, clipped at 0 for runs whose stages add up to more.
        """
        out = {}
        for name in self.stage_names():
            if name == OVERHEAD_STAGE:
                out[name] = summarize([max(run.overhead_s, 0.0) for run in self.runs])
            else:
                out[name] = summarize([run.stages.get(name, 0.0) for run in self.runs])
        return out

    def check(self, tolerance: float = STAGE_TOLERANCE, slack_s: float = STAGE_SLACK_S) -> StageCheck:
        """Do the stages add up to the end-to-end time within ``tolerance`` (share) + ``slack_s``?

        Runs without any stage are not judged. A run whose stages add up to more than its
        end-to-end time means the stages were timed wrongly (counted twice, or on another clock);
        a large median overhead means some work is not in any stage.
        """
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"stage tolerance {tolerance!r} must be a share within [0, 1)")
        timed = [run for run in self.runs if run.stages]
        if not timed:
            return StageCheck(True, tolerance, 1.0, 0, "no stage timings: only end-to-end times were measured")
        over = sum(run.overhead_s < -(tolerance * run.total_s + slack_s) for run in timed)
        shares = [run.overhead_s / run.total_s if run.total_s > 0 else 0.0 for run in timed]
        share = percentile(shares, 50.0)
        median_overhead_s = percentile([run.overhead_s for run in timed], 50.0)
        median_total_s = percentile([run.total_s for run in timed], 50.0)
        too_much_overhead = median_overhead_s > tolerance * median_total_s + slack_s
        if over:
            message = (f"in {over} of {len(timed)} runs the stages add up to more than the end-to-end time "
                       f"(by more than {tolerance:.0%}): a stage is timed twice or on another clock")
        elif too_much_overhead:
            message = (f"the stages account for only {1 - share:.1%} of the end-to-end time (median); "
                       f"{share:.1%} is overhead outside any stage")
        else:
            message = f"the stages add up to the end-to-end time within {tolerance:.0%}"
        return StageCheck(not over and not too_much_overhead, tolerance, share, over, message)
