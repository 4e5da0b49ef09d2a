"""Silero VAD in the runtime and the rejection of what is not a command.

- the numpy/onnxruntime stream (recurrent state and 64-sample context) against the probabilities
  of silero's own ``OnnxWrapper.audio_forward`` (tests/data/silero_vad_reference.npz, written by
  ``python scripts/make_vad_bundle.py --reference ...`` from the silero-vad 6.2.3 wheel);
- the shipped bundle carries the MIT licence and is named by speech-commands (``model.vad``);
- ``transcribe`` / ``command`` on clips without speech: empty transcript, no intent, ``rejected``
  with ``reject_reason="no_speech"``; a command score under ``reject_threshold`` is
  ``low_confidence``; the fields reach ``--json``; the CLI flags; ``listen`` on steady noise.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tinymm.bundle.names import DEFAULT_BUNDLES_DIR
from tinymm.cli import main
from tinymm.commands.bench import write_wav
from tinymm.errors import EXIT_OK, EXIT_USAGE

VAD_BUNDLE = DEFAULT_BUNDLES_DIR / "silero-vad"
SPEECH_BUNDLE = DEFAULT_BUNDLES_DIR / "speech-commands"
SAMPLE = DEFAULT_BUNDLES_DIR.parent / "samples" / "audio" / "command-move.wav"
REFERENCE = Path(__file__).parent / "data" / "silero_vad_reference.npz"
RATE = 16000
INT16_FULL_SCALE = 32768

pytestmark = pytest.mark.skipif(
    not (VAD_BUNDLE / "manifest.json").is_file() or not (SPEECH_BUNDLE / "manifest.json").is_file(),
    reason="the default bundles are not built (python scripts/make_vad_bundle.py, scripts/make_default_bundles.py)",
)


@pytest.fixture(scope="module")
def vad():
    import tinymm

    return tinymm.load(VAD_BUNDLE)


@pytest.fixture(scope="module")
def speech():
    import tinymm

    return tinymm.load(SPEECH_BUNDLE, threads=1)


def _noise(seconds: float = 2.0, dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


# ---- the model and its state ------------------------------------------------------------------------


def test_probabilities_match_silero_reference(vad):
    from tinymm.preprocess.audio_io import load_audio

    reference = np.load(REFERENCE)
    names = [key[: -len(".audio")] for key in reference.files if key.endswith(".audio")]
    assert len(names) >= 4
    for name in names:
        audio = reference[f"{name}.audio"].astype(np.float32) / INT16_FULL_SCALE
        got = vad.speech_probs(audio)
        assert got.shape == reference[f"{name}.probs"].shape, name
        np.testing.assert_allclose(got, reference[f"{name}.probs"], atol=1e-5, err_msg=name)
    speech, rate = load_audio(str(SAMPLE))
    got = vad.speech_probs(speech.reshape(-1) if speech.ndim == 1 else speech[:, 0], rate)
    np.testing.assert_allclose(got, reference["command-move.probs"], atol=1e-5)
    assert got.max() > 0.9  # the reference holds real speech, not only noise


def test_stream_in_uneven_chunks_equals_the_whole_clip(vad):
    """The state and context carry over between calls: chunking must not change a probability."""
    reference = np.load(REFERENCE)
    audio = reference["buzz.audio"].astype(np.float32) / INT16_FULL_SCALE
    whole = vad.speech_probs(audio)
    stream, probs, start = vad.stream(), [], 0
    for size in (1, 511, 700, 64, 2000, 3333):
        probs.append(stream.accept(audio[start:start + size]))
        start += size
    probs += [stream.accept(audio[start:]), stream.flush()]
    np.testing.assert_allclose(np.concatenate(probs), whole, atol=1e-6)
    # A fresh stream starts from zero state: a restart gives the first window's value again.
    assert vad.stream().accept(audio[:512])[0] == pytest.approx(whole[0], abs=1e-6)


def test_the_bundle_carries_the_licence_and_speech_commands_names_it():
    from tinymm.bundle import read_bundle

    bundle = read_bundle(VAD_BUNDLE)
    assert bundle.manifest.architecture_name == "silero-vad"
    assert "LICENSE.silero" in bundle.manifest.files
    licence = (VAD_BUNDLE / "LICENSE.silero").read_text()
    assert "MIT License" in licence and "Silero Team" in licence
    assert "Silero VAD" in (Path(__file__).parent.parent / "NOTICE").read_text()
    assert read_bundle(SPEECH_BUNDLE, verify_checksums=False).manifest.model["vad"] == "silero-vad"


def test_a_missing_vad_bundle_is_a_bundle_error(monkeypatch):
    from tinymm.bundle.errors import BundleNotFoundError
    from tinymm.pipelines.vad import load_vad

    with pytest.raises(BundleNotFoundError, match="make_vad_bundle"):
        load_vad("no-such-vad")


# ---- rejection in the pipeline ------------------------------------------------------------------


def test_no_speech_is_rejected_with_an_empty_transcript(speech):
    clips = [_noise(dbfs=-10.0), _noise(dbfs=-45.0, seed=1), np.zeros(RATE, np.float32)]
    for result in speech.transcribe(clips, RATE):
        assert result.text == "" and result.token_ids == () and result.rejected and result.reject_reason == "no_speech"
    for result in speech.command(clips, RATE):
        assert result.intent is None and result.rejected and result.reject_reason == "no_speech"
        payload = result.to_dict()
        assert payload["rejected"] is True and payload["reject_reason"] == "no_speech" and payload["intent"] is None


def test_real_speech_is_kept_and_the_threshold_rejects_it_when_raised(speech):
    kept = speech.command(str(SAMPLE))
    assert not kept.rejected and kept.reject_reason is None and kept.intent is not None
    assert 0.0 < kept.score <= 1.0 and kept.score >= speech.reject_threshold
    assert kept.to_dict()["rejected"] is False and kept.to_dict()["score"] == pytest.approx(kept.score, abs=1e-6)
    strict = speech.command(str(SAMPLE), reject_threshold=1.0)
    assert strict.intent is None and strict.rejected and strict.reject_reason == "low_confidence"
    assert strict.text == kept.text  # the transcript stays: only the action is withheld
    with pytest.raises(ValueError, match="reject_threshold"):
        speech.command(str(SAMPLE), reject_threshold=1.5)


def test_a_speech_clip_in_a_batch_with_noise_is_still_decoded(speech):
    from tinymm.preprocess.audio_io import load_audio

    samples, rate = load_audio(str(SAMPLE))
    alone = speech.command(str(SAMPLE))
    noise, heard = speech.command([_noise(), samples.reshape(-1)], rate)
    assert noise.rejected and not heard.rejected and heard.text == alone.text


def test_command_score_discounts_the_grammar_gap():
    from tinymm.pipelines.speech import check_reject_threshold, command_score

    assert command_score(0.8, None) == pytest.approx(0.8)
    assert command_score(0.8, 0.0) == pytest.approx(0.8)
    assert command_score(0.8, 1.0) == pytest.approx(0.8 * np.exp(-1.0))
    assert command_score(0.8, -0.1) == pytest.approx(0.8)  # a free path worse than the grammar's costs nothing
    for bad in (-0.1, 1.1, True, "0.5"):
        with pytest.raises(ValueError):
            check_reject_threshold(bad)


# ---- CLI and listen ------------------------------------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cli_command_json_carries_the_rejection(tmp_path, capsys):
    noise = tmp_path / "noise.wav"
    write_wav(noise, _noise(), RATE)
    code, out = _run(capsys, "command", str(noise), "--json")
    payload = json.loads(out)
    assert code == EXIT_OK and payload["rejected"] is True and payload["reject_reason"] == "no_speech"
    assert payload["intent"] is None and payload["transcript"] == ""
    code, out = _run(capsys, "command", str(SAMPLE), "--reject-threshold", "1", "--json")
    payload = json.loads(out)
    assert payload["reject_reason"] == "low_confidence" and payload["intent"] is None
    code, out = _run(capsys, "command", str(SAMPLE), "--reject-threshold", "0")
    assert code == EXIT_OK and "rejected" not in out and "intent: {" in out
    code, out = _run(capsys, "command", str(noise))
    assert "intent: none (rejected: no_speech)" in out
    code, out = _run(capsys, "transcribe", str(noise), "--json")
    assert json.loads(out)["results"][0]["reject_reason"] == "no_speech"


def test_cli_refuses_a_threshold_outside_0_1(capsys):
    assert main(["command", str(SAMPLE), "--reject-threshold", "1.5"]) == EXIT_USAGE
    assert "0..1" in capsys.readouterr().err


def test_listen_emits_nothing_for_steady_noise_and_finds_the_command(tmp_path, capsys, speech):
    from tinymm.preprocess.audio_io import load_audio
    from tinymm.streams.audio import listen

    rng = np.random.default_rng(3)
    for dbfs in (-40.0, -20.0, -8.0):
        chunks = [c for c in np.array_split(_noise(6.0, dbfs, int(rng.integers(1000))), 60)]
        assert list(listen(speech, iter(chunks), RATE)) == []
    samples, rate = load_audio(str(SAMPLE))
    stream = np.concatenate([_noise(1.5, -40.0), samples.reshape(-1), _noise(1.5, -40.0, seed=1)])
    events = list(listen(speech, iter(np.array_split(stream, 40)), rate))
    assert len(events) == 1 and events[0]["intent"] == speech.command(str(SAMPLE)).intent.to_dict()
    assert 1.2 < events[0]["start_s"] < 1.8
    # Quiet padding for the energy detector, which counts -40 dBFS noise as speech (the score then rejects
    # the long cut: what the silero default avoids).
    quiet = np.concatenate([_noise(1.0, -70.0), samples.reshape(-1), _noise(1.0, -70.0, seed=1)])
    path = tmp_path / "stream.wav"
    write_wav(path, quiet, RATE)
    for detector in ("silero", "energy"):
        code, out = _run(capsys, "listen", str(path), "--vad", detector, "--json")
        lines = [json.loads(line) for line in out.splitlines()]
        assert code == EXIT_OK and len(lines) == 1 and lines[0]["rejected"] is False, detector


def test_listen_resamples_other_rates_for_the_vad_and_needs_one_for_silero(speech):
    from tinymm.errors import InputError
    from tinymm.preprocess.audio_io import load_audio, resample
    from tinymm.streams.audio import listen

    samples, rate = load_audio(str(SAMPLE))
    stream = resample(np.concatenate([np.zeros(RATE // 2, np.float32), samples.reshape(-1), np.zeros(RATE)]), rate, 44100)
    events = list(listen(speech, iter(np.array_split(stream, 30)), 44100))
    assert len(events) == 1 and events[0]["intent"] is not None and not events[0]["rejected"]
    vad, speech.vad = speech.vad, None
    try:
        with pytest.raises(InputError, match="energy"):
            list(listen(speech, iter([stream]), 44100, detector="silero"))
    finally:
        speech.vad = vad


def test_the_vad_bundle_is_refused_where_a_transcript_is_needed(capsys):
    from tinymm.errors import EXIT_BUNDLE

    for argv in (["transcribe", str(SAMPLE)], ["command", str(SAMPLE)], ["listen", str(SAMPLE)]):
        assert main([*argv, "--bundle", str(VAD_BUNDLE)]) == EXIT_BUNDLE
        assert "does not do" in capsys.readouterr().err


def test_a_rejected_spoken_question_says_so():
    from tinymm.pipelines.results import CommandResult, SpokenAnswerResult, TranscriptResult

    heard = TranscriptResult("", (), 0.0, 1.0, rejected=True, reject_reason="no_speech")
    payload = SpokenAnswerResult(CommandResult(heard, None, rejected=True, reject_reason="no_speech"), None).to_dict()
    assert payload["rejected"] is True and payload["reject_reason"] == "no_speech" and payload["answer"] is None
