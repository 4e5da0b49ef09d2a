"""Model card sections of the task metrics per precision and of the int8 accuracy gate (Markdown lines).

Both read the JSON-ready provenance entries (``export.task_eval`` from
``task_eval_gate.task_metrics`` or its golden-cosine fallback, and ``export.parity.int8_gate``),
so the card says exactly what the manifest records. ``bytes_per_precision`` is the size line
that every exporter's card (export/bundle_build.py, export/whisper_card.py) writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tinymm.bundle import PRECISIONS

SWEEP_ROWS = 8  # most sensitive nodes listed per component


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.2f}"  # + 0.0: no "-0.00"
    return "n/a" if value is None else str(value)


def bytes_per_precision(files: Mapping[str, Mapping[str, Path]], shared_weights: Mapping[str, Path]) -> dict[str, int]:
    """Bytes written per precision (its ONNX files and its shared decoder weights), in PRECISIONS order,
    for the precisions some component has."""
    written = {p for variants in files.values() for p in variants}
    return {p: sum(v[p].stat().st_size for v in files.values() if p in v)
            + (shared_weights[p].stat().st_size if p in shared_weights else 0) for p in PRECISIONS if p in written}


def loaded_bytes(files: Mapping[str, Mapping[str, Path]], shared_weights: Mapping[str, Path], precision: str) -> int:
    """Bytes the runtime loads for `precision`: that variant where a component has it, fp32 elsewhere,
    plus the shared decoder weights of every precision those files use."""
    chosen = {c: (precision if precision in variants else "fp32") for c, variants in files.items()}
    total = sum(files[c][p].stat().st_size for c, p in chosen.items())
    return total + sum(shared_weights[p].stat().st_size for p in set(chosen.values()) if p in shared_weights)


def task_lines(task_eval: Mapping[str, Any], files: Mapping[str, Mapping[str, Path]],
               shared_weights: Mapping[str, Path]) -> list[str]:
    """'## Task metrics per precision': one row per precision, the torch model, bytes; torch agreement."""
    lines = ["## Task metrics per precision", ""]
    if "precisions" not in task_eval:
        return lines + [f"Not measured ({task_eval.get('reason', 'no test split')}); the int8 gate used the "
                        "golden outputs' smallest cosine to torch fp32 (metric \"golden cosine\"). Export with "
                        "`--data DIR` (the training data with its test split) to measure the task metrics.", ""]
    columns = [tuple(c) for c in task_eval["columns"]]
    items = task_eval.get("metric_items", {})
    per_metric = "; ".join(f"{heading}: {items[key]}" for key, heading in columns if key in items)
    gated = ", ".join(f"{c} on {', '.join(f'`{m}`' for m in metrics)}"
                      for c, metrics in task_eval.get("gate_metrics", {}).items())
    lines += [
        f"Measured at export time on {task_eval['description']}, with the runtime's pipelines (its "
        "preprocessing and default decoding, onnxruntime CPU); a precision loads that variant where a component "
        f"has it and fp32 elsewhere. Points (percent)"
        + (f"; test items per metric: {per_metric}" if per_metric else "") + ". "
        + (f"The int8 gate judges each component on the metrics it can change: {gated}." if gated else ""), "",
        "| precision | components in that precision | " + " | ".join(h for _, h in columns) + " | bytes loaded |",
        "|---|---|" + "---:|" * (len(columns) + 1),
    ]
    for precision, entry in task_eval["precisions"].items():
        metrics = entry["metrics"]
        lines.append(f"| {precision} | {', '.join(entry['components']) or 'none'} | "
                     + " | ".join(_cell(metrics.get(k)) for k, _ in columns)
                     + f" | {loaded_bytes(files, shared_weights, precision)} |")
    torch_metrics = task_eval["torch"]["metrics"]
    lines.append("| torch fp32 (reference) | | " + " | ".join(_cell(torch_metrics.get(k)) for k, _ in columns) + " | |")
    variant = task_eval.get("int8_variant")
    if variant is not None:
        lines += ["", _variant_line(variant)]
    agree = task_eval["torch_agreement"]
    lines += ["", f"The fp32 runtime's outputs equal the torch model's greedy outputs token for token on "
                  f"{agree['identical']} of {agree['outputs']} outputs ({_cell(agree['rate'])}%).", ""]
    return lines


def _variant_line(variant: Mapping[str, Any]) -> str:
    """The int8 variant as a whole: each metric its int8 components were gated on, value and drop."""
    if not variant["components"]:
        return "The int8 variant has no component in int8: it loads the fp32 files."
    values = ", ".join(f"`{m}` {_cell(variant['metrics'][m])} (drop {_cell(drop)})"
                       for m, drop in variant["drops"].items())
    return (f"The int8 variant as a whole (int8: {', '.join(variant['components'])}; fp32 elsewhere), on every "
            f"metric its int8 components were gated on: {values} points from fp32 (the gate allows "
            f"{_cell(variant['max_drop'])} per metric; negative: int8 did better).")


def gate_lines(gates: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """'## INT8 accuracy gate': per component, each metric it was judged on (fp32, int8, drop), nodes in
    float, verdict; then why a component was not shipped and its sweep."""
    if not gates:
        return []
    lines = ["## INT8 accuracy gate", "",
             "Per component: the component's int8 candidate swapped into the fp32 model, measured on each metric "
             "listed for it (the metrics that component can change); it is refused when any of them drops more "
             "than the max. Nodes the sweep found sensitive may stay in float. A component that is not shipped "
             "has no int8 file (its fp32 file is loaded instead).", "",
             "| component | metric | fp32 | int8 | drop (max) | nodes in float | verdict | shipped |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for component, g in gates.items():
        for metric, m in g["metrics"].items():
            lines.append(f"| {component} | {metric} | {_cell(m['fp32'])} | {_cell(m['int8'])} | "
                         f"{_cell(m['drop'])} ({_cell(g['max_drop'])}) | {', '.join(g['excluded']) or 'none'} | "
                         f"{g['verdict']} | {'yes' if g['shipped'] else 'no'} |")
    lines.append("")
    for component, g in gates.items():
        if not g["shipped"]:
            lines.append(f"- {component}: not shipped: {g['reason']}")
        sweep = sorted((s for s in g["steps"] if s["phase"] == "sweep"), key=lambda s: s["drop"])
        if sweep:
            rows = ", ".join(f"`{s['excluded'][0]}` {_cell(s['drop'])}" for s in sweep[:SWEEP_ROWS])
            lines.append(f"- {component}: sweep of {len(sweep)} nodes, each left alone in float, with the drop "
                         f"({g['score']}) it left, most sensitive first: {rows}")
    return lines + [""]
