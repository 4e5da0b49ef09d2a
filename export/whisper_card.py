"""What a Whisper bundle says about itself: the manifest's ``model`` object, the preprocessing
contract, the model card (README.md) and the licence of the weights (LICENSE.whisper)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from tinymm.bundle import Preprocess
from tinymm.preprocess.config import TextConfig

from export.task_eval_card import bytes_per_precision
from export.whisper_clips import whisper_audio_config
from export.whisper_source import TOKENIZER_FILE, WhisperSource

LICENSE_FILE = "LICENSE.whisper"
TIME_PRECISION_S = 0.02  # seconds per timestamp token step (<|0.02|> after <|0.00|>)
MAX_INITIAL_TIMESTAMP_S = 1.0  # the first timestamp may not be later than this
AUDIO_FRAMES_PER_TOKEN = 2  # input frames per encoder frame (conv2's stride)
MAX_BATCH = 64  # the largest batch a TensorRT profile is built for
WHISPER_LICENSE = """MIT License

Copyright (c) 2022 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def whisper_model_info(source: WhisperSource) -> dict[str, Any]:
    """The manifest's ``model`` object (keys of the Whisper contract)."""
    cfg, tokens = source.model.config, source.tokens
    return {
        "num_layers": cfg.decoder_layers,
        "num_heads": cfg.decoder_attention_heads,
        "head_dim": cfg.d_model // cfg.decoder_attention_heads,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "n_mels": cfg.num_mel_bins,
        "max_source_positions": cfg.max_source_positions,
        "max_target_positions": cfg.max_target_positions,
        "sot_id": tokens.sot, "eot_id": tokens.eot, "transcribe_id": tokens.transcribe,
        "translate_id": tokens.translate, "no_timestamps_id": tokens.no_timestamps,
        "no_speech_id": tokens.no_speech, "sot_prev_id": tokens.sot_prev,
        "timestamp_begin_id": tokens.timestamp_begin,
        "time_precision": TIME_PRECISION_S,
        "max_initial_timestamp": MAX_INITIAL_TIMESTAMP_S,
        "languages": dict(tokens.languages),
        "multilingual": tokens.multilingual,
        "suppress_tokens": list(tokens.suppress_tokens),
        "begin_suppress_tokens": list(tokens.begin_suppress_tokens),
        "alignment_heads": [list(h) for h in tokens.alignment_heads],
        "dynamic_dims": {"batch": MAX_BATCH, "frames": AUDIO_FRAMES_PER_TOKEN * cfg.max_source_positions,
                         "enc_frames": cfg.max_source_positions, "seq": cfg.max_target_positions,
                         "past": cfg.max_target_positions, "new": 1},
        "audio_frames_per_token": AUDIO_FRAMES_PER_TOKEN,
    }


def whisper_preprocess(source: WhisperSource) -> Preprocess:
    """The audio and text sections of the contract."""
    tokens = source.tokens
    text = TextConfig(tokenizer=TOKENIZER_FILE, context_length=source.model.config.max_target_positions,
                      bos_id=tokens.sot, eos_id=tokens.eot, pad_id=tokens.eot, unk_id=-1, add_bos=False,
                      add_eos=False, special_tokens=tokens.special_tokens(), prompt_templates={},
                      kind="hf-tokenizers")
    return Preprocess(audio=whisper_audio_config(source.model.config.num_mel_bins), text=text)


