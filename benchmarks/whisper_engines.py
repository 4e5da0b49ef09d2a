"""The engines of the Whisper study, each behind one ``transcribe(path) -> Transcript`` call.

- ``tinymm-int8-<context>``, ``tinymm-fp32-full``: ``tinymm.load(bundle, precision=..., threads=...)``;
  stages from the result's own timings. ``tinymm-int8-full`` encodes the full 30 s window, ``tinymm-int8-clip:10`` runs the encoder on the clip's own length
  (``audio_context="clip:10"``: at least 10 s; the runtime's default is the full window) instead of the full 30 s window.
- ``ct2-int8``, ``ct2-float32``: ``ctranslate2.models.Whisper`` (faster-whisper's engine) on
  features from the bundle's own numpy log-mel (faster-whisper computes them in numpy too);
  stages: preprocess, encode (``Whisper.encode``), decode (``Whisper.generate`` on the encoder
  output).
- ``torch-fp32``: transformers' WhisperForConditionalGeneration in eager mode, converted from the
  same CTranslate2 weights; features from transformers' WhisperFeatureExtractor.

Every engine decodes greedily, without timestamps, from <|startoftranscript|><|en|><|transcribe|>
<|notimestamps|>, and stops at <|endoftext|> or 448 tokens.

Run as a script with ``--rss ENGINE`` it loads one engine, transcribes one clip and prints its
peak RSS as JSON (the study runs it in a fresh process per engine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.variants import ModelClock  # noqa: E402

MAX_TOKENS = 448
SAMPLE_RATE_HZ = 16000  # Whisper's rate
ENGINE_LABELS = {
    "tinymm-int8-full": "tinymm ORT int8 (full 30 s window, the default)",
    "tinymm-int8-clip:10": "tinymm ORT int8 (audio context clip:10, the fast path)",
    "tinymm-fp32-full": "tinymm ORT fp32 (full 30 s window)",
    "ct2-int8": "CTranslate2 int8",
    "ct2-float32": "CTranslate2 float32",
    "torch-fp32": "transformers torch eager fp32",
}
KB_PER_MB = 1024.0  # /proc/self/status reports kB


@dataclass(frozen=True)
class Transcript:
    text: str
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds


@dataclass
class Engine:
    name: str
    transcribe: Callable[[str], Transcript]
    is_tinymm: bool = False


_CLOCK: ModelClock | None = None


def ort_clock() -> ModelClock:
    """Patch onnxruntime's InferenceSession run methods (once) to add their time to one clock."""
    global _CLOCK
    if _CLOCK is not None:
        return _CLOCK
    from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession

    clock = ModelClock()
    for method in ("run", "run_with_ortvalues", "run_with_iobinding"):
        original = getattr(InferenceSession, method, None)
        if original is None:
            continue

        def timed(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        setattr(InferenceSession, method, timed)
    _CLOCK = clock
    return clock


def _stage_seconds(result: Any) -> dict[str, float]:
    from tinymm.bench.harness import result_timings

    return dict(result_timings(result).stages)


def tinymm_engine(bundle: Path, precision: str, threads: int, context: str = "full") -> Engine:
    import tinymm

    pipeline = tinymm.load(bundle, precision=precision, threads=threads)
    name = f"tinymm-{precision}-{context}"

    def run(path: str) -> Transcript:
        result = pipeline.transcribe(path, language="en", audio_context=context)
        return Transcript(result.text.strip(), _stage_seconds(result))

    return Engine(name, run, is_tinymm=True)


def _prompt(tokenizer: Any) -> list[str]:
    return ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def ct2_engine(ct2_dir: Path, bundle: Path, compute_type: str, threads: int) -> Engine:
    import ctranslate2

    from tinymm.bundle import read_bundle
    from tinymm.preprocess.audio import AudioPreprocessor

    config = read_bundle(bundle, verify_checksums=False, scan_models=False).manifest.preprocess.audio
    preprocessor = AudioPreprocessor(config)
    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type,
                                       intra_threads=threads, inter_threads=1)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    prompt = [tokenizer.token_to_id(t) for t in _prompt(tokenizer)]

    def run(path: str) -> Transcript:
        t0 = time.perf_counter()
        features = preprocessor.features(preprocessor.waveform(path))[None]  # (1, n_mels, 3000)
        t1 = time.perf_counter()
        encoded = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, np.float32)))
        t2 = time.perf_counter()
        out = model.generate(encoded, [prompt], beam_size=1, max_length=MAX_TOKENS)
        t3 = time.perf_counter()
        text = tokenizer.decode(out[0].sequences_ids[0], skip_special_tokens=True)
        return Transcript(text.strip(), {"preprocess": t1 - t0, "encode": t2 - t1, "decode": t3 - t2})

    return Engine(f"ct2-{compute_type}", run)


