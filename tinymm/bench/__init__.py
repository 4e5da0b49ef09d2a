"""The latency harness behind ``tinymm bench``, usable on a device with only the runtime installed.

- ``run_benchmark(task_fn, runs=..., warmup=..., batch=...)`` -> ``BenchReport`` (harness.py):
  warmup, timed runs, per-stage timings read from the results, throughput, tokens/s;
- ``measure_cold_start(command)``: process start -> first result line, in a fresh process;
- ``collect_machine_facts()`` (machine.py): CPU and flags, cores, memory, OS, library versions,
  onnxruntime providers, TensorRT, GPUs, Jetson model and power mode;
- ``TegrastatsSampler`` (tegrastats.py): power rails and temperatures on a Jetson;
- ``memory_snapshot()`` (memory.py): current and peak RSS, GPU memory;
- ``summarize``, ``percentile``, ``StageTimer``, ``StageRecorder`` (stats.py);
- ``report_to_dict``, ``write_json``, ``render_markdown`` (report.py).

Only the standard library is imported here; numpy, onnxruntime and the pipelines are not needed
to time a plain function.
"""

from __future__ import annotations

from tinymm.bench.harness import (
    BenchOptions, BenchReport, ColdStart, ColdStartError, ResultTimings, measure_cold_start, result_timings,
    run_benchmark,
)
from tinymm.bench.machine import MachineFacts, collect_machine_facts
from tinymm.bench.memory import MemorySnapshot, current_rss_bytes, memory_snapshot, peak_rss_bytes
from tinymm.bench.report import render_markdown, report_to_dict, write_json
from tinymm.bench.stats import StageCheck, StageRecorder, StageTimer, Summary, percentile, summarize, throughput
from tinymm.bench.tegrastats import (
    PowerSummary, TegrastatsSample, TegrastatsSampler, parse_tegrastats_line, tegrastats_available,
)

__all__ = [
    "BenchOptions", "BenchReport", "ColdStart", "ColdStartError", "ResultTimings", "measure_cold_start",
    "result_timings", "run_benchmark",
    "MachineFacts", "collect_machine_facts",
    "MemorySnapshot", "current_rss_bytes", "memory_snapshot", "peak_rss_bytes",
    "render_markdown", "report_to_dict", "write_json",
    "StageCheck", "StageRecorder", "StageTimer", "Summary", "percentile", "summarize", "throughput",
    "PowerSummary", "TegrastatsSample", "TegrastatsSampler", "parse_tegrastats_line", "tegrastats_available",
]
