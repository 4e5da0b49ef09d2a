"""Store the weights of the two decoder graphs once: one shared ONNX external-data file per precision.

``decoder_first`` and ``decoder_with_past`` are two graphs of the same decoder (TensorRT cannot
build a merged If-node decoder), so each ONNX file holds a full copy of the decoder's weights:
about half of a vision-language bundle's ONNX bytes. ``share_initializers`` moves the large
initializers of a group of ONNX files into one external-data file, each distinct content stored
once, and points every tensor's ``external_data`` (``location``, ``offset``, ``length``) into it:

    decoder_first.onnx         graph + small initializers  ─┐
    decoder_with_past.onnx     graph + small initializers  ─┴─▶ decoder.fp32.weights
    decoder_first.fp16.onnx ... ──▶ decoder.fp16.weights;  decoder_first.int8.onnx ... ──▶ decoder.int8.weights

Tensors are matched by content (dtype, dims and the sha256 of their raw bytes), not by name: the
TorchScript exporter gives the same weight different names in the two graphs (``onnx::MatMul_123``).
Offsets are aligned (ALIGNMENT_BYTES, PAGE_BYTES for large tensors, so that onnxruntime can map
them from the file). Each rewritten model records the weights file's sha256 in its
``metadata_props`` (METADATA_KEY), so the ONNX file's own sha256, which keys TensorRT engine
caches, changes whenever the weights do. The rewrite is checked before it returns: every moved
tensor reads back from the file with its original bytes.

Usage (``export/bundle_build.py``, after every variant is written and before the golden check):

    shared = share_decoder_weights(files)   # {precision: SharedWeights}; add each .weights file to the bundle
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import onnx
from onnx.external_data_helper import set_external_data

from tinymm.errors import TinymmError
from tinymm.hashing import sha256_file

logger = logging.getLogger(__name__)

DECODER_COMPONENTS = ("decoder_first", "decoder_with_past")  # the graphs that share one decoder's weights
WEIGHTS_STEM = "decoder"  # shared file of precision p: "decoder.{p}.weights"
WEIGHTS_SUFFIX = ".weights"
MIN_SHARED_BYTES = 1024  # smaller initializers (norm gains, biases, scales) stay inside their graph
ALIGNMENT_BYTES = 64  # every stored tensor starts at a multiple of this (a cache line, any SIMD load)
PAGE_BYTES = 4096  # tensors of PAGE_ALIGN_MIN_BYTES or more start on a page: onnxruntime can mmap them
PAGE_ALIGN_MIN_BYTES = 1 << 20  # 1 MiB, onnxruntime's own threshold for page-aligning external data
METADATA_KEY = "tinymm.external_data_sha256"  # metadata_props entry: JSON {location: sha256 of the file}


class ShareWeightsError(TinymmError):
    """ONNX files could not be rewritten to share one external-data file."""

    kind = "share_weights_error"


@dataclass(frozen=True)
class ShareOptions:
    """Which initializers move to the shared file and how they are laid out in it."""

    min_bytes: int = MIN_SHARED_BYTES  # initializers of fewer raw bytes stay inside their graph
    alignment: int = ALIGNMENT_BYTES  # offset alignment of every tensor, a power of two
    page_bytes: int = PAGE_BYTES  # offset alignment of large tensors, a power of two >= alignment
    page_align_min_bytes: int = PAGE_ALIGN_MIN_BYTES  # tensors of at least this many bytes are page-aligned

    def __post_init__(self) -> None:
        for name in ("min_bytes", "page_align_min_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ShareOptions.{name}={value!r} must be a positive integer (bytes)")
        for name in ("alignment", "page_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ValueError(f"ShareOptions.{name}={value!r} must be a power of two (bytes), e.g. 64 or 4096")
        if self.page_bytes < self.alignment:
            raise ValueError(f"ShareOptions.page_bytes={self.page_bytes} is smaller than alignment={self.alignment}; "
                             "a page alignment must be at least the general one")


@dataclass(frozen=True)
class SharedWeights:
    """What ``share_initializers`` did to one group of ONNX files."""

    weights: Path  # the shared external-data file, next to the models
    models: tuple[Path, ...]  # the rewritten ONNX files
    bytes_before: int  # the models' total size before
    bytes_after: int  # the models' total size after, plus the weights file
    tensors: int  # initializers now stored in the weights file
    distinct: int  # distinct contents among them (what the file holds)
    padding: int  # bytes of alignment gaps in the weights file

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after


def _content_key(tensor: onnx.TensorProto) -> tuple[int, tuple[int, ...], str]:
    """(dtype, dims, sha256 of the raw bytes): equal keys mean interchangeable tensors."""
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).hexdigest()


def _movable(tensor: onnx.TensorProto, options: ShareOptions) -> bool:
    """Inline raw-data initializers of at least ``options.min_bytes`` (others are left as they are)."""
    return (tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data")
            and len(tensor.raw_data) >= options.min_bytes)


def _aligned(offset: int, size: int, options: ShareOptions) -> int:
    step = options.page_bytes if size >= options.page_align_min_bytes else options.alignment
    return -(-offset // step) * step


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf and onnx raise several unrelated types for a bad file
        raise ShareWeightsError(f"cannot read ONNX model {path} ({e}); export the component again") from e


def _check_group(models: Sequence[Path], weights: Path) -> None:
    if not models:
        raise ShareWeightsError(f"no ONNX models given to share {weights.name}; pass at least one model path")
    if len(set(models)) != len(models):
        raise ShareWeightsError(f"the models {[str(m) for m in models]} name a file twice; pass each once")
    outside = [str(m) for m in models if m.parent.resolve() != weights.parent.resolve()]
    if outside:
        raise ShareWeightsError(
            f"{outside} are not in {weights.parent}, the directory of {weights.name}: external data locations "
            "are relative to the model, so the models and their weights file must sit side by side")
    if weights.exists():
        raise ShareWeightsError(
            f"{weights} already exists; the models may already share it: start again from freshly exported "
            "files, or pick another weights file name")


def _write_weights(models: Sequence[onnx.ModelProto], weights: Path,
                   options: ShareOptions) -> tuple[dict[tuple[int, tuple[int, ...], str], tuple[int, int]], int, int]:
    """Write each distinct movable tensor once; returns ({key: (offset, length)}, tensors, padding)."""
    placed: dict[tuple[int, tuple[int, ...], str], tuple[int, int]] = {}
    tensors = padding = 0
    with open(weights, "wb") as f:
        for model in models:
            for tensor in model.graph.initializer:
                if not _movable(tensor, options):
                    continue
                tensors += 1
                key = _content_key(tensor)
                if key in placed:
                    continue
                end = f.tell()
                offset = _aligned(end, len(tensor.raw_data), options)
                f.write(b"\0" * (offset - end))
                f.write(tensor.raw_data)
                padding += offset - end
                placed[key] = (offset, len(tensor.raw_data))
    return placed, tensors, padding


def _point_to(model: onnx.ModelProto, weights: Path, placed: Mapping[tuple[int, tuple[int, ...], str], tuple[int, int]],
              options: ShareOptions) -> list[tuple[str, tuple[int, tuple[int, ...], str]]]:
    """Replace the movable initializers' data by references into ``weights``; returns (name, key) moved."""
    moved = []
    for tensor in model.graph.initializer:
        if not _movable(tensor, options):
            continue
        key = _content_key(tensor)
        offset, length = placed[key]
        set_external_data(tensor, weights.name, offset=offset, length=length)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        moved.append((tensor.name, key))
    return moved


