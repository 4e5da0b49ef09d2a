"""The variants a side-by-side study times, each a function of no arguments returning a Measurement.

- ``torch_variants``: the train/ models in torch eager fp32 (``torch.inference_mode``, the VLM's own
  KV-cache greedy ``generate``, the speech recipe's CTC greedy decode), fed by the bundles' own
  preprocessing, prompts and tokenizer so that only the model execution differs. Stage times
  come from a forward pre-hook on the text decoder: encode until its first call, prefill until
  its second, then one step per call.
- ``tinymm_variants``: ``tinymm.load`` pipelines (provider, precision, threads), their stage
  timings read from the results (``tinymm.bench.result_timings``); their OrtSessions are swapped
  for copies whose onnxruntime run calls add to a ``ModelClock``, so that the runtime's own
  overhead is the end-to-end time minus the time inside onnxruntime.
- ``interleave``: round-robin over the variants, the starting one rotated each round.
- the inputs: a rendered scene of the training world and its first question; a clip of
  SPOKEN_TEXT synthesized by espeak-ng (a tone clip where espeak-ng is missing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tinymm.bench.harness import result_timings
from tinymm.commands.bench import AUDIO_RATE_HZ, synthetic_clip

logger = logging.getLogger(__name__)

TORCH = "torch-fp32"
SEED = 0
SPOKEN_TEXT = "turn left and go forward two meters"
SPEECH_RATE_HZ = AUDIO_RATE_HZ  # 16 kHz, the speech models' rate
TOP_K = 5  # labels a classify call ranks, as the runtime's default


@dataclass(frozen=True)
class Measurement:
    """One timed call of one variant."""

    total_s: float
    stages: dict[str, float]  # stage -> seconds
    tokens: int | None = None  # generated, EOS included
    token_times_s: tuple[float, ...] = ()
    model_s: float | None = None  # inside onnxruntime's run calls (tinymm variants)
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One way of running one task."""

    name: str  # torch-fp32, ort-fp32, ort-int8, trt-fp16, ...
    label: str
    call: Callable[[], Measurement] = field(repr=False)


# ---- inputs ---------------------------------------------------------------------------------


def scene_input() -> tuple[np.ndarray, str]:
    """A rendered scene of the training world: (H, W, 3) uint8 BGR, and a question about it."""
    from train.data.scene_dataset import generate_example
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig

    rgb, note = generate_example(WorldConfig(), RenderConfig(), SEED, 0, 0)
    return np.ascontiguousarray(rgb[:, :, ::-1]), note["qa"][0]["question"]


def speech_input() -> tuple[np.ndarray, str]:
    """(samples,) float32 at SPEECH_RATE_HZ: SPOKEN_TEXT by espeak-ng, or a tone clip without it."""
    try:
        from train.data.tts import EspeakEngine

        return EspeakEngine().synthesize(SPOKEN_TEXT, sample_rate=SPEECH_RATE_HZ), f"espeak-ng en-us: {SPOKEN_TEXT!r}"
    except Exception as e:  # espeakng-loader missing or failing: any clip of the length times the same
        logger.warning("no speech synthesis (%s); timing a tone clip", e)
        return synthetic_clip(), "a 2 s 440 Hz tone in noise"


def encoder_pixels(bundle: Path, image: np.ndarray) -> np.ndarray:
    """The (1, 3, H, W) float32 pixels the bundle's preprocessing makes of ``image``."""
    from tinymm.bundle import read_bundle
    from tinymm.preprocess.image import ImagePreprocessor

    with read_bundle(bundle, verify_checksums=False) as opened:
        return ImagePreprocessor(opened.manifest.preprocess.image)([image])


def encoder_features(bundle: Path, clip: np.ndarray) -> dict[str, np.ndarray]:
    """The speech encoder's feeds for ``clip``: features (1, n_mels, F) and feature_lengths (1,)."""
    from tinymm.bundle import read_bundle
    from tinymm.preprocess.audio import AudioPreprocessor, batch_features

    with read_bundle(bundle, verify_checksums=False) as opened:
        pre = AudioPreprocessor(opened.manifest.preprocess.audio)
    features, lengths = batch_features([pre.features(pre.waveform(clip, SPEECH_RATE_HZ))])
    return {"features": features.astype(np.float32), "feature_lengths": lengths}


