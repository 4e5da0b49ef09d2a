"""Export one model component to ONNX and check the file: the part every model family shares.

A component is described by a ``ComponentGraph``: an eval-mode wrapper module whose forward takes
the component's inputs in manifest order and returns its outputs in manifest order, the
manifest's tensor specs (names, shapes with named dynamic dimensions, dtypes) and example inputs
to trace with. ``export_onnx`` writes the ONNX file and checks it:

- two exporters (``ExportOptions.exporter``): ``dynamo`` (``torch.onnx.export(dynamo=True)``,
  torch.export underneath; dynamic dimensions as ``torch.export.Dim.AUTO`` per named axis; opset
  >= 18, because its version converter cannot lower ``Split`` to 17) and ``torchscript`` (the
  deprecated TorchScript exporter, ``dynamo=False``, opset >= 17). Both reach the same parity with
  torch. Measured with torch 2.13 on 2 CPU threads, default students: 3.5-6.4 s per component
  with dynamo, about 1.5 s with TorchScript. The models' input checks read tensor values, so they
  skip themselves while either exporter traces (``train.models.layers.is_exporting``);
- opset >= 17 (LayerNormalization is a single node from 17 on);
- every dimension named in a spec is a dynamic axis; the graph's inputs and outputs are then
  stamped with the spec's shapes, so ONNX Runtime reports the dimension names of the layout
  (``past+new``) instead of names the exporter made up;
- no ``If`` node anywhere (TensorRT cannot build merged decoders), ``onnx.checker`` passes.

A model family (export/onnx_vlm.py, export/onnx_speech.py) is a module exposing
``TOKENIZER_FILE`` (the recipe's tokenizer file name), ``contract_defaults(model)`` (the recipe's
preprocessing contract sections) and ``prepare(model, meta, tokenizer_path, sections, sources,
options) -> Prepared``: everything the export of that family needs.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tinymm.bundle import PRECISIONS, Component, Preprocess, TensorSpec, Variant
from tinymm.bundle.validate import NAME_HINT
from tinymm.errors import InputError, TinymmError

logger = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization became an ONNX op in opset 17
DEFAULT_OPSET = 17  # the lowest that has it: the widest range of runtimes (ORT >= 1.17, TensorRT 10)
DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes 18 and cannot convert Split down to 17
EXPORTERS = {"dynamo": DYNAMO_MIN_OPSET, "torchscript": DEFAULT_OPSET}  # exporter -> lowest opset it can write
DEFAULT_EXPORTER = "dynamo"
TORCH_ONNX_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
FORBIDDEN_OPS = ("If", "Loop", "Scan")  # control flow TensorRT engines cannot hold as a decoder step
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                "bool": torch.bool}

Feeds = Mapping[str, np.ndarray]  # tensor name -> array, as a backend session takes and returns them


class ExportError(TinymmError):
    """A component could not be exported to a valid, TensorRT-friendly ONNX file."""

    kind = "export_error"


@dataclass(frozen=True)
class ExportOptions:
    """How components are written to ONNX; checked once here."""

    opset: int | None = None  # ONNX opset of the default domain; None: the exporter's minimum
    exporter: str = DEFAULT_EXPORTER  # dynamo | torchscript

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ValueError(f"ExportOptions.exporter={self.exporter!r} must be one of {list(EXPORTERS)}")
        minimum = EXPORTERS[self.exporter]
        if self.opset is None:
            object.__setattr__(self, "opset", minimum)
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < minimum:
            raise ValueError(f"ExportOptions.opset={self.opset!r} must be an integer >= {minimum} with the "
                             f"{self.exporter} exporter")


@dataclass(frozen=True)
class SampleOptions:
    """Which real and random inputs check the export; checked once here."""

    data_dir: Path | None = None  # a written scene or speech dataset; None: generated inputs
    golden_batch: int = 2  # real inputs per golden pair (and per real parity case)
    calibration_samples: int = 256  # real inputs that calibrate static int8 (a few hundred, from the train split)
    seed: int = 0  # of the generated real inputs and of the random parity inputs

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("golden_batch", "calibration_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SampleOptions.{name}={value!r} must be a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"SampleOptions.seed={self.seed!r} must be an integer >= 0")


def shipped_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    """The precisions an export request ships: ``precisions`` and fp32 (always written), in PRECISIONS
    order; ValueError when ``precisions`` is empty or names an unknown one."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"precisions={list(precisions)} must name some of {list(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in {"fp32", *precisions})


def bundle_name(name: str | None, out: Path) -> str:
    """``name`` (--name), or the output directory's name made into a valid bundle name."""
    if name is not None:
        return name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in out.name).lstrip("._-")
    if not cleaned:
        raise InputError(f"cannot derive a bundle name from {out}; pass --name ({NAME_HINT})")
    return cleaned


