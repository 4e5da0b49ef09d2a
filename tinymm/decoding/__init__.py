"""Decoding in numpy over any backend Session: greedy and beam search with a KV cache, CTC.

Split as whisper splits its decoder, so that a pipeline assembles the pieces it needs:

- ``options``: ``DecodingOptions`` (max new tokens, beam size, length penalty, repetition
  penalty, no-repeat n-gram size), checked once;
- ``filters``: logit filters (repetition penalty, no-repeat n-gram) and the log-softmax;
- ``inference``: ``KVCacheInference`` (decoder_first, then decoder_with_past with the cache as a
  dict of arrays, or OrtValues kept on the device) and ``RecomputeInference`` (no cache);
- ``search``: ``greedy_search``, ``beam_search`` and ``generate``, which picks between them;
- ``ctc``: ``ctc_greedy_decode`` for the speech encoder;
- ``lexicon``: ``Lexicon``, which snaps a CTC transcript's misspelt words to the bundle's words;
- ``grammar``: ``GrammarDecoder``, CTC Viterbi decoding constrained to a closed grammar, with a
  fallback to the free transcript for speech outside it;
- ``grammar_graph``: the ``Grammar`` (from its domain, e.g. ``tinymm.robot.grammar``) and its
  compiled ``GrammarGraph``;
- ``whisper_tokens``: ``WhisperTokens``, a Whisper vocabulary's special ids and start sequence;
- ``whisper_filters``: Whisper's logit filters (``SuppressBlank``, ``SuppressTokens``,
  ``ApplyTimestampRules``) and ``whisper_filters``, which assembles them.

Names are imported from their module on first use (PEP 562), so that ``tinymm.decoding.options``
(the CLI flags of DecodingOptions) can be imported without numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.lazy_exports import lazy_attributes

_EXPORTS = {
    "CTCHypothesis": "ctc",
    "ctc_greedy_decode": "ctc",
    "Lexicon": "lexicon",
    "Grammar": "grammar_graph",
    "GrammarDecoder": "grammar",
    "GrammarGraph": "grammar_graph",
    "GrammarHypothesis": "grammar",
    "GrammarTemplate": "grammar_graph",
    "edit_distance": "lexicon",
    "NoRepeatNGram": "filters",
    "RepetitionPenalty": "filters",
    "build_filters": "filters",
    "log_softmax": "filters",
    "Inference": "inference",
    "KVCacheInference": "inference",
    "RecomputeInference": "inference",
    "check_decoder_layout": "inference",
    "count_layers": "inference",
    "cross_from_outputs": "inference",
    "kv_names": "inference",
    "make_inference": "inference",
    "DecodingOptions": "options",
    "Generation": "search",
    "Hypothesis": "search",
    "beam_search": "search",
    "generate": "search",
    "greedy_search": "search",
    "ApplyTimestampRules": "whisper_filters",
    "SuppressBlank": "whisper_filters",
    "SuppressTokens": "whisper_filters",
    "whisper_filters": "whisper_filters",
    "WhisperTokens": "whisper_tokens",
}

if TYPE_CHECKING:
    from tinymm.decoding.ctc import CTCHypothesis, ctc_greedy_decode
    from tinymm.decoding.grammar import GrammarDecoder, GrammarHypothesis
    from tinymm.decoding.grammar_graph import Grammar, GrammarGraph, GrammarTemplate
    from tinymm.decoding.lexicon import Lexicon, edit_distance
    from tinymm.decoding.filters import (
        NoRepeatNGram,
        RepetitionPenalty,
        build_filters,
        log_softmax,
    )
    from tinymm.decoding.inference import (
        Inference,
        KVCacheInference,
        RecomputeInference,
        check_decoder_layout,
        count_layers,
        cross_from_outputs,
        kv_names,
        make_inference,
    )
    from tinymm.decoding.options import DecodingOptions
    from tinymm.decoding.search import (
        Generation,
        Hypothesis,
        beam_search,
        generate,
        greedy_search,
    )
    from tinymm.decoding.whisper_filters import (
        ApplyTimestampRules,
        SuppressBlank,
        SuppressTokens,
        whisper_filters,
    )
    from tinymm.decoding.whisper_tokens import WhisperTokens

__all__ = [
    "ApplyTimestampRules",
    "CTCHypothesis",
    "DecodingOptions",
    "Generation",
    "Grammar",
    "GrammarDecoder",
    "GrammarGraph",
    "GrammarHypothesis",
    "GrammarTemplate",
    "Hypothesis",
    "Inference",
    "KVCacheInference",
    "Lexicon",
    "NoRepeatNGram",
    "RecomputeInference",
    "RepetitionPenalty",
    "SuppressBlank",
    "SuppressTokens",
    "WhisperTokens",
    "beam_search",
    "build_filters",
    "check_decoder_layout",
    "count_layers",
    "cross_from_outputs",
    "ctc_greedy_decode",
    "edit_distance",
    "generate",
    "greedy_search",
    "kv_names",
    "log_softmax",
    "make_inference",
    "whisper_filters",
]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
