"""Whisper decoding pieces: the encoder-states decoder layout (KV cache vs recompute), a search
started from prefilled logits, WhisperTokens, and the logit filters (hand-made cases in the null
tier; the timestamp rules against transformers' WhisperTimeStampLogitsProcessor with torch).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fake_sessions import FakeSession, TinyVLM

from tinymm.backends.base import TensorSpec
from tinymm.decoding import (
    DecodingOptions,
    KVCacheInference,
    RecomputeInference,
    beam_search,
    check_decoder_layout,
    count_layers,
    generate,
    greedy_search,
    kv_names,
    make_inference,
)
from tinymm.decoding.filters import apply_filters
from tinymm.decoding.whisper_filters import ApplyTimestampRules, SuppressBlank, SuppressTokens, whisper_filters
from tinymm.decoding.whisper_tokens import WhisperTokens
from tinymm.errors import BundleError, InputError

VOCAB, EOS = 14, 2
ENC_FRAMES, D_MODEL = 5, 6


class WhisperLayoutModel:
    """TinyVLM's decoder behind the encoder-states layout: decoder_first derives the cross K/V
    from the encoder's hidden states and returns them; decoder_with_past takes them."""

    def __init__(self, seed: int = 3) -> None:
        self.vlm = TinyVLM(VOCAB, eos_id=EOS, max_length=24, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.proj = rng.standard_normal((D_MODEL, self.vlm.heads * self.vlm.head_dim)).astype(np.float32)
        self.first_runs = 0

    def cross(self, states: np.ndarray) -> dict[str, np.ndarray]:
        m = self.vlm
        k = np.tanh(states @ self.proj).reshape(states.shape[0], ENC_FRAMES, m.heads, m.head_dim).transpose(0, 2, 1, 3)
        return {name: (k * (1 + i // 2) * (1 if i % 2 == 0 else -1)).astype(np.float32)
                for i, name in enumerate(kv_names("cross", m.layers))}

    def first(self, feeds: dict) -> dict:
        self.first_runs += 1
        cross = self.cross(feeds["encoder_hidden_states"])
        return {**self.vlm.decoder({"input_ids": feeds["input_ids"], **cross}), **cross}

    def sessions(self) -> tuple[FakeSession, FakeSession]:
        m = self.vlm
        specs = m.specs()
        ids = TensorSpec("input_ids", ("batch", "seq"), "int64")
        states = TensorSpec("encoder_hidden_states", ("batch", "enc_frames", D_MODEL), "float32")
        cross = tuple(m.kv_spec(n, "enc_frames") for n in kv_names("cross", m.layers))
        first = FakeSession((ids, states), (*specs["decoder_first"][1], *cross), self.first)
        past_inputs = (specs["decoder_with_past"][0][0], *specs["decoder_with_past"][0][1: 1 + 2 * m.layers], *cross)
        with_past = FakeSession(past_inputs, specs["decoder_with_past"][1], m.decoder)
        return first, with_past


def _states(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((batch, ENC_FRAMES, D_MODEL)).astype(np.float32)
    return {"encoder_hidden_states": x}


@pytest.fixture
def model() -> WhisperLayoutModel:
    return WhisperLayoutModel()


def test_the_layout_is_checked_and_layers_counted(model):
    first, with_past = model.sessions()
    assert count_layers(first) == count_layers(with_past) == model.vlm.layers
    check_decoder_layout(first, with_past, model.vlm.layers, "encoder-states")
    with pytest.raises(BundleError, match="'cross-in' decoder layout"):
        check_decoder_layout(first, with_past, model.vlm.layers)
    with pytest.raises(ValueError, match="decoder layout='nope'"):
        make_inference(first, with_past, _states(1), model.vlm.layers, layout="nope")


@pytest.mark.parametrize("beam_size", [1, 3])
def test_encoder_states_layout_kv_cache_equals_recompute(model, beam_size):
    first, with_past = model.sessions()
    prompts = np.array([[1, 6, 3], [1, 9, 8]], dtype=np.int64)
    options = DecodingOptions(beam_size=beam_size)
    cached = generate(make_inference(first, with_past, _states(2), model.vlm.layers, layout="encoder-states"),
                      prompts, eos_id=EOS, max_new_tokens=10, options=options)
    plain = generate(RecomputeInference(first, _states(2)), prompts, eos_id=EOS, max_new_tokens=10, options=options)
    for a, b in zip(cached.hypotheses, plain.hypotheses):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        np.testing.assert_allclose([h.sum_logprob for h in a], [h.sum_logprob for h in b], atol=1e-5)
    assert any(len(h.tokens) > 1 for h in cached.best)  # the comparison decoded something


def test_decoder_first_runs_once_and_its_cross_kv_feed_every_step(model):
    first, with_past = model.sessions()
    inference = KVCacheInference(first, with_past, _states(1), model.vlm.layers, layout="encoder-states")
    with pytest.raises(RuntimeError, match="before prefill"):
        inference.step(np.array([4]))
    inference.prefill(np.array([[1, 6]]))
    right = inference.step(np.array([4]))
    assert model.first_runs == 1
    other = KVCacheInference(first, with_past, _states(1, seed=9), model.vlm.layers, layout="encoder-states")
    other.prefill(np.array([[1, 6]]))
    assert not np.allclose(right, other.step(np.array([4])))  # the step used its own prefill's cross K/V


def test_search_from_prefilled_logits_equals_the_plain_search(model):
    first, with_past = model.sessions()
    prompts = np.array([[1, 6, 3], [1, 9, 8]], dtype=np.int64)

    def inference():
        return KVCacheInference(first, with_past, _states(2), model.vlm.layers, layout="encoder-states")

    for search, extra in ((greedy_search, {}), (beam_search, {"beam_size": 2})):
        plain = search(inference(), prompts, eos_id=EOS, max_new_tokens=8, **extra)
        manual = inference()  # the prompt's first token, then the rest forced one step at a time
        manual.prefill(prompts[:, :1])
        manual.step(prompts[:, 1])
        logits = manual.step(prompts[:, 2])
        started = search(manual, prompts, eos_id=EOS, max_new_tokens=8, prefilled=logits, **extra)
        assert [h.tokens for h in started.best] == [h.tokens for h in plain.best]
    with pytest.raises(ValueError, match="one row per prompt"):
        greedy_search(inference(), prompts, eos_id=EOS, max_new_tokens=2, prefilled=np.zeros((1, VOCAB)))


# ---- WhisperTokens and the filters ------------------------------------------------------------

# A miniature vocabulary laid out as Whisper's: text 0..9, eot 10, sot 11, <|en|> 12, <|de|> 13,
# translate 14, transcribe 15, startoflm 16, startofprev 17, nospeech 18, notimestamps 19,
# timestamps 20..29 (0.00 .. 0.18 s).
TEXT, EOT, SOT, BEGIN, V = 10, 10, 11, 20, 30
TOKENS = WhisperTokens(sot=SOT, eot=EOT, transcribe=15, translate=14, no_timestamps=19, timestamp_begin=BEGIN,
                       vocab_size=V, no_speech=18, sot_prev=17, sot_lm=16, languages={"en": 12, "de": 13},
                       time_precision=0.02, max_initial_timestamp=0.06)


class SpaceTokenizer:
    """Just enough of the Tokenizer protocol for SuppressBlank: " " is token 3."""

    def encode(self, text: str) -> list[int]:
        return [3] if text == " " else [5]


def test_sot_sequences():
    assert TOKENS.sot_sequence("de", "transcribe", timestamps=False) == (SOT, 13, 15, 19)
    assert TOKENS.sot_sequence("en", "translate", timestamps=True) == (SOT, 12, 14)
    with pytest.raises(InputError, match="not one of this checkpoint's languages"):
        TOKENS.sot_sequence("xx", "transcribe", timestamps=False)
    with pytest.raises(InputError, match="detect it"):
        TOKENS.sot_sequence(None, "transcribe", timestamps=False)
    with pytest.raises(InputError, match="task='summarize'"):
        TOKENS.sot_sequence("en", "summarize", timestamps=False)
    english = dataclasses.replace(TOKENS, languages={})
    assert english.sot_sequence(None, "transcribe", timestamps=False) == (SOT, 19)
    assert english.sot_sequence("en", "transcribe", timestamps=True) == (SOT,)
    with pytest.raises(InputError, match="English-only"):
        english.sot_sequence("de", "transcribe", timestamps=False)
    assert TOKENS.control_tokens == (11, 14, 15, 16, 17, 18)
    assert TOKENS.max_initial_timestamp_index == 3 and TOKENS.seconds(BEGIN + 7) == pytest.approx(0.14)


def test_tokens_are_validated():
    with pytest.raises(ValueError, match="below <|endoftext|>"):
        dataclasses.replace(TOKENS, sot=4)
    with pytest.raises(ValueError, match="not ids of the 30-token vocabulary"):
        dataclasses.replace(TOKENS, no_speech=30)
    with pytest.raises(ValueError, match="must come after every other special token"):
        dataclasses.replace(TOKENS, timestamp_begin=19, no_timestamps=20)


def test_from_model_info_names_missing_keys():
    class Tok:
        def token_to_id(self, token):
            return {"<|endoftext|>": EOT, "<|startoflm|>": 16}.get(token)

    info = {"sot_id": SOT, "eot_id": EOT, "transcribe_id": 15, "translate_id": 14, "no_timestamps_id": 19,
            "no_speech_id": 18, "sot_prev_id": 17, "timestamp_begin_id": BEGIN, "languages": {"en": 12, "de": 13},
            "time_precision": 0.02, "max_initial_timestamp": 0.06}
    assert WhisperTokens.from_model_info(info, Tok(), V) == TOKENS
    with pytest.raises(BundleError, match=r"lacks Whisper token id\(s\) \['sot_id'\]"):
        WhisperTokens.from_model_info({k: v for k, v in info.items() if k != "sot_id"}, Tok(), V)
    with pytest.raises(BundleError, match="do not match"):
        WhisperTokens.from_model_info({**info, "eot_id": 9, "timestamp_begin_id": BEGIN}, Tok(), V)


def test_suppress_blank_only_at_the_first_step_and_suppress_tokens_always():
    logits = np.zeros((2, V), dtype=np.float32)
    SuppressBlank(SpaceTokenizer(), EOT).apply(logits, [[], [5]])
    assert np.isneginf(logits[0, [3, EOT]]).all() and np.isfinite(logits[1]).all()
    assert np.isfinite(np.delete(logits[0], [3, EOT])).all()
    SuppressTokens([1, 7], V).apply(logits, [[], [5]])
    assert np.isneginf(logits[:, [1, 7]]).all()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SuppressTokens([V], V)


def _after(generated: list[int], logits: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((1, V), dtype=np.float32) if logits is None else logits.copy()
    ApplyTimestampRules(TOKENS).apply(out, [generated])
    return np.isfinite(out[0])


def test_the_first_token_is_an_early_timestamp():
    allowed = _after([])
    assert np.flatnonzero(allowed).tolist() == [20, 21, 22, 23]  # <|0.00|> .. max_initial_timestamp


def test_timestamps_come_in_pairs_and_never_go_back():
    # after <|0.04|> text: a text token or a later closing timestamp (text likely enough not to be forced out)
    text_wins = np.zeros((1, V), dtype=np.float32)
    text_wins[0, :EOT] = 5.0
    allowed = _after([BEGIN + 2, 4], text_wins)
    assert allowed[:EOT].all() and not allowed[BEGIN : BEGIN + 3].any() and allowed[BEGIN + 3 :].all()
    # after an open segment's end timestamp: eot or an equal/later timestamp, no text
    eot_likely = np.zeros((1, V), dtype=np.float32)
    eot_likely[0, EOT] = 5.0
    allowed = _after([BEGIN + 2, 4, BEGIN + 5], eot_likely)
    assert not allowed[:EOT].any() and allowed[EOT] and allowed[BEGIN + 5 :].all() and not allowed[BEGIN : BEGIN + 5].any()
    # after a closed pair: text (or eot); no timestamp
    allowed = _after([BEGIN + 2, 4, BEGIN + 5, BEGIN + 5], text_wins)
    assert allowed[:EOT].all() and not allowed[BEGIN:].any()
    assert not allowed[TOKENS.no_timestamps]


def test_timestamps_are_forced_when_their_total_probability_wins():
    logits = np.zeros((1, V), dtype=np.float32)
    logits[0, 4] = 1.0  # best single text token; the nine later timestamps at 0 beat it in total
    allowed = _after([BEGIN, 4], logits)
    assert not allowed[:BEGIN].any() and allowed[BEGIN + 1 :].all()
    logits[0, 4] = 4.0  # now the text token wins
    assert _after([BEGIN, 4], logits)[4]


def test_whisper_filters_assembly():
    plain = whisper_filters(TOKENS, SpaceTokenizer(), [1], timestamps=False)
    assert [type(f).__name__ for f in plain] == ["SuppressBlank", "SuppressTokens"]
    stamped = whisper_filters(TOKENS, SpaceTokenizer(), [1], timestamps=True)
    assert type(stamped[-1]) is ApplyTimestampRules
    out = apply_filters(plain, np.zeros((1, V), dtype=np.float32), [[4]], EOT)
    assert np.isneginf(out[0, [1, *TOKENS.control_tokens]]).all()


@pytest.mark.requires_torch
def test_timestamp_rules_match_transformers():
    import torch
    from transformers import GenerationConfig
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

    config = GenerationConfig(eos_token_id=EOT, no_timestamps_token_id=TOKENS.no_timestamps, max_initial_timestamp_index=3)
    prompt = [SOT, 12, 15]
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(300):
        length = int(rng.integers(0, 6))
        generated = sorted(rng.integers(BEGIN, V, size=length).tolist())  # increasing timestamps ...
        for i in range(length):  # ... with text in between
            if rng.random() < 0.5:
                generated[i] = int(rng.integers(0, EOT))
        logits = (rng.standard_normal((1, V)) * 3).astype(np.float32)
        ours = logits.copy()
        ApplyTimestampRules(TOKENS).apply(ours, [generated])
        processor = WhisperTimeStampLogitsProcessor(config, begin_index=len(prompt))
        theirs = processor(torch.tensor([prompt + generated]), torch.from_numpy(logits.copy())).numpy()
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs), err_msg=f"generated={generated}")
        np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)])
        checked += 1
    assert checked == 300