def kv_names(prefix: str, num_layers: int) -> list[str]:
    """``prefix.{i}.key``, ``prefix.{i}.value`` for each layer: the flat order the models use."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def require(condition: bool, message: str) -> None:
    """InputError(message) unless ``condition``: a checkpoint, contract or tokenizer that do not fit."""
    if not condition:
        raise InputError(message)


@dataclass(frozen=True, eq=False)
class ComponentGraph:
    """One exportable component: a wrapper module, its manifest specs and example inputs.

    ``module(*inputs)`` takes tensors in ``inputs`` order and returns a tuple in ``outputs`` order.
    ``example`` holds one tensor per input; every dynamic dimension should be >= 2 in it, so the
    tracer cannot mistake it for a constant 1.
    """

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example: tuple[torch.Tensor, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.example) != len(self.inputs):
            raise ValueError(f"{self.name}: {len(self.example)} example tensors for {len(self.inputs)} inputs")
        if self.module.training:
            raise ValueError(f"{self.name}: the wrapper module is in training mode; call .eval() before exporting")

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def example_feeds(self) -> dict[str, np.ndarray]:
        """The example inputs as numpy feeds (input name -> array)."""
        return {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, self.example)}

    @torch.no_grad()
    def run_torch(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """The torch reference: feeds (input name -> array, shapes as the specs) -> output name -> array."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ValueError(f"{self.name}: feeds lack input(s) {missing}")
        args = [torch.from_numpy(np.ascontiguousarray(feeds[spec.name])).to(TORCH_DTYPES[spec.dtype])
                for spec in self.inputs]
        outputs = self.module(*args)
        return {name: value.detach().cpu().numpy() for name, value in zip(self.output_names, outputs)}

    def component(self, files: Mapping[str, str]) -> Component:
        """The manifest Component, with ``files`` mapping precision -> bundle path."""
        return Component(name=self.name, inputs=self.inputs, outputs=self.outputs,
                         variants={precision: Variant(path) for precision, path in files.items()})


CaseSet = Mapping[str, Feeds]  # component name -> feeds


@dataclass(frozen=True, eq=False)
class Prepared:
    """A loaded model with everything its export needs, whatever its family."""

    family: str  # the manifest's family
    tasks: tuple[str, ...]
    model: nn.Module  # eval mode
    graphs: Mapping[str, ComponentGraph]
    preprocess: Preprocess  # the contract; text.tokenizer is the bundle path of the tokenizer
    tokenizer_path: Path  # the sentencepiece model to ship
    model_info: Mapping[str, Any]  # the manifest's ``model`` object
    real_cases: CaseSet  # golden_batch real inputs per component (the golden pairs)
    random_cases: Mapping[str, Sequence[Feeds]]  # fresh random inputs of several sizes per component
    calibration: Callable[[], Mapping[str, list[dict[str, np.ndarray]]]]  # component -> batch-1 real feeds
    greedy: Callable[[Mapping[str, Any]], dict[str, Any]] | None  # sessions -> greedy decoding parity report
    sources: Mapping[str, str]  # where the tokenizer, the contract and the real inputs came from


def split_rows(cases: CaseSet) -> dict[str, list[dict[str, np.ndarray]]]:
    """component -> one feeds dict per batch row (batch 1), e.g. for calibration."""
    out = {}
    for name, feeds in cases.items():
        rows = next(iter(feeds.values())).shape[0]
        out[name] = [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in feeds.items()} for i in range(rows)]
    return out


def by_component(cases: Sequence[CaseSet]) -> dict[str, list[Feeds]]:
    """[{component: feeds}, ...] -> {component: [feeds, ...]}."""
    return {name: [case[name] for case in cases] for name in cases[0]}


