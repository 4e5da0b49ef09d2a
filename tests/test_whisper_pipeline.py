"""Whisper end to end: a tiny random WhisperForConditionalGeneration (tests/tiny_whisper.py), exported by the
Whisper exporter (export/families/whisper.py) into a bundle, loaded with tinymm.load.

The reference is transformers' ``generate`` (GenerationMixin's greedy search, which
WhisperForConditionalGeneration.generate wraps with its own seek logic) fed the same features, the
same forced start sequence and transformers' own Whisper logit processors with the same suppress
lists; tinymm's tokens must be identical, with the KV cache and without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import tinymm
from tinymm.commands.bench import write_wav
from tinymm.decoding.whisper_task import TranscribeOptions
from tinymm.errors import InputError

pytestmark = pytest.mark.requires_torch

RATE = 16000
SAMPLES = Path(__file__).resolve().parent.parent / "tinymm" / "assets" / "samples"
CLIPS = (  # (kind, seconds, language: None is detected, timestamps)
    ("noise", 3.0, "en", False),
    ("tone", 5.0, "de", False),
    ("bursts", 10.0, "fr", True),
    ("chirp", 2.0, None, True),
)
OTHER_CACHE_CLIPS = (0, 3)  # without the KV cache, decoder_first runs over the whole text at each step: slow


def _clip(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    if kind == "noise":
        x = 0.1 * rng.standard_normal(t.size)
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    elif kind == "chirp":
        x = 0.4 * np.sin(2 * np.pi * (100.0 * t + 200.0 * t**2))
    else:  # bursts: syllable-like gated noise
        x = 0.3 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 3.0 * t + seed) > 0)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    pytest.importorskip("transformers", reason="the tiny Whisper checkpoint is a transformers model")
    pytest.importorskip("tokenizers", reason="the tiny Whisper tokenizer is built with tokenizers")
    from tiny_whisper import write_tiny_whisper_checkpoint

    from export.families import HFExportRequest
    from export.families.whisper import export

    root = tmp_path_factory.mktemp("whisper")
    vocab = write_tiny_whisper_checkpoint(root / "checkpoint")
    export(HFExportRequest(source=root / "checkpoint", out=root / "bundle", progress=False))
    return SimpleNamespace(bundle=root / "bundle", checkpoint=root / "checkpoint", vocab=vocab)


@pytest.fixture(scope="module")
def pipeline(whisper):
    loaded = tinymm.load(whisper.bundle)
    loaded.audio_context = "full"  # the transformers reference encodes the whole 30 s window
    return loaded


def _variant(pipeline, **kwargs):
    from tinymm.families.whisper import WhisperPipeline

    parts = dict(encoder=pipeline.decoder.encoder, decoder_first=pipeline.decoder.decoder_first,
                 decoder_with_past=pipeline.decoder.decoder_with_past, preprocessor=pipeline.preprocessor,
                 tokenizer=pipeline.tokenizer, model_info=pipeline.bundle.manifest.model)
    return WhisperPipeline(**{**parts, **kwargs})


@pytest.fixture(scope="module")
def variants(pipeline):
    """The same bundle decoded without decoder_with_past (decoder_first over the whole text at each step), and
    with the KV cache kept as OrtValues between steps (what GPU providers do; here in host memory)."""
    return {"kv-cache": pipeline, "no-cache": _variant(pipeline, decoder_with_past=None),
            "device-cache": _variant(pipeline, device_cache=True)}


@pytest.fixture(scope="module")
def reference(whisper, pipeline):
    """transformers' tokens and detected language for each clip of CLIPS."""
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration
    from transformers.generation import (
        GenerationMixin,
        LogitsProcessorList,
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is slower with two threads on a busy 2-core machine
    model = WhisperForConditionalGeneration.from_pretrained(str(whisper.checkpoint)).eval()
    tokens = pipeline.settings.tokens
    suppress = sorted({*pipeline.bundle.manifest.model["suppress_tokens"], *tokens.control_tokens})
    begin = [*pipeline.tokenizer.encode(" "), tokens.eot]
    out = []
    for i, (kind, seconds, language, timestamps) in enumerate(CLIPS):
        features = pipeline.preprocessor.features(_clip(kind, seconds, seed=i))[None]  # (1, 80, 3000)
        with torch.no_grad():
            if language is None:
                detected = int(model.detect_language(torch.from_numpy(features))[0])
                language = next(code for code, token in tokens.languages.items() if token == detected)
            start = list(tokens.sot_sequence(language, "transcribe", timestamps))
            processors = [SuppressTokensAtBeginLogitsProcessor(begin, len(start)), SuppressTokensLogitsProcessor(suppress)]
            if timestamps:
                config = GenerationConfig(eos_token_id=tokens.eot, no_timestamps_token_id=tokens.no_timestamps,
                                          max_initial_timestamp_index=tokens.max_initial_timestamp_index)
                processors.append(WhisperTimeStampLogitsProcessor(config, begin_index=len(start)))
            sequence = GenerationMixin.generate(
                model, torch.from_numpy(features), decoder_input_ids=torch.tensor([start]),
                logits_processor=LogitsProcessorList(processors), max_length=448, do_sample=False, num_beams=1,
                eos_token_id=tokens.eot, pad_token_id=tokens.eot, suppress_tokens=None, begin_suppress_tokens=None,
                forced_decoder_ids=None,
            )[0].tolist()[len(start):]
        while sequence and sequence[-1] == tokens.eot:
            sequence.pop()
        out.append(SimpleNamespace(features=features, language=language, tokens=sequence))
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("cache", ["kv-cache", "no-cache", "device-cache"])
def test_greedy_tokens_match_transformers_generate(pipeline, variants, reference, cache):
    runner = variants[cache]
    if cache == "device-cache":  # onnxruntime sessions keep OrtValues: the cache really stays in the session
        assert runner.decoder.device_cache and hasattr(runner.decoder.decoder_with_past, "run_ortvalues")
    for i, ((kind, seconds, language, timestamps), ref) in enumerate(zip(CLIPS, reference)):
        if cache != "kv-cache" and i not in OTHER_CACHE_CLIPS:
            continue
        options = TranscribeOptions(language=language, timestamps=timestamps)
        states = runner.decoder.encode(ref.features)
        (window,), _ = runner.decoder.decode(states, [language], options)
        assert window.language == ref.language, (kind, seconds)
        assert list(window.tokens) == ref.tokens, (kind, seconds, timestamps)
    # Long decodes of varied tokens, text and timestamps: not a trivial comparison.
    assert sum(len(r.tokens) for r in reference) > 1000 and all(len(set(r.tokens)) > 5 for r in reference)
    tokens = pipeline.settings.tokens
    assert any(t < tokens.eot for r in reference for t in r.tokens)
    assert any(tokens.is_timestamp(t) for (*_, stamped), r in zip(CLIPS, reference) if stamped for t in r.tokens)


def test_the_pipeline_transcribes_what_the_decoder_decodes(pipeline, reference):
    eot = pipeline.settings.tokens.eot
    for i, ((kind, seconds, language, timestamps), ref) in enumerate(zip(CLIPS, reference)):
        if timestamps:
            continue
        result = pipeline.transcribe(_clip(kind, seconds, seed=i), RATE, language=language)
        assert result.language == ref.language and result.windows == 1
        if result.text:  # not rejected as silent
            assert list(result.token_ids) == [t for t in ref.tokens if t < eot]
            assert result.text == pipeline.tokenizer.decode(result.token_ids).strip()
        assert 0.0 <= result.no_speech_prob <= 1.0 and 0.0 < result.confidence <= 1.0
        assert result.segments is None and result.duration_s == pytest.approx(seconds)


def test_a_batch_decodes_as_each_clip_alone(pipeline):
    clips = [_clip("noise", 2.0, seed=5), _clip("bursts", 7.0, seed=6), _clip("tone", 1.0)]
    together = pipeline.transcribe(clips, RATE)
    alone = [pipeline.transcribe(c, RATE) for c in clips]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.language for r in together] == [r.language for r in alone]
    assert together[0].timings.batch_size == 1  # a list is decoded clip by clip (int8 decoders are batch-dependent)
    batched = pipeline._transcribe([pipeline.preprocessor.waveform(c, RATE) for c in clips], RATE,
                                   pipeline._options(None, "transcribe", False, 1, None))
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]  # the batched rounds agree in fp32
    assert batched[0].timings.batch_size == 3


