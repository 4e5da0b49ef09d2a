"""Running a decoder one step at a time over backend Sessions: with a KV cache, or without.

The search strategies (search.py) see a decoder only through the ``Inference`` protocol:

- ``prefill(input_ids)``: run the prompts (rows, T) and return the last position's logits (rows, V);
- ``step(tokens)``: append one token per row (rows,) and return the next logits (rows, V);
- ``select(rows)``: keep, reorder or repeat rows (beam search expands each input into its beams
  and follows the surviving hypotheses; greedy search drops rows that finished).

``KVCacheInference`` drives the two decoder graphs of a bundle in one of two layouts. The
``"cross-in"`` layout of the vision-language bundles (export/LAYOUT.md), where the image encoder
computes the cross-attention K/V once per image::

    decoder_first      input_ids (batch, seq) int64, cross.{i}.key|value (batch, heads, N_img, head_dim)
                       -> logits (batch, seq, V), present.{i}.key|value (batch, heads, seq, head_dim)
    decoder_with_past  input_ids (batch, new), past_key_values.{i}.key|value (batch, heads, past, head_dim),
                       cross.{i}.key|value -> logits (batch, new, V), present.{i}.key|value (.., past+new, ..)

and the ``"encoder-states"`` layout of Whisper bundles (export/LAYOUT.md, "Whisper bundle"), where
``decoder_first`` takes the encoder's hidden states and returns the cross K/V, which every
``decoder_with_past`` step then takes unchanged::

    decoder_first      input_ids (batch, seq), encoder_hidden_states (batch, enc_frames, d_model)
                       -> logits, present.{i}.key|value, cross.{i}.key|value (batch, heads, enc_frames, head_dim)
    decoder_with_past  as above

The inferences take the decoder_first inputs other than ``input_ids`` as their ``context``: the
cross K/V in the first layout, ``{"encoder_hidden_states": ...}`` in the second.

The self-attention cache is a dict of arrays; with ``device_cache=True`` and a session that offers
``run_ortvalues`` (the onnxruntime backend) it stays in the session's device memory as OrtValues
between steps, and only the logits come back to the host. ``RecomputeInference`` runs
``decoder_first`` over the whole sequence at every step: slower, but it needs no cache, which
makes it the reference the cache is tested against and a fallback for bundles without
``decoder_with_past``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from tinymm.backends.base import Session
from tinymm.errors import BundleError

logger = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
LOGITS = "logits"
CROSS = "cross"  # cross.{i}.key|value: image K/V per decoder layer, computed once per image
PAST = "past_key_values"  # past_key_values.{i}.key|value: the self-attention cache fed in
PRESENT = "present"  # present.{i}.key|value: the cache after this step
KV_KINDS = ("key", "value")
KV_SEQ_AXIS = 2  # (batch, heads, seq, head_dim)
ENCODER_STATES = "encoder_hidden_states"  # (batch, enc_frames, d_model): decoder_first's input in "encoder-states"
CROSS_IN = "cross-in"  # decoder_first and decoder_with_past take the cross K/V (vision-language)
ENCODER_STATES_LAYOUT = "encoder-states"  # decoder_first takes encoder states and returns the cross K/V (Whisper)
LAYOUTS = (CROSS_IN, ENCODER_STATES_LAYOUT)
_CROSS_KEY = re.compile(rf"^{CROSS}\.(\d+)\.key$")


def kv_names(prefix: str, num_layers: int) -> list[str]:
    """``prefix.{i}.key``, ``prefix.{i}.value`` for i < num_layers, in that order."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in KV_KINDS]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"decoder layout={layout!r} is not one of {list(LAYOUTS)}")


def count_layers(session: Session) -> int:
    """Decoder layers of a decoder session: the number of its ``cross.{i}.key`` inputs or outputs."""
    names = {spec.name for spec in (*session.inputs, *session.outputs)}
    return sum(1 for name in names if _CROSS_KEY.match(name))


def check_decoder_layout(first: Session, with_past: Session | None, num_layers: int, layout: str = CROSS_IN) -> None:
    """BundleError unless the decoder sessions have the input and output names of ``layout``."""
    _check_layout(layout)
    cross, present = kv_names(CROSS, num_layers), kv_names(PRESENT, num_layers)
    if layout == CROSS_IN:
        wanted = {"decoder_first": (first, [INPUT_IDS, *cross], [LOGITS, *present])}
    else:
        wanted = {"decoder_first": (first, [INPUT_IDS, ENCODER_STATES], [LOGITS, *present, *cross])}
    if with_past is not None:
        wanted["decoder_with_past"] = (
            with_past,
            [INPUT_IDS, *kv_names(PAST, num_layers), *kv_names(CROSS, num_layers)],
            [LOGITS, *kv_names(PRESENT, num_layers)],
        )
    check_session_names(wanted, num_layers, f"{layout!r} decoder layout", "cross.0.key", "python -m export")


