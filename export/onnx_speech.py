"""The CTC speech model as one ONNX component, with the inputs that check it.

Component (the contract in export/LAYOUT.md)::

    speech_encoder  features (batch, n_mels, frames) float32 log-mels, feature_lengths (batch,) int64
                    -> log_probs (batch, out_frames, V) float32, output_lengths (batch,) int64

Frames past a clip's length are padding (FEATURE_PAD_VALUE); outputs past output_lengths are
meaningless. Real inputs are spoken commands: clips of a written speech dataset, or sentences
of the command grammar synthesized by espeak-ng, turned into log-mels by the runtime's own
AudioPreprocessor.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from export.onnx_common import ComponentGraph, Prepared, SampleOptions, by_component, require, split_rows
from tinymm.bundle import Preprocess, TensorSpec
from tinymm.preprocess.audio import AudioPreprocessor, batch_features
from tinymm.preprocess.config import AudioConfig
from tinymm.preprocess.text import Tokenizer
from train.models.speech import CTC_BLANK_ID, SUBSAMPLING_STRIDE, SpeechCTCModel
from train.speech_tokenizer import GRAMMAR_FILE, LEXICON_FILE, TOKENIZER_FILE, read_grammar, read_lexicon

__all__ = ["TOKENIZER_FILE", "contract_defaults", "prepare", "speech_graphs", "speech_model_info",
           "speech_random_cases", "speech_real_cases", "load_speech_samples"]

FAMILY = "speech"
TASKS = ("transcribe", "command")
COMPONENT = "speech_encoder"
SPEECH_SPLIT = "test"  # held-out voices and rates: the golden pairs
CALIBRATION_SPLITS = ("train", "val")  # INT8 calibration clips, never the split the accuracy gate scores
SYNTH_VOICES = ("en-us", "en-gb-scotland+m3", "en+f2", "en-us+klatt")  # espeak-ng voices for generated clips
# Example sizes used for tracing: every dynamic dimension >= 2 so none is frozen to 1.
EXAMPLE_BATCH, EXAMPLE_FRAMES = 2, 48
RANDOM_SIZES = ((1, 16), (3, 40))  # (batch, frames) of the random parity cases


class SpeechGraph(nn.Module):
    """(features, feature_lengths) -> (log_probs, output_lengths)."""

    def __init__(self, model: SpeechCTCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(features, feature_lengths)


def speech_graphs(model: SpeechCTCModel) -> dict[str, ComponentGraph]:
    """The one component of ``model`` (put in eval mode here), with specs and example inputs."""
    model.eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    graph = ComponentGraph(
        COMPONENT, SpeechGraph(model).eval(),
        inputs=(TensorSpec("features", ("batch", cfg.n_mels, "frames"), "float32"),
                TensorSpec("feature_lengths", ("batch",), "int64")),
        outputs=(TensorSpec("log_probs", ("batch", "out_frames", cfg.vocab_size), "float32"),
                 TensorSpec("output_lengths", ("batch",), "int64")),
        example=(torch.randn(EXAMPLE_BATCH, cfg.n_mels, EXAMPLE_FRAMES, generator=gen),
                 torch.tensor([EXAMPLE_FRAMES, EXAMPLE_FRAMES - 11], dtype=torch.int64)),
    )
    return {graph.name: graph}


def speech_model_info(model: SpeechCTCModel, lexicon: Sequence[str] = (), grammar: str | None = None) -> dict[str, Any]:
    """The manifest's ``model`` object for a speech bundle (keys in export/LAYOUT.md).

    ``lexicon``: the training transcripts' words; when given, the runtime snaps misspelt words of
    a transcript to them (``model.lexicon``, tinymm/decoding/lexicon.py). ``grammar``: the
    built-in grammar the training sentences come from; when given, the runtime decodes with it
    (``model.grammar``, tinymm/decoding/grammar.py), and the bundle names the VAD bundle that
    checks clips for speech before a command is parsed (``model.vad``, tinymm/pipelines/vad.py).
    """
    from tinymm.pipelines.vad import DEFAULT_VAD_BUNDLE

    from tinymm.robot.grammar import GRAMMAR_NAMES

    require(grammar is None or grammar in GRAMMAR_NAMES,
            f"grammar {grammar!r} is not one of the runtime's grammars {list(GRAMMAR_NAMES)}; fix or remove the "
            f"recipe's {GRAMMAR_FILE} next to the tokenizer")
    cfg = model.config
    lexicon_entry = {"lexicon": list(lexicon)} if lexicon else {}  # in file order: most frequent first
    grammar_entry = {"grammar": grammar, "vad": DEFAULT_VAD_BUNDLE} if grammar else {}
    return {
        "blank_id": CTC_BLANK_ID,
        "vocab_size": cfg.vocab_size,
        "n_mels": cfg.n_mels,
        "subsampling_factor": SUBSAMPLING_STRIDE**cfg.subsampling_layers,
        "frame_ms": cfg.frame_ms,
        "max_frames": cfg.max_frames,
        **lexicon_entry,
        **grammar_entry,
    }


@dataclass(frozen=True)
class SpeechSamples:
    """Real inputs: spoken clips as a padded log-mel batch, made by the runtime's own code."""

    features: np.ndarray  # (N, n_mels, T) float32, padded with FEATURE_PAD_VALUE
    lengths: np.ndarray  # (N,) int64 valid frames per clip
    transcripts: tuple[str, ...]
    source: str  # where the clips came from, for the provenance

    def head(self, count: int) -> "SpeechSamples":
        """The first ``count`` clips (padding frames no clip uses are dropped)."""
        width = int(self.lengths[:count].max())
        return SpeechSamples(self.features[:count, :, :width], self.lengths[:count], self.transcripts[:count],
                             self.source)