def test_beam_search_of_five(pipeline):
    clip = _clip("bursts", 6.0, seed=2)
    greedy = pipeline.transcribe(clip, RATE, language="en")
    beam = pipeline.transcribe(clip, RATE, language="en", beam_size=5)
    assert beam.windows == 1 and beam.language == "en" and math.isfinite(beam.confidence)
    assert len(beam.timings.decode_ms) >= 1
    stamped = pipeline.transcribe(clip, RATE, language="en", beam_size=5, timestamps=True)
    _check_segments(stamped.segments, 30.0)
    assert greedy.language == "en" and len(beam.token_ids) <= 448 - 4


def _check_segments(segments, limit_s: float) -> None:
    assert segments is not None
    previous_end = 0.0
    for segment in segments:
        assert 0.0 <= segment.start < segment.end <= limit_s + 1e-9
        assert segment.start >= previous_end - 1e-9  # in order, not overlapping
        assert segment.text and segment.text == segment.text.strip()
        previous_end = segment.end


def test_timestamps_give_well_formed_segments(pipeline, reference):
    for i, ((kind, seconds, language, timestamps), ref) in enumerate(zip(CLIPS, reference)):
        if not timestamps:
            continue
        result = pipeline.transcribe(_clip(kind, seconds, seed=i), RATE, language=language, timestamps=True)
        _check_segments(result.segments, 30.0)
        assert result.segments, "the reference decoded timestamp pairs; segments were expected"
        assert result.segments[0].start <= pipeline.settings.tokens.max_initial_timestamp
        assert result.to_dict()["segments"][0]["text"] == result.segments[0].text


