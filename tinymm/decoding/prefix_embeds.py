"""The prefix-embeddings decoder layout of LLaVA-style models (SmolVLM, Idefics3): an ``Inference``
(see inference.py) whose prompt carries image features in place of its image tokens.

Graphs (export/LAYOUT.md, "SmolVLM bundle")::

    embed_tokens       input_ids (batch, seq) int64 -> inputs_embeds (batch, seq, C) float32
    decoder_first      inputs_embeds (batch, seq, C) -> logits (batch, seq, V), present.{i}.key|value
                       (batch, nkv, seq, hs)
    decoder_with_past  inputs_embeds (batch, new, C), past_key_values.{i}.key|value (batch, nkv, past, hs)
                       -> logits (batch, new, V), present.{i}.key|value (batch, nkv, past+new, hs)

``prefill`` embeds the prompts, writes the image features over the rows of the image token (in
order), and runs decoder_first; ``step`` embeds one token per row and runs decoder_with_past on
the cache. Without decoder_with_past (``with_past=None``) every step re-runs decoder_first over
the whole sequence: the reference the cache is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinymm.backends.base import Session
from tinymm.decoding.inference import LOGITS, PAST, PRESENT, check_session_names, kv_names
from tinymm.errors import InputError

INPUT_IDS, INPUTS_EMBEDS = "input_ids", "inputs_embeds"


def count_kv_layers(session: Session) -> int:
    """Decoder layers of a decoder session: the number of its ``present.{i}.key`` outputs."""
    return sum(1 for spec in session.outputs if spec.name.startswith(f"{PRESENT}.") and spec.name.endswith(".key"))


def check_prefix_layout(embed: Session, first: Session, with_past: Session | None, num_layers: int) -> None:
    """BundleError unless the sessions have the input and output names of the prefix-embeddings layout."""
    present = kv_names(PRESENT, num_layers)
    wanted = {"embed_tokens": (embed, [INPUT_IDS], [INPUTS_EMBEDS]),
              "decoder_first": (first, [INPUTS_EMBEDS], [LOGITS, *present])}
    if with_past is not None:
        wanted["decoder_with_past"] = (with_past, [INPUTS_EMBEDS, *kv_names(PAST, num_layers)], [LOGITS, *present])
    check_session_names(wanted, num_layers, "prefix-embeddings decoder layout", "present.0.key", "python -m export hf")


class PrefixEmbedsInference:
    """Decoding over prompts whose image-token rows take the image features (one image per call).

    features: (N_img, C) float32, the image features in prompt order; every prompt row must hold
    exactly N_img image tokens. Beam rows all share the one image.
    """

    def __init__(self, embed: Session, first: Session, with_past: Session | None, features: np.ndarray,
                 image_token_id: int, num_layers: int) -> None:
        self._embed, self._first, self._with_past = embed, first, with_past
        self._features = np.ascontiguousarray(features, dtype=np.float32)
        self._image_token_id = image_token_id
        self._past_names, self._present_names = kv_names(PAST, num_layers), kv_names(PRESENT, num_layers)
        self._cache: dict[str, np.ndarray] = {}  # past_key_values.{i}.key|value -> (rows, nkv, past, hs)
        self._ids = np.zeros((0, 0), dtype=np.int64)  # (rows, length so far): the no-cache path re-runs them
        self._prompt_length = 0

    def _embeds(self, ids: np.ndarray, prompt_length: int) -> np.ndarray:
        """(rows, T) int64 -> (rows, T, C) float32 with the image features over the image tokens of the
        first ``prompt_length`` positions (a generated image token is embedded as a token, as transformers does)."""
        embeds = self._embed.run({INPUT_IDS: ids}, [INPUTS_EMBEDS])[INPUTS_EMBEDS]
        image = ids == self._image_token_id  # (rows, T)
        image[:, prompt_length:] = False
        if not image.any():
            return embeds
        counts = image.sum(axis=1)
        if np.any(counts != len(self._features)):
            raise InputError(
                f"the prompt holds {sorted(set(counts.tolist()))} image tokens per row but the image gave "
                f"{len(self._features)} features; the question must not contain the image token"
            )
        embeds = np.array(embeds, dtype=np.float32, copy=True)
        embeds[image] = np.tile(self._features, (ids.shape[0], 1))
        return embeds

    def _run_first(self) -> np.ndarray:
        embeds = self._embeds(self._ids, self._prompt_length)
        outputs = self._first.run({INPUTS_EMBEDS: embeds}, [LOGITS, *self._present_names])
        if self._with_past is not None:
            self._cache = {p: outputs[q] for p, q in zip(self._past_names, self._present_names)}
        return np.ascontiguousarray(outputs[LOGITS][:, -1, :], dtype=np.float32)

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Prompts (rows, T) int64 -> logits of the last position (rows, V) float32."""
        self._ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        self._prompt_length = self._ids.shape[1]
        return self._run_first()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per row (rows,) int64 -> next-token logits (rows, V) float32."""
        column = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        self._ids = np.ascontiguousarray(np.concatenate([self._ids, column], axis=1))
        if self._with_past is None:
            return self._run_first()
        feeds: dict[str, Any] = {INPUTS_EMBEDS: self._embeds(column, 0), **self._cache}
        outputs = self._with_past.run(feeds, [LOGITS, *self._present_names])
        self._cache = {p: outputs[q] for p, q in zip(self._past_names, self._present_names)}
        return np.ascontiguousarray(outputs[LOGITS][:, -1, :], dtype=np.float32)

    def select(self, rows: np.ndarray) -> None:
        """Keep the state of ``rows`` (indices into the current rows; repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        self._ids = self._ids[rows]
        self._cache = {name: np.take(value, rows, axis=0) for name, value in self._cache.items()}