def dynamic_axes(specs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    """{tensor name: {axis: dimension name}} for every named (dynamic) dimension of ``specs``."""
    out = {}
    for spec in specs:
        axes = {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        if axes:
            out[spec.name] = axes
    return out


def dynamic_shapes(graph: ComponentGraph) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes`` for the graph's forward: ``Dim.AUTO`` on every named axis.

    Follows the forward's signature: one entry per named parameter, and one tuple for ``*args``
    (the decoders take their K/V tensors that way).
    """
    import inspect

    per_input = [{axis: torch.export.Dim.AUTO for axis, dim in enumerate(spec.shape) if isinstance(dim, str)} or None
                 for spec in graph.inputs]
    params = list(inspect.signature(graph.module.forward).parameters.values())
    fixed = sum(p.kind != inspect.Parameter.VAR_POSITIONAL for p in params)
    if fixed < len(params):
        return (*per_input[:fixed], tuple(per_input[fixed:]))
    return tuple(per_input)


def forbidden_nodes(model: Any) -> list[str]:
    """'op_type name' of every FORBIDDEN_OPS node of an onnx.ModelProto, subgraphs included."""
    found: list[str] = []

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.op_type in FORBIDDEN_OPS and node.domain in ("", "ai.onnx"):
                found.append(f"{node.op_type} {node.name or '(unnamed)'}")
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def _stamp_shape(value_info: Any, spec: TensorSpec) -> None:
    """Write spec.shape onto a graph input/output: ints as dim_value, names as dim_param."""
    dims = value_info.type.tensor_type.shape.dim
    del dims[:]
    for dim in spec.shape:
        entry = dims.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim


def strip_debug_metadata(model: Any) -> None:
    """Drop the per-node and per-value ``metadata_props`` the dynamo exporter writes (stack traces, FX
    node names, module paths) from an onnx.ModelProto, in place. No runtime reads them, and they are
    not small: 0.5 MB of the 6.6 MB speech student, which would put the default bundles over their
    size budget. Shapes, names and the model-level metadata stay."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output, *model.graph.initializer]:
        del value.metadata_props[:]


def finalize_model(model: Any, graph: ComponentGraph, options: ExportOptions) -> Any:
    """Check an exported onnx.ModelProto against ``graph``, stamp the specs' shapes on its I/O and
    strip the exporter's debug metadata (``strip_debug_metadata``).

    Raises ExportError for a wrong opset, a forbidden control-flow node, inputs/outputs that are
    not the specs', or an onnx.checker failure.
    """
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < options.opset:
        raise ExportError(f"{graph.name}: the exported model has opset {opset}, below the requested {options.opset}")
    bad = forbidden_nodes(model)
    if bad:
        raise ExportError(
            f"{graph.name}: the exported graph holds control flow ({', '.join(bad[:5])}); TensorRT cannot build it. "
            "Keep data-dependent branches out of the wrapper's forward (decoders: one graph per step kind)"
        )
    by_name = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.output)}
    for spec in graph.inputs + graph.outputs:
        if spec.name not in by_name:
            raise ExportError(
                f"{graph.name}: the exported graph has no input/output {spec.name!r} (it has {sorted(by_name)}); "
                "the input was probably unused and pruned: check the wrapper's forward"
            )
        _stamp_shape(by_name[spec.name], spec)
    strip_debug_metadata(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{graph.name}: onnx.checker refused the exported model: {e}") from e
    return model


def export_onnx(graph: ComponentGraph, path: str | Path, options: ExportOptions = ExportOptions()) -> Path:
    """Export ``graph`` to ``path`` (a single .onnx file, weights inside) and check it.

    Returns the path. Raises ExportError when torch.onnx fails or the model fails a check.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated, and about traced shape
            # arithmetic that the dynamic axes cover; neither is actionable here.
            warnings.simplefilter("ignore")
            if options.exporter == "dynamo":
                # It warns once per missing torchvision operator, which these models never use.
                logging.getLogger(TORCH_ONNX_REGISTRATION_LOGGER).setLevel(logging.ERROR)
                torch.onnx.export(graph.module, graph.example, str(path), input_names=graph.input_names,
                                  output_names=graph.output_names, dynamic_shapes=dynamic_shapes(graph),
                                  opset_version=options.opset, dynamo=True, verbose=False)
            else:
                torch.onnx.export(graph.module, graph.example, str(path), input_names=graph.input_names,
                                  output_names=graph.output_names,
                                  dynamic_axes=dynamic_axes(graph.inputs + graph.outputs),
                                  opset_version=options.opset, do_constant_folding=True, dynamo=False)
    except Exception as e:  # torch.onnx raises many unrelated types
        raise ExportError(f"{graph.name}: torch.onnx.export failed: {type(e).__name__}: {e}") from e
    model = finalize_model(onnx.load(str(path)), graph, options)
    onnx.save_model(model, str(path))
    logger.info("exported %s -> %s (%.2f s, %d bytes)", graph.name, path, time.perf_counter() - start,
                path.stat().st_size)
    return path