def _record_checksum(model: onnx.ModelProto, location: str, sha256: str) -> None:
    entries = [p for p in model.metadata_props if p.key == METADATA_KEY]
    recorded = json.loads(entries[0].value) if entries else {}
    recorded[location] = sha256
    for entry in entries:
        model.metadata_props.remove(entry)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(recorded, sort_keys=True))


def _verify(path: Path, weights: Path, moved: Sequence[tuple[str, tuple[int, tuple[int, ...], str]]]) -> None:
    """Every moved initializer of the rewritten ``path`` reads back from ``weights`` with its original bytes.

    (onnx.checker is not used: the fp16 converter's graphs are valid for onnxruntime but not
    topologically sorted, which the checker refuses; the export's golden check loads them.)
    """
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as e:  # protobuf and onnx raise several unrelated types
        raise ShareWeightsError(f"{path} no longer loads after moving its weights to {weights.name} ({e})") from e
    by_name = {t.name: t for t in model.graph.initializer}
    wrong = [name for name, key in moved if _content_key(by_name[name]) != key]
    if wrong:
        raise ShareWeightsError(f"{path}: initializers {wrong[:5]} read back from {weights.name} with other bytes "
                                "than they had; the weights file was changed while it was written")


def share_initializers(models: Sequence[str | Path], weights: str | Path,
                       options: ShareOptions | None = None) -> SharedWeights | None:
    """Move the large initializers of ``models`` into the one external-data file ``weights``.

    The models are rewritten in place; ``weights`` (which must not exist yet) is written next to
    them, each distinct tensor content once. Returns None, writing nothing, when no initializer
    is large enough (``options.min_bytes``). Raises ShareWeightsError when a model cannot be
    read, the files are not side by side, or the rewrite does not read back identically.
    """
    options = options if options is not None else ShareOptions()
    paths, weights = [Path(m) for m in models], Path(weights)
    _check_group(paths, weights)
    protos = [_load(p) for p in paths]
    if not any(_movable(t, options) for m in protos for t in m.graph.initializer):
        logger.info("no initializer of %s has %d bytes or more: %s not written", [p.name for p in paths],
                    options.min_bytes, weights.name)
        return None
    bytes_before = sum(p.stat().st_size for p in paths)
    try:
        placed, tensors, padding = _write_weights(protos, weights, options)
        moved = [_point_to(m, weights, placed, options) for m in protos]
        sha256 = sha256_file(weights)
        for path, model in zip(paths, protos):
            _record_checksum(model, weights.name, sha256)
            path.write_bytes(model.SerializeToString())
    except OSError as e:
        raise ShareWeightsError(f"cannot write {weights} or rewrite {[p.name for p in paths]}: {e}") from e
    for path, names in zip(paths, moved):
        _verify(path, weights, names)
    result = SharedWeights(weights, tuple(paths), bytes_before,
                           sum(p.stat().st_size for p in paths) + weights.stat().st_size, tensors, len(placed),
                           padding)
    logger.info("%s: %d initializers of %s stored once as %d (%d bytes); %d -> %d bytes", weights.name, tensors,
                [p.name for p in paths], len(placed), weights.stat().st_size, result.bytes_before, result.bytes_after)
    return result


def share_decoder_weights(files: Mapping[str, Mapping[str, Path]],
                          options: ShareOptions | None = None) -> dict[str, SharedWeights]:
    """For each precision both decoder graphs have, share their weights in ``decoder.{precision}.weights``.

    ``files`` maps component -> precision -> ONNX path (what the export wrote); the decoder files
    are rewritten in place and each weights file is written next to them. Families without both
    decoder components (speech) are left alone. Returns precision -> SharedWeights for every
    weights file written: add those files to the bundle.
    """
    if not all(c in files for c in DECODER_COMPONENTS):
        return {}
    shared = {}
    first, with_past = (files[c] for c in DECODER_COMPONENTS)
    for precision in [p for p in first if p in with_past]:
        group = [first[precision], with_past[precision]]
        weights = group[0].parent / f"{WEIGHTS_STEM}.{precision}{WEIGHTS_SUFFIX}"
        result = share_initializers(group, weights, options)
        if result is not None:
            shared[precision] = result
    return shared
