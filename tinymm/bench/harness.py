"""The latency harness: warm up, time runs of a task, and read each result's stage timings.

``run_benchmark(task_fn, runs=..., warmup=..., batch=...)`` calls ``task_fn()`` ``warmup`` times
untimed, then ``runs`` times timed end to end with ``time.perf_counter``. Each call processes
``batch`` items (one call of a batched pipeline, or a loop the caller wrote). What a call returns
is read for its stage timings (``result_timings``): pipelines' results carry a ``timings`` object
(``tinymm.pipelines.results.Timings``, any dataclass, or a mapping) whose ``<stage>_ms`` (or _s,
_us, _ns) fields time each stage - preprocess, encode, prefill, decode (a number, or one
duration per decoder step), postprocess - and their generated ``token_ids``. The
stages are checked against the end-to-end time, and what they leave unaccounted is the
``"overhead"`` stage (see ``tinymm.bench.stats``).

``measure_cold_start(command)`` spawns a fresh process (e.g. ``python -m tinymm caption ...``) and
times process start -> its first line on stdout: imports, bundle loading, session creation and
the first inference, as a user launching the command sees it.

A progress line goes to stderr while it runs, only when stderr is a terminal; tqdm is not needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TextIO

from tinymm.bench.memory import MemorySnapshot, memory_snapshot
from tinymm.bench.stats import (
    STAGE_TOLERANCE, RunRecord, StageCheck, StageRecorder, Summary, summarize, throughput,
)
from tinymm.errors import TinymmError

if TYPE_CHECKING:
    from tinymm.bench.machine import MachineFacts
    from tinymm.bench.tegrastats import PowerSummary, TegrastatsSampler

logger = logging.getLogger(__name__)

TaskFn = Callable[[], Any]
PROGRESS_INTERVAL_S = 0.1  # redraw the progress line at most this often
PROGRESS_BAR_WIDTH = 24  # characters
COLD_START_TIMEOUT_S = 300.0  # a cold start slower than this is a hang
STDERR_TAIL_CHARS = 500  # how much of a failed command's stderr goes into the report
# Unit suffixes of timing field names, and the factor to seconds ("encode_ms" -> stage "encode").
TIME_UNITS = {"_ns": 1e-9, "_us": 1e-6, "_ms": 1e-3, "_s": 1.0, "_seconds": 1.0}
# Timing fields that are the pipeline's own end-to-end time, not a stage.
TOTAL_FIELDS = frozenset({"total", "end_to_end", "e2e", "wall"})
# Result attributes that give the number of generated tokens (an int, or the tokens themselves).
TOKEN_FIELDS = ("num_tokens", "n_tokens", "token_count", "generated_tokens", "token_ids", "tokens")


class ColdStartError(TinymmError):
    """The cold-start command failed, hung, or printed nothing."""

    kind = "cold_start_failed"


@dataclass(frozen=True)
class BenchOptions:
    """How run_benchmark times a task. Checked once here; a bad value is a ValueError."""

    runs: int = 50  # timed calls of the task
    warmup: int = 5  # untimed calls first (graph optimization, caches, allocator, clocks)
    batch: int = 1  # items each call processes, for throughput
    progress: bool = True  # draw a progress line on stderr (only when it is a terminal)
    stage_tolerance: float = STAGE_TOLERANCE  # share of the end-to-end time the stages may miss

    def __post_init__(self) -> None:
        for name, low in (("runs", 1), ("warmup", 0), ("batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if not 0.0 <= self.stage_tolerance < 1.0:
            raise ValueError(f"stage_tolerance={self.stage_tolerance!r} must be a share within [0, 1)")


@dataclass(frozen=True)
class ResultTimings:
    """The stage timings and token count read from one task result."""

    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    tokens: int | None = None
    token_times_s: tuple[float, ...] = ()  # per-token decode durations, when given


@dataclass(frozen=True)
class ColdStart:
    """Fresh-process latency of a command: start -> first stdout line, and start -> exit."""

    command: tuple[str, ...]
    first_result_s: tuple[float, ...]  # one per repeat
    exit_s: tuple[float, ...]
    first_line: str  # what the command printed first (the last repeat's)

    @property
    def median_first_result_s(self) -> float:
        return sorted(self.first_result_s)[len(self.first_result_s) // 2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "first_result_s": [round(v, 6) for v in self.first_result_s],
            "exit_s": [round(v, 6) for v in self.exit_s],
            "median_first_result_s": round(self.median_first_result_s, 6),
            "first_line": self.first_line,
        }


@dataclass(frozen=True)
class BenchReport:
    """Everything one benchmark measured; tinymm.bench.report renders it as JSON or Markdown."""

    task: str
    options: BenchOptions
    latency: Summary  # end-to-end time of one call (a whole batch)
    stages: dict[str, Summary]  # stage -> per-call time, "overhead" last
    stage_check: StageCheck
    items: int  # items processed by the timed calls
    elapsed_s: float  # sum of the timed calls' end-to-end times
    throughput_items_per_s: float
    tokens: int | None = None  # generated by the timed calls, when the results say
    tokens_per_s: float | None = None  # tokens / end-to-end time
    decode_tokens_per_s: float | None = None  # decoder steps x batch / time in the "decode" stage
    token_latency: Summary | None = None  # per-token decode time, when the results give it
    memory: dict[str, MemorySnapshot] = field(default_factory=dict)  # "start" / "end" of the timed runs, ...
    power: "PowerSummary | None" = None
    cold_start: ColdStart | None = None
    machine: "MachineFacts | None" = None
    command: str | None = None  # the exact command line that produced the report
    settings: dict[str, Any] = field(default_factory=dict)  # bundle, backend, provider, precision, threads, ...

    @property
    def latency_per_item(self) -> Summary:
        """End-to-end time divided by the batch size."""
        b = self.options.batch
        s = self.latency
        return Summary(s.count, s.mean_s / b, s.std_s / b, s.min_s / b, s.p50_s / b, s.p90_s / b, s.p99_s / b,
                       s.max_s / b)

    def with_context(self, **changes: Any) -> "BenchReport":
        """A copy with machine facts, command, settings, cold start or memory snapshots added."""
        return dataclasses.replace(self, **changes)


# ---- reading timings from results ------------------------------------------------------------


def _stage_name(field_name: str) -> tuple[str, float] | None:
    """("encode", 1e-3) for "encode_ms"; None for a field without a time unit (e.g. batch_size)."""
    for suffix, scale in TIME_UNITS.items():
        if field_name.endswith(suffix) and len(field_name) > len(suffix):
            return field_name[: -len(suffix)], scale
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _timings_of(result: Any) -> Any:
    return result.get("timings") if isinstance(result, Mapping) else getattr(result, "timings", None)


def _timing_items(timings: Any) -> Iterable[tuple[str, Any]]:
    if timings is None:
        return ()
    if isinstance(timings, Mapping):
        return timings.items()
    if dataclasses.is_dataclass(timings) and not isinstance(timings, type):
        return ((f.name, getattr(timings, f.name)) for f in dataclasses.fields(timings))
    return vars(timings).items() if hasattr(timings, "__dict__") else ()


def _token_count(result: Any) -> int | None:
    for name in TOKEN_FIELDS:
        value = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, (list, tuple)) or (hasattr(value, "shape") and hasattr(value, "__len__")):
            return len(value)
    return None


def _single_result_timings(result: Any) -> ResultTimings:
    stages: dict[str, float] = {}
    token_times: tuple[float, ...] = ()
    for raw_name, value in _timing_items(_timings_of(result)):
        named = _stage_name(str(raw_name))
        if named is None or named[0] in TOTAL_FIELDS:
            continue
        name, scale = named
        if _is_number(value):
            stages[name] = stages.get(name, 0.0) + float(value) * scale
        elif isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
            per_step = tuple(float(v) * scale for v in value)  # one duration per decoder step
            stages[name] = stages.get(name, 0.0) + math.fsum(per_step)
            token_times += per_step
    generated = bool(token_times) or stages.get("prefill", 0.0) > 0.0  # a decoder ran: tokens mean something
    tokens = _token_count(result) if generated else None
    if tokens is None and token_times:
        tokens = len(token_times)
    return ResultTimings(stages, tokens, token_times)


def _shared(timings: Any, seen: list[Any]) -> bool:
    """Whether ``timings`` was already counted: the same object, or an equal one of a batch."""
    batched = getattr(timings, "batch_size", 1)
    return any(t is timings or (isinstance(batched, int) and batched > 1 and t == timings) for t in seen)


def result_timings(result: Any) -> ResultTimings:
    """Stage seconds and generated tokens of one task result, or of a list of results (a batch).

    A result's ``timings`` (a dataclass or a mapping) gives a stage per field named
    ``<stage>_<unit>`` (unit s, ms, us or ns): a number, or a sequence of per-step durations
    (decode, one per token). Fields without a unit (batch_size, counts) and totals are not stages.
    Generated tokens (``token_ids``, ``num_tokens``, ...) are counted when a decoder ran (prefill
    or decode time). Results of one batched call sharing one timings are counted once; separate
    timings (a loop over items) add up. A result without timings gives no stages.
    """
    if not isinstance(result, (list, tuple)):
        return _single_result_timings(result)
    stages: dict[str, float] = {}
    token_times: tuple[float, ...] = ()
    tokens: int | None = None
    seen: list[Any] = []
    for item in result:
        one = _single_result_timings(item)
        if one.tokens is not None:
            tokens = (tokens or 0) + one.tokens
        timings = _timings_of(item)
        if _shared(timings, seen):
            continue
        seen.append(timings)
        for name, seconds in one.stages.items():
            stages[name] = stages.get(name, 0.0) + seconds
        token_times += one.token_times_s
    return ResultTimings(stages, tokens, token_times)


# ---- progress line ---------------------------------------------------------------------------


class ProgressLine:
    """``caption  timed  37/100 [#########...............]  12.34 ms/call`` on a terminal.

    Disabled (writes nothing) when not ``enabled`` or when ``stream`` is not a TTY, so logs and
    pipes stay clean. Redraws at most every PROGRESS_INTERVAL_S.
    """

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and callable(isatty) and isatty())
        self.label = label
        self._clock = clock
        self._last_draw = -math.inf
        self._drawn = False

    def update(self, phase: str, done: int, total: int, last_s: float | None = None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and done < total and now - self._last_draw < PROGRESS_INTERVAL_S:
            return
        self._last_draw = now
        filled = PROGRESS_BAR_WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
        speed = "" if last_s is None else f"  {last_s * 1000.0:8.2f} ms/call"
        self.stream.write(f"\r{self.label}  {phase:6} {done:>5}/{total:<5} [{bar}]{speed}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


# ---- the benchmark loop ----------------------------------------------------------------------


def _timed_runs(task_fn: TaskFn, options: BenchOptions, progress: ProgressLine,
                clock: Callable[[], float]) -> StageRecorder:
    recorder = StageRecorder(clock)
    warned = False
    for i in range(options.runs):
        start = clock()
        result = task_fn()
        total = clock() - start
        timings = result_timings(result)
        if isinstance(result, (list, tuple)) and len(result) != options.batch and not warned:
            logger.warning("the task returned %d results per call but the batch is %d; throughput counts %d",
                           len(result), options.batch, options.batch)
            warned = True
        recorder.record(RunRecord(total, timings.stages, options.batch, timings.tokens, timings.token_times_s))
        progress.update("timed", i + 1, options.runs, total)
    return recorder


def run_benchmark(
    task_fn: TaskFn,
    *,
    runs: int,
    warmup: int,
    batch: int = 1,
    progress: bool = True,
    task: str = "task",
    stage_tolerance: float = STAGE_TOLERANCE,
    sampler: "TegrastatsSampler | None" = None,
    gpu_memory: bool = False,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchReport:
    """Warm up, then time ``runs`` calls of ``task_fn`` (each processing ``batch`` items).

    ``sampler`` (a TegrastatsSampler) runs during the timed calls only; ``gpu_memory`` adds the
    process's GPU memory (nvidia-smi) to the memory snapshots. The progress line goes to
    ``stream`` (default stderr) when it is a terminal. Raises ValueError for bad counts; whatever
    ``task_fn`` raises propagates.
    """
    options = BenchOptions(runs, warmup, batch, progress, stage_tolerance)
    line = ProgressLine(task, enabled=options.progress, stream=stream)
    try:
        for i in range(options.warmup):
            start = clock()
            task_fn()
            line.update("warmup", i + 1, options.warmup, clock() - start)
        start_memory = memory_snapshot(gpu=gpu_memory)
        if sampler is not None:
            sampler.start()
        try:
            recorder = _timed_runs(task_fn, options, line, clock)
        finally:
            if sampler is not None:
                sampler.stop()
        power = sampler.summary() if sampler is not None else None
        end_memory = memory_snapshot(gpu=gpu_memory)
    finally:
        line.close()
    return _report(task, options, recorder, power, {"start": start_memory, "end": end_memory})


def _report(task: str, options: BenchOptions, recorder: StageRecorder, power: "PowerSummary | None",
            memory: dict[str, MemorySnapshot]) -> BenchReport:
    runs = recorder.runs
    elapsed = math.fsum(r.total_s for r in runs)
    items = sum(r.items for r in runs)
    stages = recorder.stage_summaries()
    check = recorder.check(options.stage_tolerance)
    if not check.ok:
        logger.warning("%s: %s", task, check.message)
    counted = [r.tokens for r in runs if r.tokens is not None]
    tokens = sum(counted) if counted else None
    decode_s = math.fsum(r.stages.get("decode", 0.0) for r in runs)
    token_times = [t for r in runs for t in r.token_times_s]
    # Each decoder step emits one token per sequence of the batch; without per-step times, every
    # generated token is counted against the decode time.
    decode_tokens = len(token_times) * options.batch if token_times else tokens
    return BenchReport(
        task=task,
        options=options,
        latency=summarize([r.total_s for r in runs]),
        stages=stages,
        stage_check=check,
        items=items,
        elapsed_s=elapsed,
        throughput_items_per_s=throughput(items, elapsed),
        tokens=tokens,
        tokens_per_s=throughput(tokens, elapsed) if tokens is not None else None,
        decode_tokens_per_s=throughput(decode_tokens, decode_s) if decode_tokens and decode_s > 0 else None,
        token_latency=summarize(token_times) if token_times else None,
        memory=memory,
        power=power,
    )


# ---- cold start ------------------------------------------------------------------------------


def _first_line(process: subprocess.Popen[str], deadline: float, clock: Callable[[], float]) -> tuple[str, float]:
    """The first non-empty stdout line and when it arrived; ("", inf) when none came in time."""
    lines: queue.Queue[tuple[str, float]] = queue.Queue()

    def read() -> None:
        for text in process.stdout or ():
            if text.strip():
                lines.put((text.strip(), clock()))
                break
        else:
            lines.put(("", math.inf))  # end of output without a line
        for _ in process.stdout or ():  # drain the rest so the child never blocks on a full pipe
            pass

    threading.Thread(target=read, name="cold-start-reader", daemon=True).start()
    try:
        return lines.get(timeout=max(deadline - clock(), 0.0))
    except queue.Empty:
        return "", math.inf


def _cold_start_once(command: Sequence[str], timeout_s: float, env: Mapping[str, str],
                     clock: Callable[[], float]) -> tuple[float, float, str]:
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        start = clock()
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                   text=True, env=dict(env))
        try:
            line, at = _first_line(process, start + timeout_s, clock)
            code = process.wait(timeout=max(start + timeout_s - clock(), 0.0))
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        end = clock()
        if code is None or not line:
            stderr.seek(0)
            tail = stderr.read()[-STDERR_TAIL_CHARS:].strip()
            why = f"ran past {timeout_s:g} s" if code is None else f"exited with {code} before printing a result"
            raise ColdStartError(f"cold-start command {' '.join(command)!r} {why}"
                                 + (f"; its stderr ends with: {tail}" if tail else ""))
        if code != 0:
            stderr.seek(0)
            tail = stderr.read()[-STDERR_TAIL_CHARS:].strip()
            raise ColdStartError(f"cold-start command {' '.join(command)!r} printed a line and then exited "
                                 f"with {code}; its stderr ends with: {tail or '(nothing)'}")
    return at - start, end - start, line


def measure_cold_start(
    command: Sequence[str],
    *,
    repeats: int = 1,
    timeout_s: float = COLD_START_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ColdStart:
    """Spawn ``command`` ``repeats`` times; time start -> first non-empty stdout line -> exit.

    Python children run unbuffered (PYTHONUNBUFFERED=1) so that their first line is seen when it
    is written, not when the process exits. Raises ColdStartError when the command fails, hangs
    past ``timeout_s`` or prints nothing.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"cold start repeats={repeats!r} must be an integer >= 1")
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    firsts, exits, line = [], [], ""
    for _ in range(repeats):
        first, end, line = _cold_start_once(command, timeout_s, full_env, clock)
        firsts.append(first)
        exits.append(end)
    return ColdStart(tuple(command), tuple(firsts), tuple(exits), line)