def test_long_audio_is_decoded_in_windows(pipeline, caplog):
    audio = np.concatenate([_clip("bursts", 22.0, seed=s) for s in range(3)])  # 66 s
    with caplog.at_level("INFO", logger="tinymm.families.whisper"):
        plain = pipeline.transcribe(audio, RATE, language="en")
    assert plain.windows == 3 and plain.duration_s == pytest.approx(66.0)  # consecutive 30 s windows
    assert "decoded in 3 windows" in caplog.text
    stamped = pipeline.transcribe(audio, RATE, language="en", timestamps=True)
    assert stamped.windows >= 3
    _check_segments(stamped.segments, 66.0 + 30.0)
    assert stamped.segments and stamped.segments[-1].end > 30.0  # later windows are offset by their seek


def test_no_speech_probability_and_the_silence_rule(pipeline, monkeypatch):
    silence = np.zeros(RATE * 2, dtype=np.float32)
    result = pipeline.transcribe(silence, RATE, language="en")
    assert 0.0 <= result.no_speech_prob <= 1.0 and "no_speech_prob" in result.to_dict()
    decode = pipeline.decoder.decode

    def silent(states, languages, options):  # the model says "no speech" and is unsure of its text
        windows, times = decode(states, languages, options)
        return [dataclasses.replace(w, no_speech_prob=0.95, sum_logprob=-2.0 * (len(w.tokens) + 1))
                for w in windows], times

    monkeypatch.setattr(pipeline.decoder, "decode", silent)
    rejected = pipeline.transcribe(silence, RATE, language="en", timestamps=True)
    assert rejected.text == "" and rejected.token_ids == () and rejected.segments == ()
    assert rejected.no_speech_prob == pytest.approx(0.95) and rejected.windows == 1
    assert rejected.rejected and rejected.reject_reason == "no_speech"
    command = pipeline.command(silence, RATE, language="en")
    assert command.intent is None and command.rejected and command.reject_reason == "no_speech"
    heard = pipeline.transcribe(np.full(RATE, 0.1, dtype=np.float32), RATE, language="en")
    assert not heard.rejected or heard.text == ""  # a rejected clip never carries words


