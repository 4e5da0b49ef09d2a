"""Decoding in the null tier: greedy and beam search, logit filters, KV cache vs recompute, CTC.

The decoder is tests/fake_sessions.TinyVLM in numpy, whose logits depend on the current token,
its position, every earlier token (through the cache) and the image; references are computed
here by running the model's decoder over the whole sequence at every step.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from fake_sessions import TinyVLM, vlm_sessions

from tinymm.decoding import (
    DecodingOptions,
    KVCacheInference,
    NoRepeatNGram,
    RecomputeInference,
    RepetitionPenalty,
    beam_search,
    check_decoder_layout,
    ctc_greedy_decode,
    generate,
    greedy_search,
    log_softmax,
)
from tinymm.decoding.filters import build_filters
from tinymm.errors import BundleError

VOCAB = 12
EOS = 2


def _cross(model: TinyVLM, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    pixels = np.random.default_rng(seed).standard_normal((batch, 3, model.image_size, model.image_size))
    out = model.image_encoder({"pixel_values": pixels.astype(np.float32)})
    return {k: v for k, v in out.items() if k.startswith("cross.")}


def _kv(model: TinyVLM, cross: dict[str, np.ndarray]) -> KVCacheInference:
    s = vlm_sessions(model)
    return KVCacheInference(s["decoder_first"], s["decoder_with_past"], cross, model.layers)


def _next_logprobs(model: TinyVLM, ids: np.ndarray, cross: dict[str, np.ndarray]) -> np.ndarray:
    """Reference: log-softmax of the last position, the decoder run over the whole sequence."""
    logits = model.decoder({"input_ids": ids, **cross})["logits"][:, -1].astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)


def _sequence_logprob(model: TinyVLM, prompt: np.ndarray, seq: tuple[int, ...], cross: dict[str, np.ndarray]) -> float:
    total = 0.0
    for t, token in enumerate(seq):
        ids = np.concatenate([prompt, np.asarray(seq[:t], dtype=np.int64)])[None]
        total += float(_next_logprobs(model, ids, cross)[0, token])
    return total


@pytest.fixture
def model() -> TinyVLM:
    return TinyVLM(VOCAB, eos_id=EOS, max_length=16, seed=3)


def test_greedy_follows_the_argmax_path(model):
    cross = _cross(model, 2)
    prompts = np.array([[1, 5, 7], [1, 4, 4]], dtype=np.int64)
    out = greedy_search(_kv(model, cross), prompts, eos_id=EOS, max_new_tokens=10)
    for row in range(2):
        ids, expected, logprob = prompts[row : row + 1], [], 0.0
        one_cross = {k: v[row : row + 1] for k, v in cross.items()}
        for _ in range(10):
            lp = _next_logprobs(model, ids, one_cross)[0]
            token = int(lp.argmax())
            logprob += lp[token]
            if token == EOS:
                break
            expected.append(token)
            ids = np.concatenate([ids, [[token]]], axis=1)
        hyp = out.best[row]
        assert list(hyp.tokens) == expected
        assert hyp.finished == (len(expected) < 10 or token == EOS)
        assert hyp.sum_logprob == pytest.approx(logprob, abs=1e-4)


def test_finished_rows_leave_the_batch_and_eos_stops(model):
    # A bigram model (logits = A[previous token]) where token 5 is followed by EOS, token 6 by 6.
    model.P[:] = 0
    model.W[:] = 0
    model.u[:] = 0
    model.A[:] = -5.0
    model.A[5, EOS] = 5.0
    model.A[6, 6] = 5.0
    s = vlm_sessions(model)
    inference = KVCacheInference(s["decoder_first"], s["decoder_with_past"], _cross(model, 2), model.layers)
    out = greedy_search(inference, np.array([[1, 5], [1, 6]]), eos_id=EOS, max_new_tokens=4)
    assert out.best[0].tokens == () and out.best[0].finished  # EOS first: nothing generated
    assert out.best[1].tokens == (6, 6, 6, 6) and not out.best[1].finished  # max_new_tokens stopped it
    assert s["decoder_with_past"].batch_sizes == [1, 1, 1]  # row 0 left after the prefill
    assert len(out.step_ms) == 3 and out.prefill_ms > 0


@pytest.mark.parametrize("penalty", [0.0, 1.0, 2.0])
def test_beam_of_one_is_greedy(model, penalty):
    cross = _cross(model, 3, seed=1)
    prompts = np.array([[1, 3], [1, 8], [1, 9]])
    filters = build_filters(DecodingOptions(repetition_penalty=1.3, no_repeat_ngram_size=2))
    greedy = greedy_search(_kv(model, cross), prompts, eos_id=EOS, max_new_tokens=8, filters=filters,
                           length_penalty=penalty)
    beam = beam_search(_kv(model, cross), prompts, eos_id=EOS, max_new_tokens=8, beam_size=1, filters=filters,
                       length_penalty=penalty)
    for g, b in zip(greedy.best, beam.best):
        assert b.tokens == g.tokens and b.finished == g.finished
        assert b.sum_logprob == pytest.approx(g.sum_logprob, abs=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5])
def test_wide_beam_finds_the_best_sequence_of_brute_force(length_penalty):
    model = TinyVLM(4, eos_id=EOS, max_length=12, seed=7)
    cross = _cross(model, 1, seed=2)
    prompt = np.array([1, 0], dtype=np.int64)
    max_new = 3
    others = [t for t in range(4) if t != EOS]
    # Every sequence a search can end with: up to max_new - 1 tokens then EOS, or max_new tokens.
    candidates = [(body, True) for n in range(max_new) for body in itertools.product(others, repeat=n)]
    candidates += [(body, False) for body in itertools.product(others, repeat=max_new)]

    def score(body: tuple[int, ...], finished: bool) -> float:
        seq = body + ((EOS,) if finished else ())
        return _sequence_logprob(model, prompt, seq, cross) / len(seq) ** length_penalty if seq else -math.inf

    best = max(candidates, key=lambda c: score(*c))
    out = beam_search(RecomputeInference(vlm_sessions(model)["decoder_first"], cross), prompt[None],
                      eos_id=EOS, max_new_tokens=max_new, beam_size=64, length_penalty=length_penalty)
    top = out.best[0]
    assert (top.tokens, top.finished) == best
    assert top.score == pytest.approx(score(*best), abs=1e-4)
    scores = [h.score for h in out.hypotheses[0]]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_escapes_the_greedy_trap(model):
    # Bigram: from 1, token 4 is likeliest but leads nowhere good; 5 is a bit less likely, then EOS.
    model.P[:] = 0
    model.W[:] = 0
    model.u[:] = 0
    model.A[:] = 0.0
    model.A[1, 4], model.A[1, 5] = 3.0, 2.6
    model.A[5, EOS] = 8.0
    cross = _cross(model, 1)
    greedy = greedy_search(_kv(model, cross), np.array([[1]]), eos_id=EOS, max_new_tokens=3)
    beam = beam_search(_kv(model, cross), np.array([[1]]), eos_id=EOS, max_new_tokens=3, beam_size=2,
                       length_penalty=0.0)
    assert greedy.best[0].tokens[0] == 4
    assert beam.best[0].tokens == (5,) and beam.best[0].finished
    assert beam.best[0].sum_logprob > greedy.best[0].sum_logprob


def test_kv_cache_and_recompute_give_identical_results(model):
    cross = _cross(model, 2, seed=4)
    prompts = np.array([[1, 6, 3, 9], [1, 2, 2, 8]])
    decoder = vlm_sessions(model)["decoder_first"]
    for options in (DecodingOptions(), DecodingOptions(beam_size=3), DecodingOptions(beam_size=2, repetition_penalty=1.5)):
        cached = generate(_kv(model, cross), prompts, eos_id=EOS, max_new_tokens=9, options=options)
        plain = generate(RecomputeInference(decoder, cross), prompts, eos_id=EOS, max_new_tokens=9, options=options)
        for a, b in zip(cached.hypotheses, plain.hypotheses):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            np.testing.assert_allclose([h.sum_logprob for h in a], [h.sum_logprob for h in b], atol=1e-5)


def test_a_wrong_cache_changes_the_logits(model):
    # The check above could pass if the cache did not matter: show that it does.
    cross = _cross(model, 1)
    inference = _kv(model, cross)
    inference.prefill(np.array([[1, 6, 3]]))
    right = inference.step(np.array([4]))
    inference.prefill(np.array([[1, 7, 3]]))
    wrong = inference.step(np.array([4]))
    assert not np.allclose(right, wrong)


def test_repetition_penalty_follows_ctrl():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]], dtype=np.float32)
    RepetitionPenalty(2.0).apply(logits, [[0, 1, 1]])
    np.testing.assert_allclose(logits, [[1.0, -2.0, 0.5, 3.0]])


def test_repetition_penalty_changes_the_choice(model):
    # Bigram: after 6 the best is 6 again (logit 2), then 7 (logit 1.5). A penalty of 2 halves 6's
    # logit to 1 once 6 was generated, so 7 wins; with no penalty 6 repeats.
    model.P[:] = 0
    model.W[:] = 0
    model.u[:] = 0
    model.A[:] = -3.0
    model.A[1, 6] = 4.0
    model.A[6, 6], model.A[6, 7] = 2.0, 1.5
    model.A[7, EOS] = 4.0
    cross = _cross(model, 1)
    plain = generate(_kv(model, cross), np.array([[1]]), eos_id=EOS, max_new_tokens=4, options=DecodingOptions())
    penalised = generate(_kv(model, cross), np.array([[1]]), eos_id=EOS, max_new_tokens=4,
                         options=DecodingOptions(repetition_penalty=2.0))
    assert plain.best[0].tokens == (6, 6, 6, 6)
    assert penalised.best[0].tokens == (6, 7) and penalised.best[0].finished


def test_no_repeat_ngram():
    f = NoRepeatNGram(2)
    assert f.banned([5, 6, 5]) == {6}  # "5 6" happened: 6 may not follow 5 again
    assert f.banned([5, 6, 7]) == set()
    assert NoRepeatNGram(1).banned([3, 4, 3]) == {3, 4}
    logits = np.zeros((2, 8), dtype=np.float32)
    f.apply(logits, [[5, 6, 5], []])
    assert np.isneginf(logits[0, 6]) and np.isfinite(logits[1]).all()


def test_no_token_repeats_with_a_unigram_ban(model):
    out = generate(_kv(model, _cross(model, 2)), np.array([[1, 3], [1, 4]]), eos_id=EOS, max_new_tokens=8,
                   options=DecodingOptions(no_repeat_ngram_size=1, beam_size=2))
    for hyp in out.best:
        assert len(set(hyp.tokens)) == len(hyp.tokens)


def test_log_softmax_keeps_banned_tokens_banned():
    out = log_softmax(np.array([[0.0, -np.inf, 1.0]], dtype=np.float32))
    assert np.isneginf(out[0, 1]) and np.exp(out[0, [0, 2]]).sum() == pytest.approx(1.0)


def test_ctc_best_path():
    blank, vocab = 0, 5
    path = [0, 3, 3, 0, 3, 4, 4, 0, 0, 1]  # -> 3, 3, 4 (then padding frames the length excludes)
    logp = np.full((1, len(path), vocab), math.log(0.05), dtype=np.float32)
    logp[0, np.arange(len(path)), path] = math.log(0.8)
    (hyp,) = ctc_greedy_decode(logp, np.array([8]), blank)
    assert hyp.tokens == (3, 3, 4) and hyp.frames == (1, 4, 5) and hyp.num_frames == 8
    assert hyp.confidence == pytest.approx(0.8, rel=1e-5)
    (empty,) = ctc_greedy_decode(logp, np.array([0]), blank)
    assert empty.tokens == () and empty.confidence == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"beam_size": 0}, {"beam_size": 65}, {"max_new_tokens": 0}, {"repetition_penalty": 0.0},
     {"no_repeat_ngram_size": -1}, {"length_penalty": float("nan")}, {"beam_size": True}],
)
def test_decoding_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        DecodingOptions(**kwargs)


def test_decoder_layout_is_checked(model):
    s = vlm_sessions(model)
    check_decoder_layout(s["decoder_first"], s["decoder_with_past"], model.layers)
    with pytest.raises(BundleError, match=r"decoder_first .*cross\.2\.key"):
        check_decoder_layout(s["decoder_first"], s["decoder_with_past"], model.layers + 1)
    with pytest.raises(BundleError, match=r"decoder_with_past .*past_key_values\.0\.key"):
        check_decoder_layout(s["decoder_first"], s["decoder_first"], model.layers)


def test_device_cache_with_ortvalues_matches_numpy(model, tmp_path):
    pytest.importorskip("onnx", reason="building the ONNX decoder needs the onnx package (pip install 'tinymm[dev]')")
    from fake_sessions import vlm_onnx

    from tinymm.backends import BackendOptions, get_backend

    paths = vlm_onnx(model, tmp_path)
    backend = get_backend("onnxruntime")
    first, with_past = (backend.load(paths[n], BackendOptions(provider="cpu")) for n in ("decoder_first", "decoder_with_past"))
    cross = _cross(model, 2, seed=5)
    prompts = np.array([[1, 6, 3], [1, 9, 3]])
    options = DecodingOptions(beam_size=2)
    on_device = KVCacheInference(first, with_past, cross, model.layers, device_cache=True)
    assert on_device.on_device
    ort_out = generate(on_device, prompts, eos_id=EOS, max_new_tokens=8, options=options)
    numpy_out = generate(_kv(model, cross), prompts, eos_id=EOS, max_new_tokens=8, options=options)
    assert [h.tokens for h in ort_out.best] == [h.tokens for h in numpy_out.best]
