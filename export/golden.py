"""Golden pairs: real inputs of every component with their torch fp32 outputs, and their tolerances.

A bundle stores, per component, ``golden/{component}.inputs.npz`` (one array per graph input) and
``golden/{component}.outputs.npz`` (one array per graph output, computed by the torch model in
fp32), with a tolerance per precision the component ships. ``tinymm verify`` reruns them on the
device; the export runs the same check (``tinymm.commands.verify.run_golden``) on every variant
before writing the bundle, so a variant that would fail on the device is never shipped.

Tolerances: fp32 is held to an absolute error (the export's parity bound), fp16 and int8 to the
cosine similarity of each flattened output, which tracks the direction of an embedding or a
logit vector rather than values that legitimately drift.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from export.onnx_common import ComponentGraph, Feeds
from tinymm.backends import BackendOptions, get_backend
from tinymm.bundle import BundleWriter, GoldenPair, Tolerance
from tinymm.commands.verify import GoldenResult, run_golden

logger = logging.getLogger(__name__)

FP32_MAX_ABS = 1e-4  # largest absolute error of an fp32 variant against torch fp32
FP16_MIN_COSINE = 0.999  # smallest cosine similarity of an fp16 variant's outputs to torch fp32
INT8_MIN_COSINE = 0.99  # smallest cosine similarity of an int8 variant's outputs to torch fp32
TOLERANCES: Mapping[str, Tolerance] = {
    "fp32": Tolerance(max_abs=FP32_MAX_ABS),
    "fp16": Tolerance(min_cosine=FP16_MIN_COSINE),
    "int8": Tolerance(min_cosine=INT8_MIN_COSINE),
}
GOLDEN_DIR = "golden"


@dataclass(frozen=True, eq=False)
class GoldenRecord:
    """One component's golden inputs and its torch fp32 outputs (tensor name -> array)."""

    component: str
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]

    @property
    def inputs_file(self) -> str:
        return f"{GOLDEN_DIR}/{self.component}.inputs.npz"

    @property
    def outputs_file(self) -> str:
        return f"{GOLDEN_DIR}/{self.component}.outputs.npz"

    def pair(self, precisions: Iterable[str]) -> GoldenPair:
        """The manifest entry, with the tolerance of each precision the component ships."""
        return GoldenPair(self.component, self.inputs_file, self.outputs_file,
                          {p: TOLERANCES[p] for p in precisions})


def record_golden(graphs: Mapping[str, ComponentGraph], cases: Mapping[str, Feeds]) -> dict[str, GoldenRecord]:
    """Run every component's torch graph on its real case; returns component -> GoldenRecord."""
    records = {}
    for name, graph in graphs.items():
        inputs = {spec.name: np.ascontiguousarray(cases[name][spec.name]) for spec in graph.inputs}
        records[name] = GoldenRecord(name, inputs, graph.run_torch(inputs))
    return records


def write_golden(writer: BundleWriter, records: Mapping[str, GoldenRecord],
                 precisions: Mapping[str, Iterable[str]]) -> list[GoldenPair]:
    """Stage every record's .npz files in ``writer``; ``precisions`` maps component -> its precisions."""
    pairs = []
    for name, record in records.items():
        writer.add_arrays(record.inputs_file, record.inputs)
        writer.add_arrays(record.outputs_file, record.outputs)
        pairs.append(record.pair(precisions[name]))
    return pairs


def evaluate_variant(path: str | Path, record: GoldenRecord, precision: str) -> GoldenResult:
    """Run the ONNX file ``path`` on the record's inputs with onnxruntime on CPU; compare with its tolerance."""
    session = get_backend("onnxruntime").load(Path(path), BackendOptions(provider="cpu"))
    result = run_golden(session, record.inputs, record.outputs, component=record.component, precision=precision,
                        tolerance=TOLERANCES[precision])
    logger.info("golden %s %s: max_abs %.3g, min cosine %.6f (%s)", record.component, precision, result.max_abs,
                result.min_cosine, "ok" if result.passed else "; ".join(result.failures))
    return result