def model_card(name: str, source: WhisperSource, files: Mapping[str, Mapping[str, Path]],
               shared: Mapping[str, Path], golden: Mapping[str, Mapping[str, Any]],
               provenance: Mapping[str, Any]) -> str:
    """README.md of the bundle: source, licence, sizes, parity, int8 gate, contract, provenance."""
    export, parity = provenance["export"], provenance["export"]["parity"]
    cfg = source.model.config
    lines = [
        f"# {name}", "",
        f"OpenAI Whisper ({cfg.encoder_layers}+{cfg.decoder_layers} layers, d_model {cfg.d_model}, "
        f"{'multilingual' if source.tokens.multilingual else 'English-only'}) as a tinymm bundle of family "
        "`speech`, architecture `whisper` (tasks: transcribe, command).", "",
        f"- source: {source.kind} checkpoint `{provenance['source']['path']}`, weights `{source.weights_path.name}` "
        f"({source.source_dtype}), sha256 `{source.weights_sha256}`",
        f"- licence: MIT, (c) 2022 OpenAI; the text is in `{LICENSE_FILE}`",
        f"- export: `{export['command']}` ({export['exporter']}, opset {export['opset']}, "
        f"{export['total_seconds']} s)", "",
        "## Components", "",
        "Golden metrics: the variant on onnxruntime CPU against torch fp32 on the bundle's golden inputs.", "",
        "| component | precision | file | size (bytes) | max abs error | min cosine |", "|---|---|---|---:|---:|---:|",
    ]
    for component, variants in files.items():
        for precision, path in variants.items():
            r = golden[component][precision]
            lines.append(f"| {component} | {precision} | {path.name} | {path.stat().st_size} | "
                         f"{r['max_abs']:.3g} | {r['min_cosine']:.6f} |")
    for precision, path in shared.items():
        lines.append(f"| decoder weights (shared by both decoders) | {precision} | {path.name} | "
                     f"{path.stat().st_size} | | |")
    lines += ["", "Bytes per precision (ONNX files and shared weights): "
              + ", ".join(f"{p} {n}" for p, n in bytes_per_precision(files, shared).items()), "",
              "## Parity of the fp32 export", "",
              "| component | random inputs max abs | real inputs max abs | min cosine |", "|---|---:|---:|---:|"]
    for component, entry in parity["components"].items():
        lines.append(f"| {component} | {entry['random']['max_abs']:.3g} | {entry['real']['max_abs']:.3g} | "
                     f"{entry['min_cosine']:.7f} |")
    hf, greedy = parity["transformers"], parity["greedy"]
    noise = hf["float32_noise"]
    lines += ["", f"Against transformers' WhisperForConditionalGeneration on a full {hf['frames']}-frame window: "
              f"encoder states max abs {hf['encoder_max_abs']:.3g} (limit {hf['encoder_limit']:g}; states reach "
              f"|{hf['encoder_abs_max']:.3g}|, and transformers' own fp32 is {noise['transformers_vs_float64']:.3g} "
              f"from float64, the ONNX graph {noise['onnx_vs_float64']:.3g}), logits max abs "
              f"{hf['logits_max_abs']:.3g} (limit {hf['logits_limit']:g}).",
              f"Greedy decoding with the KV cache (onnxruntime) vs without (transformers): "
              f"{'identical' if greedy['tokens_match'] else 'DIFFERENT'} tokens on {greedy['batch']} clips "
              f"({greedy['steps']} steps at most).", ""]
    gate = parity.get("int8_gate")
    if gate:
        lines += ["## INT8 gate", "",
                  f"Word error rate of int8 transcripts against fp32 ones on {gate['clips']} clips "
                  f"({provenance['export']['sources']['gate_clips']}); at most {gate['max_wer']:g} points. Encoder "
                  f"recipe: {gate['encoder_int8']}.", "",
                  "| component | verdict | WER vs fp32 | nodes in float | shipped |", "|---|---|---:|---:|---|"]
        for component in files:
            if component in gate:
                g = gate[component]
                lines.append(f"| {component} | {g['verdict']} | {g['int8_score']:.2f} | {len(g['excluded'])} | "
                             f"{'yes' if g['shipped'] else 'no'} |")
        for entry in gate.get("combined", []):
            lines.append(f"\nTogether ({', '.join(entry['components'])}): WER {entry['wer']:.2f} vs fp32.")
        lines.append("")
    lines += ["## Preprocessing contract", "",
              *(f"- {section}: `{json.dumps(config)}`" for section, config in
                whisper_preprocess(source).to_dict().items()), "",
              "## Provenance", "",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in provenance["versions"].items()),
              f"- created: {export['created']}", ""]
    return "\n".join(lines)