def decoder_step_feeds(bundle: Path, past: int) -> dict[str, np.ndarray]:
    """One decoder_with_past step of one row with ``past`` cached tokens: input_ids (1, 1) int64,
    past_key_values.* (1, heads, past, head_dim) and cross.* (1, heads, N_img, head_dim) float32."""
    from tinymm.bundle import read_bundle

    with read_bundle(bundle, verify_checksums=False) as opened:
        specs = opened.manifest.components["decoder_with_past"].inputs
    rng = np.random.default_rng(SEED)
    feeds = {}
    for spec in specs:
        if spec.dtype == "int64":
            feeds[spec.name] = np.zeros((1, 1), np.int64)
        else:
            shape = tuple(d if isinstance(d, int) else 1 if axis == 0 else past for axis, d in enumerate(spec.shape))
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


# ---- the variants ----------------------------------------------------------------------------


class ModelClock:
    """Seconds spent inside onnxruntime's run calls since the last ``take``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class TimedOrtSession:
    """An onnxruntime InferenceSession whose run calls add their time to a ModelClock."""

    def __init__(self, session: Any, clock: ModelClock) -> None:
        self._session, self._clock = session, clock

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._clock.seconds += time.perf_counter() - start

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._session.run, *args, **kwargs)

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._session.run_with_iobinding, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def clock_sessions(pipeline: Any, names: tuple[str, ...], clock: ModelClock) -> None:
    """Swap the pipeline's OrtSessions ``names`` for copies whose onnxruntime calls ``clock`` times."""
    from tinymm.backends.onnxruntime import OrtSession

    for name in names:
        s = getattr(pipeline, name, None)
        if s is not None:
            timed = TimedOrtSession(s.ort_session, clock)
            setattr(pipeline, name, OrtSession(timed, s.model_path, s.provider, s.device[1], s.io_binding))


def tinymm_variants(vlm_bundle: Path, speech_bundle: Path, name: str, provider: str, precision: str,
                    threads: int, inputs: dict[str, Any]) -> dict[str, Variant]:
    """Task -> the variant of tinymm with ``provider`` and ``precision``."""
    import tinymm

    label = f"tinymm {'ORT' if provider == 'cpu' else 'TensorRT'} {precision}"
    vlm = tinymm.load(vlm_bundle, provider=provider, precision=precision, threads=threads)
    asr = tinymm.load(speech_bundle, provider=provider, precision=precision, threads=threads)
    clock = ModelClock()
    clock_sessions(vlm, ("image_encoder", "decoder_first", "decoder_with_past", "text_encoder"), clock)
    clock_sessions(asr, ("encoder",), clock)
    image, question, clip = inputs["image"], inputs["question"], inputs["clip"]
    calls = {"caption": lambda: vlm.caption(image), "ask": lambda: vlm.ask(image, question),
             "classify": lambda: vlm.classify(image), "transcribe": lambda: asr.transcribe(clip, SPEECH_RATE_HZ)}

    def measured(call: Callable[[], Any]) -> Callable[[], Measurement]:
        def run() -> Measurement:
            clock.take()
            start = time.perf_counter()
            result = call()
            total = time.perf_counter() - start
            timings = result_timings(result)
            finished = getattr(result, "finished", None)
            tokens = None if finished is None else len(result.token_ids) + int(finished)
            return Measurement(total, timings.stages, tokens, timings.token_times_s, clock.take(),
                               tuple(getattr(result, "token_ids", ())))
        return run

    return {task: Variant(name, label, measured(call)) for task, call in calls.items()}


def _encoder_measurement(start: float, begin: float, end: float, done: float,
                         token_ids: tuple[int, ...] = ()) -> Measurement:
    """Preprocess until ``begin``, the model until ``end``, postprocess until ``done`` (perf_counter seconds)."""
    return Measurement(done - start, {"preprocess": begin - start, "encode": end - begin, "postprocess": done - end},
                       token_ids=token_ids)