# ---- the task: options, silence rule, segments, results ---------------------------------------


def test_transcribe_options_are_checked_once():
    from tinymm.decoding.whisper_task import TranscribeOptions

    assert TranscribeOptions().audio_context == "full" and TranscribeOptions().beam_size == 1
    for bad, match in (({"task": "summarize"}, "task="), ({"beam_size": 0}, "beam_size="),
                       ({"audio_context": "half"}, "audio_context="), ({"language": ""}, "language="),
                       ({"no_speech_threshold": 1.5}, "no_speech_threshold="), ({"timestamps": "yes"}, "timestamps=")):
        with pytest.raises(ValueError, match=match):
            TranscribeOptions(**bad)


def test_context_frames_round_the_clip_up():
    from tinymm.decoding.whisper_task import AUDIO_CONTEXT_STEP_FRAMES, context_frames

    assert context_frames(300, "full", 3000) == 3000
    assert context_frames(300, "clip", 3000) == 3 * AUDIO_CONTEXT_STEP_FRAMES == 384
    assert context_frames(1, "clip", 3000) == AUDIO_CONTEXT_STEP_FRAMES
    assert context_frames(2999, "clip", 3000) == 3000


def test_context_frames_with_a_floor_and_bad_values():
    from tinymm.decoding.whisper_task import context_frames

    assert context_frames(160, "clip:10", 3000) == 1024  # 10 s = 1000 frames, rounded up to 8 x 128
    assert context_frames(1500, "clip:10", 3000) == 1536  # longer than the floor: the clip's own
    assert context_frames(160, "clip:30", 3000) == 3000
    assert context_frames(160, "clip:0", 3000) == context_frames(160, "clip", 3000)
    for bad in ("clip:x", "clip:-1", "clip:31", "half", "", None):
        with pytest.raises(ValueError, match="audio_context"):
            context_frames(160, bad, 3000)