def _synthesized(count: int, sample_rate: int, seed: int) -> tuple[list[np.ndarray], list[str], str]:
    from train.data.speech_grammar import GrammarConfig, sample_utterance
    from train.data.tts import EspeakEngine, SpeakingStyle

    rng = np.random.default_rng(seed)
    utterances = [sample_utterance(rng, GrammarConfig()) for _ in range(count)]
    with EspeakEngine() as engine:
        waves = [engine.synthesize(u.spoken_text, SpeakingStyle(voice=SYNTH_VOICES[i % len(SYNTH_VOICES)]),
                                   sample_rate=sample_rate, seed=seed + i) for i, u in enumerate(utterances)]
    return waves, [u.transcript for u in utterances], f"espeak-ng command grammar sentences (seed {seed})"


def load_speech_samples(
    count: int, audio: AudioConfig, max_frames: int, data_dir: str | Path | None = None, seed: int = 0,
    prefer: tuple[str, ...] = (SPEECH_SPLIT,),
) -> SpeechSamples:
    """``count`` clips: from ``data_dir`` when given, else synthesized (deterministic).

    From ``data_dir``, the first split of ``prefer`` that exists (then any split) is read: the golden
    pairs come from test, INT8 calibration from train (CALIBRATION_SPLITS), so that the accuracy
    gate never scores the int8 model on the clips it was calibrated on. Clips longer than
    ``max_frames`` feature frames are cut to it.
    """
    if data_dir is not None:
        from train.data.speech_dataset import SPLITS, SpeechDataset

        split = next((s for s in (*prefer, *SPLITS) if (Path(data_dir) / "speech" / s / "manifest.jsonl").is_file()),
                     prefer[0])  # none there: SpeechDataset says how to write the dataset
        clips = SpeechDataset(data_dir, split)
        items = [clips[i] for i in range(min(count, len(clips)))]
        waves, transcripts = [w for w, _ in items], [item["transcript"] for _, item in items]
        source = f"speech dataset {data_dir} split {split}"
    else:
        waves, transcripts, source = _synthesized(count, audio.sample_rate, seed)
    preprocessor = AudioPreprocessor(audio)
    features, lengths = batch_features([preprocessor.features(w)[:, :max_frames] for w in waves])
    return SpeechSamples(features.astype(np.float32), lengths, tuple(transcripts), source)