def torch_variants(vlm_checkpoint: Path, speech_checkpoint: Path, vlm_bundle: Path, speech_bundle: Path,
                   threads: int, inputs: dict[str, Any]) -> dict[str, Variant]:
    """Task -> the train/ model in torch eager fp32, fed by the bundles' own preprocessing and tokenizer."""
    import torch

    import tinymm
    from train.checkpoint import load_checkpoint
    from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig

    torch.set_num_threads(threads)
    vlm_model, _, _ = load_checkpoint(vlm_checkpoint, VisionLanguageModel, VLMConfig)
    asr_model, _, _ = load_checkpoint(speech_checkpoint, SpeechCTCModel, SpeechConfig)
    # Preprocessing, prompts, settings and detokenization come from the same bundles the runtime runs
    # (their sessions are loaded but never run here).
    vlm = tinymm.load(vlm_bundle, provider="cpu", precision="fp32", threads=1)
    asr = tinymm.load(speech_bundle, provider="cpu", precision="fp32", threads=1)
    settings, tokenizer = vlm.settings, vlm.tokenizer
    reserved = min(settings.max_new_tokens, settings.max_length // 2)  # as the pipeline reserves room
    prompts = {"caption": tokenizer.encode_prompt("caption", max_new_tokens=reserved),
               "ask": tokenizer.encode_prompt("ask", max_new_tokens=reserved, question=inputs["question"])}
    with torch.inference_mode():
        ids, lengths = tokenizer.encode_batch([tokenizer.encode_prompt("classify", label=x) for x in settings.labels])
        mask = torch.from_numpy((np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64))
        labels = vlm_model.embed_text(torch.from_numpy(ids), mask)  # (L, E), computed once as the runtime caches it

    def generate(task: str) -> Measurement:
        marks: list[float] = []
        hook = vlm_model.decoder.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
        try:
            start = time.perf_counter()
            pixels = torch.from_numpy(vlm.preprocessor([inputs["image"]]))  # (1, 3, H, W)
            prompt = torch.from_numpy(prompts[task][None])  # (1, T)
            room = min(settings.max_new_tokens, settings.max_length - prompt.shape[1])
            begin = time.perf_counter()
            with torch.inference_mode():
                out = vlm_model.generate(pixels, prompt, room, eos_id=settings.eos_id)  # (1, n)
            end = time.perf_counter()
            generated = [t for t in out[0].tolist() if t != settings.eos_id]
            tokenizer.decode(generated)
            total = time.perf_counter() - start
        finally:
            hook.remove()
        steps = tuple(b - a for a, b in zip(marks[1:], [*marks[2:], end]))
        stages = {"preprocess": begin - start, "encode": marks[0] - begin,
                  "prefill": (marks[1] if len(marks) > 1 else end) - marks[0], "decode": sum(steps),
                  "postprocess": total - (end - start)}
        return Measurement(total, stages, int(out.shape[1]), steps, token_ids=tuple(generated))

    def classify() -> Measurement:
        start = time.perf_counter()
        pixels = torch.from_numpy(vlm.preprocessor([inputs["image"]]))
        begin = time.perf_counter()
        with torch.inference_mode():
            cosine = (vlm_model.embed_image(pixels) @ labels.T).numpy()  # (1, L)
        end = time.perf_counter()
        np.argsort(-cosine, axis=1)[:, :TOP_K]
        return _encoder_measurement(start, begin, end, time.perf_counter())

    def transcribe() -> Measurement:
        from tinymm.preprocess.audio import batch_features

        start = time.perf_counter()
        wave = asr.preprocessor.waveform(inputs["clip"], SPEECH_RATE_HZ)
        features, lengths = batch_features([asr.preprocessor.features(wave)])  # (1, n_mels, F), (1,)
        begin = time.perf_counter()
        with torch.inference_mode():
            log_probs, out_lengths = asr_model(torch.from_numpy(features), torch.from_numpy(lengths))
        end = time.perf_counter()
        # The pipeline's own postprocessing (best path, lexicon, the bundle's grammar), so that both
        # sides do the same work and give the same tokens.
        _, ids, _, _, _ = asr.decode(log_probs.numpy(), out_lengths.numpy())[0]
        return _encoder_measurement(start, begin, end, time.perf_counter(), token_ids=ids)

    label = "torch eager fp32"
    return {"caption": Variant(TORCH, label, lambda: generate("caption")),
            "ask": Variant(TORCH, label, lambda: generate("ask")),
            "classify": Variant(TORCH, label, classify), "transcribe": Variant(TORCH, label, transcribe)}


# ---- running ---------------------------------------------------------------------------------


def interleave(variants: list[Variant], runs: int, warmup: int) -> dict[str, list[Measurement]]:
    """Round-robin: each round calls every variant once, starting one further along each round."""
    out: dict[str, list[Measurement]] = {v.name: [] for v in variants}
    for round_ in range(warmup + runs):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            measurement = variant.call()
            if round_ >= warmup:
                out[variant.name].append(measurement)
    return out
