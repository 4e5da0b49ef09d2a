"""PNG figures of a side-by-side study (benchmarks/side_by_side.py's JSON), with matplotlib.

Usage:
    python benchmarks/plots.py benchmarks/results/side_by_side_threads2.json [--out DIR]

- ``<stem>_latency.png``: per task, the end-to-end p50 of every variant (bar), with a whisker up
  to p90 and a dot at p99, and the speed-up over torch eager above each bar;
- ``<stem>_stages.png``: per task, the p50 of each stage stacked per variant (preprocess, encode,
  prefill, decode, postprocess, and the time outside every stage).

Every figure carries the exact command, the machine and the load average in its footer.
matplotlib is in the ``bench`` extra (``pip install 'tinymm[bench]'``), not a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

STAGES = ("preprocess", "encode", "prefill", "decode", "postprocess", "overhead")
STAGE_COLORS = ("#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3", "#a6d854", "#b3b3b3")
PANEL_WIDTH_IN, PANEL_HEIGHT_IN = 4.2, 3.4  # inches per task panel
FOOTER_HEIGHT_IN = 0.8
FOOTER_WRAP_CHARS = 150
DPI = 120


def _figure(study: dict[str, Any], title: str) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tasks = list(study["tasks"])
    fig, axes = plt.subplots(1, len(tasks), squeeze=False,
                             figsize=(PANEL_WIDTH_IN * len(tasks), PANEL_HEIGHT_IN + FOOTER_HEIGHT_IN))
    load = study["load_average"]
    footer = (f"{study['command']}\n{study['machine_summary']}\n"
              f"load average {load['start']} -> {load['end']}; {study['settings']['weights']}")
    fig.suptitle(f"{title} ({study['settings']['threads']} thread(s))")
    fig.text(0.01, 0.01, "\n".join(textwrap.fill(line, FOOTER_WRAP_CHARS) for line in footer.split("\n")),
             fontsize=6, va="bottom", family="monospace")
    fig.subplots_adjust(bottom=FOOTER_HEIGHT_IN / (PANEL_HEIGHT_IN + FOOTER_HEIGHT_IN) + 0.1, top=0.85, wspace=0.35)
    return fig, list(axes[0])


def plot_latency(study: dict[str, Any], path: Path) -> Path:
    """End-to-end p50 bars with p90 whiskers and p99 dots, per task and variant."""
    import matplotlib.pyplot as plt

    fig, axes = _figure(study, "End-to-end latency, p50 (bar), p90 (whisker), p99 (dot)")
    for ax, (task, variants) in zip(axes, study["tasks"].items()):
        labels = [v["label"].replace("tinymm ", "") for v in variants.values()]
        p50 = [v["latency_ms"]["p50_ms"] for v in variants.values()]
        p90 = [v["latency_ms"]["p90_ms"] for v in variants.values()]
        p99 = [v["latency_ms"]["p99_ms"] for v in variants.values()]
        x = range(len(labels))
        ax.bar(x, p50, yerr=[[0] * len(p50), [hi - lo for lo, hi in zip(p50, p90)]], capsize=3, color="#66c2a5")
        ax.plot(x, p99, "k.", markersize=5)
        for i, v in enumerate(variants.values()):
            if v.get("speedup_vs_torch") is not None:
                ax.annotate(f"{v['speedup_vs_torch']:.1f}x", (i, max(p90[i], p99[i])), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x), labels, rotation=20, fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("ms")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_stages(study: dict[str, Any], path: Path) -> Path:
    """Stacked p50 per stage, per task and variant."""
    import matplotlib.pyplot as plt

    fig, axes = _figure(study, "Stage breakdown, p50 per stage")
    for ax, (task, variants) in zip(axes, study["tasks"].items()):
        labels = [v["label"].replace("tinymm ", "") for v in variants.values()]
        bottom = [0.0] * len(labels)
        for stage, color in zip(STAGES, STAGE_COLORS):
            heights = [v["stages_ms"].get(stage, {}).get("p50_ms", 0.0) for v in variants.values()]
            if any(heights):
                ax.bar(range(len(labels)), heights, bottom=bottom, color=color, label=stage)
                bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("ms")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(study: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    """Both figures under ``out``: {"latency": path, "stages": path}."""
    out.mkdir(parents=True, exist_ok=True)
    return {"latency": plot_latency(study, out / f"{stem}_latency.png"),
            "stages": plot_stages(study, out / f"{stem}_stages.png")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/plots.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a side_by_side_threads*.json")
    parser.add_argument("--out", type=Path, default=None, help="directory of the PNGs (default: the JSON's)")
    args = parser.parse_args(argv)
    study = json.loads(args.study.read_text(encoding="utf-8"))
    for path in write_plots(study, args.out or args.study.parent, args.study.stem).values():
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
