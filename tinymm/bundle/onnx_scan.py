"""Read what the bundle checks need from an ONNX file, without the ``onnx`` package.

The runtime must not depend on ``onnx``, yet before onnxruntime opens a model the bundle reader
has to know which external data files the model will read (a ``location`` such as
``../../etc/passwd`` must never reach onnxruntime) and which inputs and outputs its graph has.
This module decodes just enough of the protobuf wire format for that: varints and
length-delimited fields, skipping everything else without copying it.

Walked messages and field numbers (from onnx/onnx.proto, IR version 10):

- ModelProto: graph = 7, training_info = 20, functions = 25
- TrainingInfoProto: initialization = 1, algorithm = 2 (graphs)
- GraphProto: node = 1, initializer = 5, input = 11, output = 12, sparse_initializer = 15
- NodeProto: attribute = 5
- AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
- FunctionProto: node = 7, attribute_proto = 11
- SparseTensorProto: values = 1, indices = 2 (tensors)
- TensorProto: name = 8, external_data = 13, data_location = 14 (EXTERNAL = 1)
- StringStringEntryProto: key = 1, value = 2
- ValueInfoProto: name = 1

Subgraphs (If, Loop, Scan bodies, function bodies) are walked recursively, to MAX_NESTING levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAX_NESTING = 64  # deepest graph nesting accepted (through If/Loop/Scan attributes)
MAX_VARINT_BYTES = 10  # a 64-bit varint takes at most 10 bytes

_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LENGTH_DELIMITED = 2
_WIRE_FIXED32 = 5
_FIXED_SIZES = {_WIRE_FIXED64: 8, _WIRE_FIXED32: 4}

_MODEL_GRAPH = 7
_MODEL_TRAINING_INFO = 20
_MODEL_FUNCTIONS = 25
_TRAINING_GRAPHS = (1, 2)  # initialization, algorithm
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_GRAPH_SPARSE_INITIALIZER = 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSORS = (5, 10)  # t, tensors
_ATTR_GRAPHS = (6, 11)  # g, graphs
_ATTR_SPARSE_TENSORS = (22, 23)  # sparse_tensor, sparse_tensors
_FUNCTION_NODE = 7
_FUNCTION_ATTRIBUTE_PROTO = 11
_SPARSE_TENSORS = (1, 2)  # values, indices
_TENSOR_NAME = 8
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_DATA_LOCATION_EXTERNAL = 1
_ENTRY_KEY = 1
_ENTRY_VALUE = 2
_VALUE_INFO_NAME = 1
_EXTERNAL_LOCATION_KEY = "location"


class OnnxWireError(ValueError):
    """The bytes are not a well-formed ONNX protobuf (the caller names the file)."""


@dataclass(frozen=True)
class ExternalTensor:
    """A tensor whose data lives in a file next to the model."""

    tensor: str  # the tensor's name in the graph
    location: str  # the file, relative to the directory of the .onnx file, as written in the model


@dataclass(frozen=True)
class OnnxSummary:
    """The parts of a model the bundle checks use."""

    inputs: tuple[str, ...]  # names of the main graph's inputs (may include initializers, IR < 4)
    outputs: tuple[str, ...]  # names of the main graph's outputs
    initializers: frozenset[str]  # names of the main graph's initializers
    external_data: tuple[ExternalTensor, ...]  # every tensor stored externally, subgraphs included


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    for i in range(MAX_VARINT_BYTES):
        if pos >= len(buf):
            raise OnnxWireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result, pos
    raise OnnxWireError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview | None]]:
    """Yield (field number, wire type, value): an int for varints, a view for length-delimited."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 0x7
        if number == 0:
            raise OnnxWireError("field number 0")
        value: int | memoryview | None
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _WIRE_LENGTH_DELIMITED:
            length, pos = _varint(buf, pos)
            if length > end - pos:
                raise OnnxWireError(f"field {number} claims {length} bytes but only {end - pos} remain")
            value = buf[pos : pos + length]
            pos += length
        elif wire in _FIXED_SIZES:
            pos += _FIXED_SIZES[wire]
            if pos > end:
                raise OnnxWireError(f"truncated fixed-size field {number}")
            value = None
        else:
            raise OnnxWireError(f"unsupported wire type {wire} in field {number}")
        yield number, wire, value


def _message(number: int, wire: int, value: int | memoryview | None) -> memoryview:
    if wire != _WIRE_LENGTH_DELIMITED or not isinstance(value, memoryview):
        raise OnnxWireError(f"field {number} should be a message but has wire type {wire}")
    return value


def _string(number: int, wire: int, value: int | memoryview | None) -> str:
    data = _message(number, wire, value)
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise OnnxWireError(f"string field {number} is not UTF-8") from e