def speech_real_cases(samples: SpeechSamples) -> dict[str, dict[str, np.ndarray]]:
    """The feeds of the component for real clips."""
    return {COMPONENT: {"features": samples.features, "feature_lengths": samples.lengths}}


def speech_random_cases(
    graphs: dict[str, ComponentGraph], rng: np.random.Generator, batch: int, frames: int
) -> dict[str, dict[str, np.ndarray]]:
    """Fresh random feeds: features ~ N(0, 1), lengths in 1..frames with one full-length clip."""
    n_mels = graphs[COMPONENT].inputs[0].shape[1]
    lengths = rng.integers(1, frames + 1, batch).astype(np.int64)
    lengths[0] = frames
    features = rng.standard_normal((batch, n_mels, frames)).astype(np.float32)
    return {COMPONENT: {"features": features, "feature_lengths": lengths}}


def contract_defaults(model: SpeechCTCModel) -> dict[str, Any]:
    """The training recipe's contract: AudioConfig(n_mels) and train/speech_tokenizer.speech_text_config.

    max_seconds is capped to what the model's position table holds (max_frames frames of
    1 + samples // hop, centred): 30 s would give 3001 frames for a 3000-frame model.
    """
    from train.speech_tokenizer import speech_text_config

    cfg = model.config
    audio = AudioConfig(n_mels=cfg.n_mels)
    capacity_s = (cfg.max_frames - 1) * audio.hop_length / audio.sample_rate
    return {"audio": dataclasses.replace(audio, max_seconds=min(audio.max_seconds, capacity_s)),
            "text": speech_text_config()}


def prepare(model: SpeechCTCModel, meta: Mapping[str, Any], tokenizer_path: Path, sections: Mapping[str, Any],
            sources: Mapping[str, str], options: SampleOptions) -> Prepared:
    """Check the contract and tokenizer against the model; build the graph, inputs and the model object.

    ``sections`` holds the "audio" and "text" contract sections.
    """
    cfg = model.config
    audio, text = sections["audio"], dataclasses.replace(sections["text"], tokenizer=tokenizer_path.name)
    require(audio.n_mels == cfg.n_mels, f"the audio contract has n_mels={audio.n_mels} but the model takes {cfg.n_mels}")
    tokenizer = Tokenizer(tokenizer_path, text)
    require(tokenizer.vocab_size == cfg.vocab_size,
            f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} ids but the model has {cfg.vocab_size} CTC outputs "
            "(one per id, the blank included); pass the tokenizer the model was trained with")
    lexicon_path = tokenizer_path.with_name(LEXICON_FILE)  # written by the recipe next to its tokenizer
    lexicon = read_lexicon(lexicon_path) if lexicon_path.is_file() else ()
    if lexicon:
        sources = {**sources, "lexicon": str(lexicon_path)}
    grammar_path = tokenizer_path.with_name(GRAMMAR_FILE)  # written by the recipe next to its tokenizer
    grammar = read_grammar(grammar_path) if grammar_path.is_file() else None
    if grammar:
        sources = {**sources, "grammar": str(grammar_path)}
    graphs = speech_graphs(model)
    samples = load_speech_samples(options.golden_batch, audio, cfg.max_frames, options.data_dir, options.seed)
    rng = np.random.default_rng(options.seed)

    @functools.cache
    def calibration() -> dict[str, list[dict[str, np.ndarray]]]:
        more = load_speech_samples(options.calibration_samples, audio, cfg.max_frames, options.data_dir,
                                   options.seed + 1, prefer=CALIBRATION_SPLITS)
        return split_rows(speech_real_cases(more))

    return Prepared(
        family=FAMILY, tasks=TASKS, model=model, graphs=graphs, preprocess=Preprocess(audio=audio, text=text),
        tokenizer_path=tokenizer_path, model_info=speech_model_info(model, lexicon, grammar),
        real_cases=speech_real_cases(samples),
        random_cases=by_component([speech_random_cases(graphs, rng, b, f) for b, f in RANDOM_SIZES]),
        calibration=calibration, greedy=None, sources={**sources, "real_inputs": samples.source},
    )