def torch_engine(ct2_dir: Path, threads: int) -> Engine:
    import torch
    from transformers import WhisperFeatureExtractor

    from export.whisper_source import load_whisper_source
    from tinymm.preprocess.audio_io import load_audio, resample

    torch.set_num_threads(threads)
    model = load_whisper_source(ct2_dir).model.eval()
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    prompt = torch.tensor([[tokenizer.token_to_id(t) for t in _prompt(tokenizer)]])
    eot = tokenizer.token_to_id("<|endoftext|>")

    def run(path: str) -> Transcript:
        t0 = time.perf_counter()
        samples, rate = load_audio(path)
        samples = samples.mean(axis=1) if samples.ndim == 2 else samples
        samples = resample(samples, rate, SAMPLE_RATE_HZ) if rate != SAMPLE_RATE_HZ else samples
        features = torch.from_numpy(extractor(samples, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features)
        t1 = time.perf_counter()
        with torch.inference_mode():
            encoded = model.model.encoder(features).last_hidden_state
            t2 = time.perf_counter()
            tokens, past = prompt, None
            generated: list[int] = []
            while len(generated) + prompt.shape[1] < MAX_TOKENS:
                out = model(encoder_outputs=(encoded,), decoder_input_ids=tokens, past_key_values=past,
                            use_cache=True)
                past = out.past_key_values
                next_id = int(out.logits[0, -1].argmax())
                if next_id == eot:
                    break
                generated.append(next_id)
                tokens = torch.tensor([[next_id]])
        t3 = time.perf_counter()
        text = tokenizer.decode(generated, skip_special_tokens=True)
        return Transcript(text.strip(), {"preprocess": t1 - t0, "encode": t2 - t1, "decode": t3 - t2})

    return Engine("torch-fp32", run)


def make_engines(bundle: Path, ct2_dir: Path, threads: int, *, contexts: tuple[str, ...] = ("full",),
                 torch: bool = True) -> dict[str, Engine]:
    """The study's engines at ``threads`` threads each, keyed by name."""
    engines = [tinymm_engine(bundle, "int8", threads, c) for c in contexts]
    engines += [tinymm_engine(bundle, "fp32", threads, "full"), ct2_engine(ct2_dir, bundle, "int8", threads),
                ct2_engine(ct2_dir, bundle, "float32", threads)]
    if torch:
        engines.append(torch_engine(ct2_dir, threads))
    return {e.name: e for e in engines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak RSS of one engine transcribing one clip")
    parser.add_argument("--rss", required=True, choices=["tinymm-int8-full", "ct2-int8"])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--ct2", type=Path, required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rss.startswith("tinymm"):
        engine = tinymm_engine(args.bundle, "int8", args.threads)
    else:
        engine = ct2_engine(args.ct2, args.bundle, "int8", args.threads)
    text = engine.transcribe(args.clip).text
    # VmHWM of this process image: ru_maxrss would carry over the parent's peak across exec on Linux.
    status = Path("/proc/self/status").read_text(encoding="ascii")
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / KB_PER_MB
    print(json.dumps({"engine": args.rss, "peak_rss_mb": peak, "text": text}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
