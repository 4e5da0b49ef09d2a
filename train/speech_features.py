"""The speech recipe's data in memory: synthesized clips -> the runtime's log-mels (cached once per
split) -> label ids -> shuffled, length-bucketed batches."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tinymm.errors import InputError
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig
from tinymm.robot.transcripts import normalize_transcript
from train.data.speech_dataset import SpeechDataset, write_speech_dataset
from train.loop import progress

logger = logging.getLogger(__name__)


def ensure_data(out: Path, train_clips: int, eval_clips: int, seed: int, workers: int, show: bool) -> Path:
    """Write OUT/data/speech unless a dataset with these counts and seed is there; returns OUT/data."""
    data_dir = out / "data"
    counts = {"train": train_clips, "val": eval_clips, "test": eval_clips}
    meta_path = data_dir / "speech" / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("counts") != counts or meta.get("seed") != seed:
            raise InputError(f"{meta_path} has counts {meta.get('counts')} and seed {meta.get('seed')}, not {counts} "
                             f"and {seed}; pass the same --clips/--eval-clips/--seed or another --out")
        return data_dir
    logger.info("stage data: synthesizing %s clips", counts)
    write_speech_dataset(data_dir, counts, seed=seed, workers=workers, overwrite=True, progress=show,
                         command=f"python -m train speech (counts {counts}, seed {seed})")
    return data_dir


@dataclass
class FeatureSet:
    """One split in memory: log-mels, transcripts, intents and label ids."""

    features: list[np.ndarray]  # per clip (n_mels, T_i) float16
    transcripts: list[str]
    intents: list[dict | None]
    labels: list[list[int]]  # token ids, no blank (the CTC targets)
    # Per clip, a teacher's encoder states to match ((T_w, D) float16, train.whisper_distill), or
    # None for a clip the teacher did not label; None for the whole set when there is no such teacher.
    teacher_states: list[np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def concat(cls, parts: list[FeatureSet]) -> FeatureSet:
        """The clips of ``parts`` in order; teacher states are kept (None where a part has none)."""
        states = None
        if any(p.teacher_states is not None for p in parts):
            states = [s for p in parts for s in (p.teacher_states or [None] * len(p))]
        return cls([f for p in parts for f in p.features], [t for p in parts for t in p.transcripts],
                   [i for p in parts for i in p.intents], [lab for p in parts for lab in p.labels], states)


def ensure_features(data_dir: Path, out: Path, split: str, audio: AudioConfig, show: bool, name: str = "") -> Path:
    """Compute log-mels once with the runtime's preprocessor: OUT/features/{name}{split}_{n_mels}mel.npz
    (``name`` tells apart the datasets of one run, e.g. "piper-")."""
    path = out / "features" / f"{name}{split}_{audio.n_mels}mel.npz"
    if path.is_file():
        return path
    dataset = SpeechDataset(data_dir, split)
    pre = AudioPreprocessor(audio)
    clips = [pre.features(wave).T.astype(np.float16) for wave, _ in progress(dataset, enabled=show, desc=f"log-mel {split}")]
    offsets = np.cumsum([0] + [c.shape[0] for c in clips]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, frames=np.concatenate(clips), offsets=offsets)  # frames (sum T_i, n_mels) float16
    os.replace(tmp, path)
    return path


def load_features(data_dir: Path, features_path: Path, split: str, tokenizer) -> FeatureSet:
    with np.load(features_path) as npz:
        frames, offsets = npz["frames"], npz["offsets"]
    items = SpeechDataset(data_dir, split).items
    if len(items) != len(offsets) - 1:
        raise InputError(f"{features_path} has {len(offsets) - 1} clips but the {split} manifest {len(items)}; "
                         f"delete {features_path} so that it is recomputed")
    feats = [frames[offsets[i]:offsets[i + 1]].T for i in range(len(items))]
    transcripts = [normalize_transcript(item["transcript"]) for item in items]
    return FeatureSet(feats, transcripts, [item.get("intent") for item in items],
                      [tokenizer.encode(t) for t in transcripts])


def batches(data: FeatureSet, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled batches of clip indices, similar lengths together (less padding)."""
    lengths = np.array([f.shape[1] for f in data.features])
    pool = batch_size * 32
    while True:
        order = rng.permutation(len(data))
        chunks = []
        for start in range(0, len(order), pool):
            part = order[start:start + pool]
            part = part[np.argsort(lengths[part], kind="stable")]
            chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        for k in rng.permutation(len(chunks)):
            yield chunks[k]


def collate(data: FeatureSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip indices -> features (B, n_mels, T_max) float32 (zero padded) and lengths (B,) int64."""
    lengths = torch.tensor([data.features[i].shape[1] for i in idx], dtype=torch.int64)
    x = torch.zeros(len(idx), data.features[idx[0]].shape[0], int(lengths.max()))
    for row, i in enumerate(idx):
        x[row, :, : lengths[row]] = torch.from_numpy(data.features[i].astype(np.float32))
    return x, lengths