class _Scanner:
    """Walks a ModelProto, collecting external tensors and the main graph's interface."""

    def __init__(self) -> None:
        self.external: list[ExternalTensor] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.initializers: list[str] = []

    def model(self, buf: memoryview) -> None:
        has_graph = False
        for number, wire, value in _fields(buf):
            if number == _MODEL_GRAPH:
                has_graph = True
                self.graph(_message(number, wire, value), depth=0)
            elif number == _MODEL_TRAINING_INFO:
                for sub_number, sub_wire, sub_value in _fields(_message(number, wire, value)):
                    if sub_number in _TRAINING_GRAPHS:
                        self.graph(_message(sub_number, sub_wire, sub_value), depth=1)
            elif number == _MODEL_FUNCTIONS:
                self.function(_message(number, wire, value), depth=1)
        if not has_graph:
            raise OnnxWireError("no graph (ModelProto field 7)")

    def graph(self, buf: memoryview, depth: int) -> None:
        if depth > MAX_NESTING:
            raise OnnxWireError(f"graphs nested more than {MAX_NESTING} levels deep")
        for number, wire, value in _fields(buf):
            if number == _GRAPH_NODE:
                self.node(_message(number, wire, value), depth)
            elif number == _GRAPH_INITIALIZER:
                name = self.tensor(_message(number, wire, value))
                if depth == 0:
                    self.initializers.append(name)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse_tensor(_message(number, wire, value))
            elif depth == 0 and number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                names = self.inputs if number == _GRAPH_INPUT else self.outputs
                names.append(self.value_info_name(_message(number, wire, value)))

    def node(self, buf: memoryview, depth: int) -> None:
        for number, wire, value in _fields(buf):
            if number == _NODE_ATTRIBUTE:
                self.attribute(_message(number, wire, value), depth)

    def attribute(self, buf: memoryview, depth: int) -> None:
        for number, wire, value in _fields(buf):
            if number in _ATTR_TENSORS:
                self.tensor(_message(number, wire, value))
            elif number in _ATTR_GRAPHS:
                self.graph(_message(number, wire, value), depth + 1)
            elif number in _ATTR_SPARSE_TENSORS:
                self.sparse_tensor(_message(number, wire, value))

    def function(self, buf: memoryview, depth: int) -> None:
        for number, wire, value in _fields(buf):
            if number == _FUNCTION_NODE:
                self.node(_message(number, wire, value), depth)
            elif number == _FUNCTION_ATTRIBUTE_PROTO:
                self.attribute(_message(number, wire, value), depth)

    def sparse_tensor(self, buf: memoryview) -> None:
        for number, wire, value in _fields(buf):
            if number in _SPARSE_TENSORS:
                self.tensor(_message(number, wire, value))

    def tensor(self, buf: memoryview) -> str:
        """Record the tensor if its data is external; return its name."""
        name = ""
        locations: list[str] = []
        data_location = 0
        for number, wire, value in _fields(buf):
            if number == _TENSOR_NAME:
                name = _string(number, wire, value)
            elif number == _TENSOR_EXTERNAL_DATA:
                key, entry_value = self.entry(_message(number, wire, value))
                if key == _EXTERNAL_LOCATION_KEY:
                    locations.append(entry_value)
            elif number == _TENSOR_DATA_LOCATION:
                if wire != _WIRE_VARINT or not isinstance(value, int):
                    raise OnnxWireError(f"data_location of tensor {name!r} has wire type {wire}")
                data_location = value
        if data_location == _DATA_LOCATION_EXTERNAL and not locations:
            raise OnnxWireError(f"tensor {name!r} is stored externally but names no location")
        # A location is checked even when data_location is not EXTERNAL: refusing a stray unsafe
        # location costs nothing, trusting that no reader ever follows it would.
        self.external.extend(ExternalTensor(name, location) for location in locations)
        return name

    @staticmethod
    def entry(buf: memoryview) -> tuple[str, str]:
        key = value = ""
        for number, wire, raw in _fields(buf):
            if number == _ENTRY_KEY:
                key = _string(number, wire, raw)
            elif number == _ENTRY_VALUE:
                value = _string(number, wire, raw)
        return key, value

    @staticmethod
    def value_info_name(buf: memoryview) -> str:
        name = ""
        for number, wire, value in _fields(buf):
            if number == _VALUE_INFO_NAME:
                name = _string(number, wire, value)
        return name


def scan_onnx(data: bytes | memoryview) -> OnnxSummary:
    """Summarize a serialized ModelProto. Raises OnnxWireError if it is not one."""
    scanner = _Scanner()
    scanner.model(memoryview(data))
    return OnnxSummary(
        inputs=tuple(scanner.inputs),
        outputs=tuple(scanner.outputs),
        initializers=frozenset(scanner.initializers),
        external_data=tuple(scanner.external),
    )


def scan_onnx_file(path: Path) -> OnnxSummary:
    """Summarize the ONNX model at ``path``. Raises OnnxWireError or OSError."""
    return scan_onnx(Path(path).read_bytes())
