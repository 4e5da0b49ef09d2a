"""The pipelines end to end: fake sessions injected (null tier), real ONNX bundles through
``tinymm.load``, and bundles exported from tiny torch models (``requires_torch``).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import (
    COMMAND_SENTENCES,
    SCENE_SENTENCES,
    VLM_TEMPLATES,
    ScriptedSpeechEncoder,
    TinyVLM,
    train_sentencepiece,
    vlm_sessions,
)

import tinymm
import tinymm.pipelines.loading
from tinymm.decoding import (
    DecodingOptions,
    KVCacheInference,
    cross_from_outputs,
    greedy_search,
)
from tinymm.errors import BundleError, InputError
from tinymm.pipelines import (
    SpeechPipeline,
    SpokenQuestionPipeline,
    VisionLanguagePipeline,
)
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig, ImageConfig, TextConfig
from tinymm.preprocess.image import ImagePreprocessor
from tinymm.preprocess.text import Tokenizer
from tinymm.robot.intent import Intent

CONTEXT = 48  # decoder tokens, prompt included
LABELS = ("a red circle", "a blue square", "a yellow star", "two green triangles")
RATE = 16000
N_MELS = 16


@pytest.fixture(scope="module")
def vlm_tokenizer(tmp_path_factory) -> Tokenizer:
    path = train_sentencepiece(tmp_path_factory.mktemp("vlm") / "tokenizer.model", SCENE_SENTENCES * 4, 60)
    return Tokenizer(path, TextConfig(tokenizer="tokenizer.model", context_length=CONTEXT, prompt_templates=VLM_TEMPLATES))


@pytest.fixture(scope="module")
def tiny(vlm_tokenizer) -> TinyVLM:
    return TinyVLM(vlm_tokenizer.vocab_size, max_length=CONTEXT, seed=1)


def _vlm(tiny: TinyVLM, tokenizer: Tokenizer, **overrides) -> VisionLanguagePipeline:
    s = vlm_sessions(tiny)
    kwargs = {"image_encoder": s["image_encoder"], "decoder_first": s["decoder_first"],
              "decoder_with_past": s["decoder_with_past"], "text_encoder": s["text_encoder"],
              "preprocessor": ImagePreprocessor(ImageConfig(tiny.image_size, tiny.image_size)), "tokenizer": tokenizer,
              "model_info": tiny.model_info(LABELS)}
    kwargs.update(overrides)
    return VisionLanguagePipeline(**kwargs)


@pytest.fixture
def vlm(tiny, vlm_tokenizer) -> VisionLanguagePipeline:
    return _vlm(tiny, vlm_tokenizer)


def _image(seed: int) -> np.ndarray:
    """A (30, 40, 3) uint8 frame of one random color with noise: images differ in their mean color."""
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 256, 3)
    return np.clip(color + rng.normal(0, 20, (30, 40, 3)), 0, 255).astype(np.uint8)


# ---- vision-language, fake sessions ------------------------------------------------------------


def test_caption_is_the_greedy_decoding_of_the_image(vlm, tiny, vlm_tokenizer):
    image = _image(0)
    result = vlm.caption(image)
    pixels = vlm.preprocessor(image)
    cross = cross_from_outputs(tiny.image_encoder({"pixel_values": pixels}), tiny.layers)
    prompt = vlm_tokenizer.encode_prompt("caption", max_new_tokens=8)[None]
    s = vlm_sessions(tiny)
    expected = greedy_search(KVCacheInference(s["decoder_first"], s["decoder_with_past"], cross, tiny.layers), prompt,
                             eos_id=tiny.eos_id, max_new_tokens=8).best[0]
    assert result.token_ids == expected.tokens
    assert result.text == vlm_tokenizer.decode(list(expected.tokens))
    t = result.timings
    assert t.preprocess_ms > 0 and t.encode_ms > 0 and t.prefill_ms > 0
    assert len(t.decode_ms) == expected.length - 1  # one decoder step per token after the first
    assert set(result.to_dict()) == {"text", "token_ids", "confidence", "finished", "rejected", "reject_reason", "timings"}


def test_a_batch_gives_the_captions_of_each_image(vlm):
    images = [_image(1), _image(2), _image(3)]
    batch = vlm.caption(images, decoding=DecodingOptions(beam_size=2))
    one_by_one = [vlm.caption(image, decoding=DecodingOptions(beam_size=2)) for image in images]
    assert [r.token_ids for r in batch] == [r.token_ids for r in one_by_one]
    assert batch[0].timings.batch_size == 3
    assert len({r.token_ids for r in batch}) > 1  # the images really differ


def test_questions_of_different_lengths_in_one_batch(vlm):
    images = [_image(4), _image(5)]
    questions = ["what color is the star", "how many circles are there on the left"]
    batch = vlm.ask(images, questions)
    alone = [vlm.ask(image, q) for image, q in zip(images, questions)]
    assert [(r.question, r.token_ids) for r in batch] == [(r.question, r.token_ids) for r in alone]
    with pytest.raises(InputError, match="2 questions for 1 images"):
        vlm.ask(images[:1], questions)
    with pytest.raises(InputError, match="empty"):
        vlm.ask(images[0], "  ")


def test_decoding_without_decoder_with_past_gives_the_same_caption(tiny, vlm_tokenizer, vlm):
    no_cache = _vlm(tiny, vlm_tokenizer, decoder_with_past=None)
    image = _image(6)
    assert no_cache.caption(image).token_ids == vlm.caption(image).token_ids


def test_max_new_tokens_caps_the_caption(vlm):
    result = vlm.caption(_image(7), decoding=DecodingOptions(max_new_tokens=2))
    assert len(result.token_ids) <= 2
    assert result.timings.decode_ms == () or len(result.timings.decode_ms) <= 1


def test_classify_ranks_labels_by_cosine(vlm, tiny):
    image = _image(8)
    result = vlm.classify(image, top_k=len(LABELS))
    image_embedding = vlm.embed_image(image)  # (1, E)
    text_embedding = vlm.embed_text(list(LABELS))  # (L, E)
    cosine = (image_embedding @ text_embedding.T)[0]
    assert list(result.labels) == [LABELS[i] for i in np.argsort(-cosine, kind="stable")]
    np.testing.assert_allclose(result.scores, np.sort(cosine)[::-1], atol=1e-6)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert result.label == result.labels[0] and len(vlm.classify(image, top_k=2).labels) == 2
    custom = vlm.classify([image, _image(9)], ["a red circle", "a blue square"])
    assert len(custom) == 2 and set(custom[0].labels) == {"a red circle", "a blue square"}


def test_embeddings_are_normalised(vlm):
    images = vlm.embed_image([_image(1), _image(2)])
    texts = vlm.embed_text(["a red circle", "a blue square", "red"])
    assert images.shape == (2, 8) and texts.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_bad_labels_are_input_errors(vlm, tiny, vlm_tokenizer):
    with pytest.raises(InputError, match="empty label list"):
        vlm.classify(_image(0), [])
    with pytest.raises(InputError, match="more than once"):
        vlm.classify(_image(0), ["red", "red"])
    with pytest.raises(InputError, match="empty"):
        vlm.classify(_image(0), ["red", " "])
    no_labels = _vlm(tiny, vlm_tokenizer, model_info=tiny.model_info(()))
    with pytest.raises(InputError, match="ships no label set"):
        no_labels.classify(_image(0))
    no_text = _vlm(tiny, vlm_tokenizer, text_encoder=None)
    with pytest.raises(BundleError, match="no text_encoder"):
        no_text.classify(_image(0), ["red"])


def test_a_corrupt_image_is_an_input_error(vlm):
    with pytest.raises(InputError):
        vlm.caption(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="empty batch"):
        vlm.caption([])


def test_manifest_model_object_is_checked(tiny, vlm_tokenizer):
    with pytest.raises(BundleError, match="num_layers"):
        _vlm(tiny, vlm_tokenizer, model_info={**tiny.model_info(), "num_layers": tiny.layers + 1})
    with pytest.raises(BundleError, match="labels"):
        _vlm(tiny, vlm_tokenizer, model_info={**tiny.model_info(), "labels": ["ok", ""]})
    with pytest.raises(BundleError, match="max_new_tokens"):
        _vlm(tiny, vlm_tokenizer, model_info={**tiny.model_info(), "max_new_tokens": 0})


# ---- speech, scripted encoder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_tokenizer(tmp_path_factory) -> Tokenizer:
    path = train_sentencepiece(tmp_path_factory.mktemp("speech") / "speech.model", COMMAND_SENTENCES * 4, 40)
    return Tokenizer(path, TextConfig(tokenizer="speech.model", context_length=256, add_bos=False))


def _path(tokenizer: Tokenizer, text: str) -> list[int]:
    """A CTC label path saying ``text``: each token followed by a blank (so repeats survive)."""
    return [x for token in tokenizer.encode(text) for x in (token, 0)]


def _speech(tokenizer: Tokenizer, *sentences: str, max_frames: int | None = None) -> SpeechPipeline:
    encoder = ScriptedSpeechEncoder([_path(tokenizer, s) for s in sentences], tokenizer.vocab_size, N_MELS)
    info = {"blank_id": 0, "max_frames": max_frames} if max_frames else {"blank_id": 0}
    return SpeechPipeline(encoder=encoder, preprocessor=AudioPreprocessor(AudioConfig(n_mels=N_MELS, max_seconds=10.0)),
                          tokenizer=tokenizer, model_info=info)


def _noise(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def _wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_transcribe_and_command(speech_tokenizer):
    speech = _speech(speech_tokenizer, "turn left", "go forward three meters")
    results = speech.transcribe([_noise(1.0), _wav_bytes(_noise(1.2, seed=1))], sample_rate=RATE)
    assert [r.text for r in results] == ["turn left", "go forward three meters"]
    assert results[0].duration_s == pytest.approx(1.0) and 0 < results[0].confidence <= 1
    assert results[0].timings.encode_ms > 0 and results[0].timings.batch_size == 2
    command = _speech(speech_tokenizer, "go forward three meters").command(_noise(0.8, rate=8000), sample_rate=8000)
    assert command.intent == Intent(action="move", direction="forward", distance_m=3)
    assert command.to_dict()["intent"] == {"action": "move", "direction": "forward", "distance_m": 3}
    assert _speech(speech_tokenizer, "stop moving please").command(_noise(0.5), RATE).intent == Intent(action="stop")


def test_the_bundle_lexicon_corrects_misspelt_words(speech_tokenizer):
    encoder = ScriptedSpeechEncoder([_path(speech_tokenizer, "turn lefft")] * 2, speech_tokenizer.vocab_size, N_MELS)
    speech = SpeechPipeline(encoder=encoder, preprocessor=AudioPreprocessor(AudioConfig(n_mels=N_MELS, max_seconds=10.0)),
                            tokenizer=speech_tokenizer, model_info={"blank_id": 0, "lexicon": ["turn", "left", "right"]})
    result = speech.transcribe(_noise(0.5), sample_rate=RATE)
    assert (result.text, result.raw_text) == ("turn left", "turn lefft")
    assert result.to_dict()["raw_text"] == "turn lefft"
    speech.use_lexicon = False
    assert speech.transcribe(_noise(0.5), sample_rate=RATE).text == "turn lefft"


def test_words_outside_the_grammar_give_no_intent(speech_tokenizer):
    result = _speech(speech_tokenizer, "red blue triangle").command(_noise(0.5), RATE)
    assert result.intent is None and result.to_dict()["intent"] is None


def test_bad_audio_is_an_input_error(speech_tokenizer):
    speech = _speech(speech_tokenizer, "stop")
    with pytest.raises(InputError, match="empty"):
        speech.transcribe(b"")
    with pytest.raises(InputError):
        speech.transcribe(np.zeros(0, np.float32), sample_rate=RATE)
    with pytest.raises(InputError, match="clip 1 of the batch"):
        speech.transcribe([_noise(0.3), b"RIFF...."], sample_rate=RATE)
    with pytest.raises(InputError, match="at most"):
        _speech(speech_tokenizer, "stop", max_frames=50).transcribe(_noise(1.0), sample_rate=RATE)


def test_spoken_question_is_answered(vlm, speech_tokenizer):
    image = _image(3)
    question = _speech(speech_tokenizer, "what color is the star")
    result = SpokenQuestionPipeline(vlm, question).ask(image, _noise(1.0), sample_rate=RATE)
    assert result.question == "what color is the star?"
    assert result.answer.token_ids == vlm.ask(image, "what color is the star?").token_ids
    out = result.to_dict()
    assert out["intent"]["action"] == "question" and out["timings"]["vision"]["total_ms"] > 0
    command = SpokenQuestionPipeline(vlm, _speech(speech_tokenizer, "turn left")).ask(image, _noise(1.0), sample_rate=RATE)
    assert command.answer is None and command.command.intent == Intent(action="turn", direction="left")
    assert command.to_dict()["answer"] is None


# ---- import cost ----------------------------------------------------------------------------------


def _imported_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_tinymm_load_is_resolved_lazily():
    heavy = {"numpy", "cv2", "onnxruntime", "sentencepiece", "soxr", "torch"}
    assert not _imported_after("import tinymm; assert 'load' in tinymm.__all__") & heavy
    assert "onnxruntime" not in _imported_after("import tinymm; tinymm.load")
    assert tinymm.load is tinymm.pipelines.loading.load
    runtime = "import tinymm.pipelines, tinymm.decoding, tinymm.streams, tinymm.pipelines.vision_language, " \
              "tinymm.pipelines.spoken_question, tinymm.streams.video"
    assert not _imported_after(runtime) & {"torch", "train", "export"}


def test_the_speech_pipeline_imports_the_robot_domain_only_when_asked(speech_tokenizer):
    code = ("import sys, tinymm.pipelines.speech, tinymm.families.tinymm_ctc, tinymm.pipelines.spoken_question; "
            "print(sorted(m for m in sys.modules if m.startswith('tinymm.robot')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    speech = _speech(speech_tokenizer, "turn left")
    assert speech.grammar_decoder is None and speech._intent_parser is None  # no model.grammar, no command yet
    assert speech.command(_noise(0.5), RATE).intent == Intent(action="turn", direction="left")
    assert speech._intent_parser is not None


# ---- real ONNX bundles through tinymm.load -----------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny, vlm_tokenizer, speech_tokenizer) -> dict[str, Path]:
    pytest.importorskip("onnx", reason="writing the test bundles needs the onnx package (pip install 'tinymm[dev]')")
    from fake_sessions import write_speech_bundle, write_vlm_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {
        "vlm": write_vlm_bundle(root / "vlm", tiny, vlm_tokenizer.model_path, labels=LABELS, int8=True),
        "speech": write_speech_bundle(root / "speech", speech_tokenizer.model_path, speech_tokenizer.vocab_size,
                                      n_mels=N_MELS),
    }


def test_load_gives_the_pipeline_of_the_family(bundles, vlm):
    loaded = tinymm.load(bundles["vlm"], threads=1)
    assert isinstance(loaded, VisionLanguagePipeline) and loaded.name == "tiny-vlm"
    assert loaded.image_encoder.model_path.name == "image_encoder.int8.onnx"  # auto: int8 on the CPU
    images = [_image(10), _image(11)]
    assert [r.token_ids for r in loaded.caption(images)] == [r.token_ids for r in vlm.caption(images)]
    assert loaded.classify(images[0]).labels == vlm.classify(images[0]).labels
    fp32 = tinymm.load(str(bundles["vlm"]), precision="fp32", verify_checksums=False)
    assert fp32.decoder_first.model_path.name == "decoder_first.onnx"
    speech = tinymm.load(bundles["speech"])
    assert isinstance(speech, SpeechPipeline) and isinstance(speech.transcribe(_noise(0.5), RATE).text, str)


def test_load_from_an_archive(bundles, tmp_path):
    from tinymm.bundle import pack_bundle

    archive = pack_bundle(bundles["speech"], tmp_path / "speech.tar.gz")
    assert isinstance(tinymm.load(archive), SpeechPipeline)


def test_load_errors(bundles, tmp_path, monkeypatch):
    monkeypatch.setattr("tinymm.bundle.names.DEFAULT_BUNDLES_DIR", tmp_path / "no-defaults")
    with pytest.raises(BundleError, match="none in .*make_default_bundles.py"):
        tinymm.load("scene-vlm")
    with pytest.raises(BundleError, match="neither an existing path nor a default bundle"):
        tinymm.load("no-such-name")
    with pytest.raises(BundleError, match="does not exist"):
        tinymm.load("no/such/bundle")
    with pytest.raises(BundleError, match="no fp16 variant of any component"):
        tinymm.load(bundles["vlm"], precision="fp16")
    with pytest.raises(BundleError, match="speech bundle, but a vision-language bundle is needed"):
        tinymm.load(bundles["speech"], family="vision-language")
    with pytest.raises(ValueError, match="precision"):
        tinymm.load(bundles["vlm"], precision="int4")


# ---- bundles exported from tiny torch models (python -m export) ----------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch", reason="exporting needs torch (pip install 'tinymm[train]')")
    from export.__main__ import main as export_main
    from train.checkpoint import save_checkpoint
    from train.data.scene_dataset import generate_example
    from train.data.scene_language import all_labels
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig
    from train.models import (
        SpeechConfig,
        SpeechCTCModel,
        VisionLanguageModel,
        VLMConfig,
    )
    from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer
    from train.vlm_tokenizer import scene_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(8)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=24)
    torch.manual_seed(0)
    vlm = VisionLanguageModel(VLMConfig.tiny())
    save_checkpoint(root / "vlm" / "final", vlm, vlm.config, step=1)
    train_speech_tokenizer(list(COMMAND_SENTENCES), root / "speech" / "tokenizer" / "speech.model",
                           SpeechTokenizerConfig(vocab_size=12, model_type="char"))
    speech = SpeechCTCModel(SpeechConfig.tiny())
    save_checkpoint(root / "speech" / "final", speech, speech.config, step=1)
    try:
        for name in ("vlm", "speech"):
            code = export_main([str(root / name / "final"), "--out", str(root / "bundles" / name), "--threads", "1",
                                "--no-progress", "--golden-batch", "1"])
            assert code == 0, f"python -m export failed for the {name} checkpoint"
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "vlm_model": vlm, "speech_model": speech, **{n: root / "bundles" / n for n in ("vlm", "speech")}}


@pytest.mark.requires_torch
@pytest.mark.filterwarnings("ignore::tinymm.preprocess.text.TruncationWarning")  # long labels, 24-token context
def test_exported_vlm_captions_like_torch(exported):
    import torch

    from train.vlm_tokenizer import load_tokenizer

    pipeline = tinymm.load(exported["vlm"])
    model = exported["vlm_model"].eval()
    image = _image(12)
    result = pipeline.caption(image)
    pixels = torch.from_numpy(pipeline.preprocessor(image))
    tokenizer = load_tokenizer(exported["root"] / "vlm", model.config.max_text_len)
    prompt = torch.from_numpy(tokenizer.encode_prompt("caption", max_new_tokens=pipeline.settings.max_new_tokens))[None]
    room = min(pipeline.settings.max_new_tokens, model.config.max_text_len - prompt.shape[1])
    expected = model.generate(pixels, prompt, room, tokenizer.config.eos_id)[0].tolist()
    if tokenizer.config.eos_id in expected:
        expected = expected[: expected.index(tokenizer.config.eos_id)]
    assert list(result.token_ids) == expected
    assert len(pipeline.classify(image).labels) == 5  # the scene label set travels in the bundle


@pytest.mark.requires_torch
def test_exported_speech_transcribes_like_torch(exported):
    import torch

    pipeline = tinymm.load(exported["speech"])
    clip = _noise(1.5, seed=3)
    result = pipeline.transcribe(clip, sample_rate=RATE)
    features = pipeline.preprocessor.features(clip)[None]  # (1, n_mels, frames)
    with torch.no_grad():
        out = exported["speech_model"].eval()(torch.from_numpy(features), torch.tensor([features.shape[2]]))
    best = out[0][0, : int(out[1][0])].argmax(-1).tolist()
    collapsed = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
    assert list(result.token_ids) == collapsed