def test_a_window_is_silent_by_whispers_rule():
    from tinymm.decoding.whisper_task import TranscribeOptions, WindowResult

    def window(no_speech: float | None, avg: float) -> WindowResult:
        return WindowResult(tokens=(1, 2, 3), sum_logprob=avg * 4, no_speech_prob=no_speech, language="en", finished=True)

    options = TranscribeOptions()
    assert window(0.9, -1.5).avg_logprob == pytest.approx(-1.5)
    assert window(0.9, -1.5).is_silent(options)
    assert not window(0.9, -0.5).is_silent(options)  # confident text is kept
    assert not window(0.5, -1.5).is_silent(options)  # speech is likely
    assert not window(None, -1.5).is_silent(options)
    assert not window(0.9, -1.5).is_silent(TranscribeOptions(no_speech_threshold=None))
    assert window(0.9, -0.5).is_silent(TranscribeOptions(logprob_threshold=None))


def test_split_window_cuts_segments_as_whisper_does():
    from tinymm.decoding.whisper_task import split_window

    tokens = dataclasses.replace(TOKENS, timestamp_begin=100, vocab_size=300)  # room for 10 s of timestamps

    def s(seconds: float) -> int:
        return tokens.timestamp_begin + round(seconds / tokens.time_precision)

    # Two complete segments then an unfinished one: the seek moves to the second's end (1.2 s = 120 frames).
    out = split_window([s(0.0), 4, 5, s(0.6), s(0.6), 6, s(1.2), s(1.2), 7, 8], tokens, 3000, 2)
    assert [(a, b, p) for a, b, p in out.segments] == [
        (0.0, 0.6, (s(0.0), 4, 5, s(0.6))), (0.6, 1.2, (s(0.6), 6, s(1.2)))]
    assert out.advance_frames == 120
    # Ending on a lone timestamp: no speech after it, the whole window is consumed.
    out = split_window([s(0.0), 4, s(0.5), s(0.5), 6, s(0.9)], tokens, 2500, 2)
    assert [(a, b) for a, b, _ in out.segments] == [(0.0, 0.5), (0.5, 0.9)] and out.advance_frames == 2500
    # No pair: one segment up to the last timestamp (or the window's end), the window consumed.
    out = split_window([s(0.0), 4, 5, s(0.7)], tokens, 1000, 2)
    assert [(a, b) for a, b, _ in out.segments] == [(0.0, pytest.approx(0.7))] and out.advance_frames == 1000
    out = split_window([4, 5], tokens, 1000, 2)
    assert [(a, b) for a, b, _ in out.segments] == [(0.0, pytest.approx(10.0))] and out.advance_frames == 1000


def test_transcript_results_keep_their_dict_and_add_whisper_fields():
    from tinymm.pipelines.results import Segment, TranscriptResult

    plain = TranscriptResult("turn left", (1, 2), 0.9, 1.0).to_dict()
    assert set(plain) == {"text", "raw_text", "in_grammar", "token_ids", "confidence", "duration_s", "rejected",
                          "reject_reason", "timings"}
    whisper = TranscriptResult("turn left", (1, 2), 0.9, 31.0, language="en", no_speech_prob=0.0123456789,
                               segments=(Segment(0.0, 1.23456, "turn left"),), windows=2).to_dict()
    assert whisper["language"] == "en" and whisper["no_speech_prob"] == 0.012346 and whisper["windows"] == 2
    assert whisper["segments"] == [{"start": 0.0, "end": 1.235, "text": "turn left"}]
    import json

    assert json.loads(json.dumps(whisper)) == whisper