def test_command_parses_the_transcript(pipeline, monkeypatch):
    decode = pipeline.decoder.decode
    words = tuple(pipeline.tokenizer.encode(" Turn left."))

    def saying(states, languages, options):
        windows, times = decode(states, languages, options)
        return [dataclasses.replace(w, tokens=words, sum_logprob=-0.1) for w in windows], times

    monkeypatch.setattr(pipeline.decoder, "decode", saying)
    result = pipeline.command(_clip("noise", 1.0), RATE, language="en")
    assert result.text == "Turn left." and result.intent is not None
    assert result.intent.to_dict()["action"] == "turn"


def test_audio_context_clip_runs_the_encoder_on_fewer_frames(pipeline, monkeypatch):
    shapes = []
    run = pipeline.decoder.encoder.run

    def recording(feeds, names=None):
        shapes.append(next(iter(feeds.values())).shape)
        return run(feeds, names)

    monkeypatch.setattr(pipeline.decoder.encoder, "run", recording)
    clip = _clip("noise", 3.0)
    full = pipeline.transcribe(clip, RATE, language="en")
    short = pipeline.transcribe(clip, RATE, language="en", audio_context="clip")
    assert [s[2] for s in shapes] == [3000, 384]  # 300 frames of audio rounded up to 3 x 128
    assert short.windows == full.windows == 1


def test_bad_options_are_input_errors(pipeline):
    clip = _clip("noise", 1.0)
    with pytest.raises(InputError, match="not one of this checkpoint's languages"):
        pipeline.transcribe(clip, RATE, language="xx")
    with pytest.raises(InputError, match="task="):
        pipeline.transcribe(clip, RATE, task="summarize")
    with pytest.raises(InputError, match="beam_size="):
        pipeline.transcribe(clip, RATE, beam_size=0)
    with pytest.raises(InputError, match="empty list"):
        pipeline.transcribe([], RATE)


def test_cli_transcribe_takes_whisper_flags_and_prints_segments(whisper, tmp_path, capsys):
    from tinymm.cli import main

    clip = tmp_path / "clip.wav"
    write_wav(clip, _clip("bursts", 4.0, seed=3), RATE)
    code = main(["transcribe", str(clip), "--bundle", str(whisper.bundle), "--language", "de", "--timestamps",
                 "--beam-size", "2", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["ok"]
    (item,) = payload["results"]
    assert item["language"] == "de" and item["windows"] == 1 and "segments" in item and "no_speech_prob" in item
    assert main(["transcribe", str(clip), "--bundle", str(whisper.bundle), "--timestamps"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert all(line.startswith("  [") and "->" in line for line in printed[1:])
    assert main(["transcribe", str(clip), "--bundle", str(whisper.bundle), "--audio-context", "full"]) == 0
    capsys.readouterr()
    code = main(["transcribe", str(clip), "--bundle", str(whisper.bundle), "--audio-context", "clip:99"])
    assert code == 2 and "clip:S" in capsys.readouterr().err  # a usage error


def test_cli_refuses_whisper_flags_for_a_ctc_bundle(tmp_path, capsys):
    from tinymm.cli import main

    clip = tmp_path / "clip.wav"
    write_wav(clip, _clip("noise", 1.0), RATE)
    assert main(["transcribe", str(clip), "--language", "en"]) == 2  # the default speech bundle is CTC
    assert "does not take --language: only Whisper bundles do" in capsys.readouterr().err


def test_a_vad_rejects_clips_without_speech_before_decoding(pipeline, monkeypatch):
    from tinymm.pipelines.vad import load_vad

    guarded = _variant(pipeline, vad=load_vad())
    calls = []
    decode = guarded.decoder.decode
    monkeypatch.setattr(guarded.decoder, "decode", lambda *a: calls.append(1) or decode(*a))
    noise = np.random.default_rng(0).normal(0.0, 0.05, RATE * 2).astype(np.float32)
    rejected = guarded.transcribe(noise, RATE, language="en")
    assert rejected.rejected and rejected.reject_reason == "no_speech" and rejected.text == "" and not calls
    assert rejected.speech_ratio is not None and rejected.speech_ratio < 0.1
    command = guarded.command(noise, RATE, language="en")
    assert command.intent is None and command.rejected and command.reject_reason == "no_speech"
    speech = guarded.transcribe(str(SAMPLES / "audio" / "command-move.wav"), language="en")
    assert not speech.rejected and speech.speech_ratio > 0.3 and calls  # real speech reaches the decoder
