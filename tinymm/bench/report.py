"""A BenchReport as JSON (for machines and later comparison) and as a Markdown table (for people).

Both carry the exact command line, the settings (bundle, backend, provider, precision, threads)
and the machine facts, because a latency means nothing without them. Durations are in
milliseconds in both; sizes in bytes in JSON and MiB in Markdown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymm.bench.stats import MS_PER_S, OVERHEAD_STAGE, Summary

if TYPE_CHECKING:
    from tinymm.bench.harness import BenchReport

REPORT_FORMAT_VERSION = 1  # bump when a key of the JSON report changes meaning
BYTES_PER_MIB = 1024 * 1024


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def report_to_dict(report: "BenchReport") -> dict[str, Any]:
    """The JSON-able form of ``report`` (``{"ok": true, "format_version": 1, "task": ..., ...}``)."""
    options = report.options
    return {
        "ok": True,
        "format_version": REPORT_FORMAT_VERSION,
        "task": report.task,
        "command": report.command,
        "settings": dict(report.settings),
        "runs": options.runs,
        "warmup": options.warmup,
        "batch": options.batch,
        "latency_ms": report.latency.to_dict(),
        "latency_per_item_ms": report.latency_per_item.to_dict(),
        "stages_ms": {name: summary.to_dict() for name, summary in report.stages.items()},
        "stage_check": report.stage_check.to_dict(),
        "items": report.items,
        "elapsed_s": _rounded(report.elapsed_s, 6),
        "throughput_items_per_s": _rounded(report.throughput_items_per_s),
        "tokens": report.tokens,
        "tokens_per_s": _rounded(report.tokens_per_s),
        "decode_tokens_per_s": _rounded(report.decode_tokens_per_s),
        "token_latency_ms": report.token_latency.to_dict() if report.token_latency else None,
        "memory": {when: snapshot.to_dict() for when, snapshot in report.memory.items()},
        "power": report.power.to_dict() if report.power is not None else None,
        "cold_start": report.cold_start.to_dict() if report.cold_start is not None else None,
        "machine": report.machine.to_dict() if report.machine is not None else None,
    }


def write_json(report: "BenchReport", path: str | Path) -> Path:
    """Write ``report_to_dict(report)`` to ``path`` (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _ms(seconds: float) -> str:
    return f"{seconds * MS_PER_S:.3f}"


def _row(name: str, s: Summary, share: float | None) -> str:
    share_text = "" if share is None else f"{share:.1%}"
    return (f"| {name} | {_ms(s.mean_s)} | {_ms(s.p50_s)} | {_ms(s.p90_s)} | {_ms(s.p99_s)} | "
            f"{_ms(s.std_s)} | {share_text} |")


def _mib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / BYTES_PER_MIB:.1f} MiB"


def _notes(report: "BenchReport") -> list[str]:
    o = report.options
    notes = [
        f"- runs: {o.runs} timed after {o.warmup} warmup, batch {o.batch} "
        f"({report.items} items in {report.elapsed_s:.3f} s)",
        f"- throughput: {report.throughput_items_per_s:.2f} items/s; "
        f"per item p50 {_ms(report.latency_per_item.p50_s)} ms",
    ]
    if report.tokens is not None:
        decode = "" if report.decode_tokens_per_s is None else f", {report.decode_tokens_per_s:.1f} tokens/s in decode"
        notes.append(f"- tokens: {report.tokens} generated, {report.tokens_per_s:.1f} tokens/s end to end{decode}")
    if report.token_latency is not None:
        t = report.token_latency
        notes.append(f"- per-token decode: p50 {_ms(t.p50_s)} ms, p90 {_ms(t.p90_s)} ms, p99 {_ms(t.p99_s)} ms")
    notes.append(f"- stage check: {report.stage_check.message}")
    end = report.memory.get("end")
    if end is not None:
        gpu = "" if end.gpu_bytes is None else f", GPU {_mib(end.gpu_bytes)}"
        notes.append(f"- memory: RSS {_mib(end.rss_bytes)}, peak RSS {_mib(end.peak_rss_bytes)}{gpu}")
    if report.power is not None and report.power.samples:
        p = report.power
        total = "" if p.total_power_mean_w is None else f"{p.total_rail} mean {p.total_power_mean_w:.2f} W, "
        hottest = max(p.temperatures.items(), key=lambda kv: kv[1].peak_c, default=None)
        temp = "" if hottest is None else f"hottest {hottest[0]} {hottest[1].peak_c:.1f} C, "
        notes.append(f"- power (tegrastats): {total}{temp}{p.samples} samples over {p.duration_s:.1f} s")
    if report.cold_start is not None:
        c = report.cold_start
        notes.append(f"- cold start (process start -> first result): {_ms(c.median_first_result_s)} ms "
                     f"median of {len(c.first_result_s)}")
    return notes


def render_markdown(report: "BenchReport") -> str:
    """A Markdown section: a table of stages and end-to-end latency, notes, machine and command."""
    settings = ", ".join(f"{k} {v}" for k, v in report.settings.items() if v not in (None, ""))
    lines = [f"## tinymm bench: {report.task}" + (f" ({settings})" if settings else ""), ""]
    lines += [
        "| stage | mean ms | p50 ms | p90 ms | p99 ms | std ms | share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total_mean = report.latency.mean_s
    for name, summary in report.stages.items():
        if name == OVERHEAD_STAGE and len(report.stages) == 1:
            continue  # no stage timings: the overhead row would just repeat the end-to-end row
        lines.append(_row(name, summary, summary.mean_s / total_mean if total_mean > 0 else None))
    lines.append(_row("**end-to-end**", report.latency, None))
    lines += ["", *_notes(report), ""]
    if report.machine is not None:
        lines.append(f"Machine: {report.machine.summary()}")
    if report.command:
        lines.append(f"Command: `{report.command}`")
    return "\n".join(lines) + "\n"