def check_session_names(wanted: Mapping[str, tuple[Session, Sequence[str], Sequence[str]]], num_layers: int,
                        layout: str, first_kv: str, export_command: str) -> None:
    """BundleError naming the first component (of component -> (session, inputs, outputs)) that lacks
    one of its tensor names, or any when ``num_layers`` < 1 (``first_kv`` then stands for what is missing)."""
    for component, (session, inputs, outputs) in wanted.items():
        have_in = {spec.name for spec in session.inputs}
        have_out = {spec.name for spec in session.outputs}
        missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
        if num_layers < 1 or missing:
            raise BundleError(
                f"{component} does not follow the {layout} for {num_layers} layer(s): missing "
                f"{missing[:6] or first_kv}; it has inputs {sorted(have_in)[:8]} and outputs "
                f"{sorted(have_out)[:8]}. Re-export the bundle with `{export_command}` (see export/LAYOUT.md)"
            )


class Inference(Protocol):
    """What a search strategy needs from a decoder; rows are hypotheses."""

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Prompts (rows, T) int64 -> logits of the last position (rows, V) float32."""
        ...

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per row (rows,) int64 -> next-token logits (rows, V) float32."""
        ...

    def select(self, rows: np.ndarray) -> None:
        """Keep the state of ``rows`` (indices into the current rows; repeats allowed), in that order."""
        ...


class _CrossRows:
    """The cross-attention K/V per row, re-gathered only when the rows' inputs change.

    Beam search repeats each input's K/V once per beam; reordering beams within an input keeps
    every row's input, so the K/V are not copied again.
    """

    def __init__(self, cross: Mapping[str, np.ndarray]) -> None:
        self._source = {name: np.ascontiguousarray(value) for name, value in cross.items()}
        batch = {value.shape[0] for value in self._source.values()}
        if len(batch) != 1:
            raise ValueError(f"cross K/V arrays disagree on the batch size: {sorted(batch)}")
        self._inputs = np.arange(batch.pop())  # (rows,) input index of each row
        self.arrays: dict[str, Any] = dict(self._source)
        self.version = 0  # bumped whenever the arrays change (device copies follow it)

    def select(self, rows: np.ndarray) -> None:
        inputs = self._inputs[rows]
        if np.array_equal(inputs, self._inputs):
            return
        self._inputs = inputs
        self.arrays = {name: np.take(value, inputs, axis=0) for name, value in self._source.items()}
        self.version += 1


def _last_logits(logits: np.ndarray) -> np.ndarray:
    """(rows, T, V) -> (rows, V) float32 logits of the last position."""
    return np.ascontiguousarray(logits[:, -1, :], dtype=np.float32)


class KVCacheInference:
    """``decoder_first`` once for the prompts, then ``decoder_with_past`` one token per step."""

    def __init__(
        self,
        first: Session,
        with_past: Session,
        cross: Mapping[str, np.ndarray],
        num_layers: int,
        *,
        device_cache: bool = False,
        layout: str = CROSS_IN,
    ) -> None:
        """cross: the decoder_first inputs besides input_ids, one row per input: ``cross.{i}.key|value``
        -> (batch, heads, N_img, head_dim) float32 in the ``"cross-in"`` layout; ``encoder_hidden_states``
        -> (batch, enc_frames, d_model) float32 in the ``"encoder-states"`` layout, where the cross K/V
        come out of ``prefill``.

        device_cache: keep the cache as OrtValues on the session's device between steps (needs a
        session with ``run_ortvalues``; ignored otherwise).
        """
        _check_layout(layout)
        self._first = first
        self._with_past = with_past
        self._layout = layout
        self._context = _CrossRows(cross)  # decoder_first's inputs besides input_ids
        # The K/V every decoder_with_past step takes: the context itself, or decoder_first's cross outputs.
        self._cross = self._context if layout == CROSS_IN else None
        self._cross_names = kv_names(CROSS, num_layers)
        self._present_names = kv_names(PRESENT, num_layers)
        self._past_names = kv_names(PAST, num_layers)
        self._device = device_cache and hasattr(with_past, "run_ortvalues") and hasattr(first, "run_ortvalues")
        self._cache: dict[str, Any] = {}  # past_key_values.{i}.key|value -> array or OrtValue
        self._device_cross: tuple[int, dict[str, Any]] | None = None  # (cross version, OrtValues)

    @property
    def on_device(self) -> bool:
        """Whether the cache stays on the session's device as OrtValues."""
        return self._device

    def _cross_feeds(self) -> Mapping[str, Any]:
        if self._cross is None:
            raise RuntimeError("step() or select() before prefill(): the cross K/V come from decoder_first")
        if not self._device:
            return self._cross.arrays
        if self._device_cross is None or self._device_cross[0] != self._cross.version:
            values = {name: self._to_device(value) for name, value in self._cross.arrays.items()}
            self._device_cross = (self._cross.version, values)
        return self._device_cross[1]

    def _to_device(self, array: np.ndarray) -> Any:
        from onnxruntime import (
            OrtValue,  # only reached with a session that offers run_ortvalues
        )

        device_type, device_id = getattr(self._with_past, "device", ("cpu", 0))
        return OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device_type, device_id)

    def _run(self, session: Session, feeds: Mapping[str, Any], cross_out: bool = False) -> np.ndarray:
        names = [LOGITS, *self._present_names, *(self._cross_names if cross_out else ())]
        if self._device:
            outputs = session.run_ortvalues(feeds, names)  # type: ignore[attr-defined]
            logits = outputs[LOGITS].numpy()
        else:
            outputs = session.run(feeds, names)
            logits = outputs[LOGITS]
        self._cache = {past: outputs[present] for past, present in zip(self._past_names, self._present_names)}
        if cross_out:  # rows as the prefill's; kept on the host, where select() gathers rows
            self._cross = _CrossRows({
                name: outputs[name].numpy() if self._device else outputs[name] for name in self._cross_names
            })
            self._device_cross = None
        return _last_logits(logits)

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if self._layout == CROSS_IN:
            return self._run(self._first, {INPUT_IDS: ids, **self._cross_feeds()})
        return self._run(self._first, {INPUT_IDS: ids, **self._context_feeds()}, cross_out=True)

    def _context_feeds(self) -> Mapping[str, Any]:
        if not self._device:
            return self._context.arrays
        return {name: self._to_device(value) for name, value in self._context.arrays.items()}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1, 1))
        return self._run(self._with_past, {INPUT_IDS: ids, **self._cache, **self._cross_feeds()})

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if self._cross is None:
            raise RuntimeError("select() before prefill(): the cross K/V come from decoder_first")
        self._cross.select(rows)
        if self._device:  # a host round trip: onnxruntime has no gather on OrtValues
            self._cache = {name: self._to_device(np.take(value.numpy(), rows, axis=0)) for name, value in self._cache.items()}
        else:
            self._cache = {name: np.take(value, rows, axis=0) for name, value in self._cache.items()}


class RecomputeInference:
    """``decoder_first`` over the whole sequence at every step: no cache (the reference).

    cross: decoder_first's inputs besides input_ids (the cross K/V, or the encoder's hidden
    states): the same in both layouts, since only the logits are read.
    """

    def __init__(self, first: Session, cross: Mapping[str, np.ndarray]) -> None:
        self._first = first
        self._cross = _CrossRows(cross)
        self._ids = np.zeros((0, 0), dtype=np.int64)  # (rows, length so far)

    def _run(self) -> np.ndarray:
        outputs = self._first.run({INPUT_IDS: self._ids, **self._cross.arrays}, [LOGITS])
        return _last_logits(outputs[LOGITS])

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        self._ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        return self._run()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        column = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        self._ids = np.ascontiguousarray(np.concatenate([self._ids, column], axis=1))
        return self._run()

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self._cross.select(rows)
        self._ids = self._ids[rows]


def make_inference(
    first: Session,
    with_past: Session | None,
    cross: Mapping[str, np.ndarray],
    num_layers: int,
    *,
    device_cache: bool = False,
    layout: str = CROSS_IN,
) -> Inference:
    """A KVCacheInference, or a RecomputeInference when there is no ``decoder_with_past``.

    cross: decoder_first's inputs besides input_ids, as ``layout`` names them (see the module docstring).
    """
    _check_layout(layout)
    if with_past is None:
        return RecomputeInference(first, cross)
    return KVCacheInference(first, with_past, cross, num_layers, device_cache=device_cache, layout=layout)


def cross_from_outputs(outputs: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """The ``cross.{i}.key|value`` arrays among an image encoder's outputs."""
    names: Sequence[str] = kv_names(CROSS, num_layers)
    missing = [name for name in names if name not in outputs]
    if missing:
        raise BundleError(
            f"the image encoder returned no {missing[:4]}; the decoder needs one K/V pair per layer. "
            "Re-export the bundle (see export/LAYOUT.md)"
        )
    return {name: outputs[name] for name in names}
