"""Piper speech on disk, in the layout of ``train.data.speech_dataset`` (so ``SpeechDataset`` reads it):

    python -m train.data.piper_dataset --out DIR --train 3000 --free-fraction 0.5 --seed 0

Each clip is either a sentence of the command grammar (``speech_grammar``, with its intent) or,
with probability ``--free-fraction``, a free sentence (``free_sentences``; intent null, kind
"free"), read by the Piper voice (``piper_tts``) with settings drawn per clip
(``PiperSettings.draw``), then augmented as the espeak-ng training clips are
(``audio_augment``; colored noise only, no babble). Manifest lines carry the fields of the
espeak-ng dataset, with ``voice`` "piper:<voice name>" and the Piper settings under ``piper``.

Clip i depends on (seed, split, i) for its text, settings and augmentation; Piper draws its own
noise inside the voice, so the samples differ slightly between runs (see ``piper_tts``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tinymm.errors import InputError
from train.data.audio_augment import AugmentConfig, augment
from train.data.free_sentences import sample_free_sentence
from train.data.piper_tts import PiperEngine, PiperSettings
from train.data.speech_dataset import FORMAT_VERSION, SAMPLE_RATE_HZ, SPLIT_IDS, SPLITS, write_wav
from train.data.speech_grammar import GrammarConfig, sample_utterance

logger = logging.getLogger(__name__)

DEFAULT_FREE_FRACTION = 0.5
CHUNK_CLIPS = 16  # clips per worker task
PIPER_SEED_OFFSET = 1000  # keeps Piper clips' seed streams apart from espeak-ng's for the same --seed


@dataclass(frozen=True)
class _Chunk:
    split_dir: str
    split: str
    start: int
    stop: int
    seed: int
    free_fraction: float


_ENGINE: PiperEngine | None = None  # one voice per worker process


def _engine() -> PiperEngine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = PiperEngine(threads=1)
    return _ENGINE


def _make_clip(chunk: _Chunk, index: int) -> dict[str, Any]:
    seeds = np.random.SeedSequence([chunk.seed + PIPER_SEED_OFFSET, SPLIT_IDS[chunk.split], index]).spawn(3)
    text_rng, voice_rng, augment_rng = (np.random.default_rng(s) for s in seeds)
    if text_rng.random() < chunk.free_fraction:
        transcript, spoken = sample_free_sentence(text_rng)
        intent, kind = None, "free"
    else:
        utterance = sample_utterance(text_rng, GrammarConfig())
        transcript, spoken, intent, kind = (utterance.transcript, utterance.spoken_text, utterance.intent.to_dict(),
                                            utterance.kind)
    settings = PiperSettings.draw(voice_rng)
    engine = _engine()
    samples, applied = augment(engine.synthesize(spoken, settings), augment_rng, AugmentConfig())
    relative = f"audio/{index:06d}.wav"
    write_wav(Path(chunk.split_dir) / relative, samples, SAMPLE_RATE_HZ)
    return {"index": index, "path": relative, "transcript": transcript, "intent": intent, "kind": kind,
            "voice": f"piper:{engine.name}", "piper": dataclasses.asdict(settings), "augmentations": applied,
            "duration": round(samples.size / SAMPLE_RATE_HZ, 4)}


def _write_chunk(chunk: _Chunk) -> list[dict[str, Any]]:
    return [_make_clip(chunk, i) for i in range(chunk.start, chunk.stop)]


def write_piper_dataset(out_dir: str | Path, counts: dict[str, int], *, seed: int = 0,
                        free_fraction: float = DEFAULT_FREE_FRACTION, workers: int = 2, overwrite: bool = False,
                        progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Write ``counts[split]`` Piper clips per split under ``out_dir/speech``; returns meta.json's content."""
    from tqdm import tqdm

    if not 0.0 <= free_fraction <= 1.0:
        raise InputError(f"free_fraction={free_fraction} must be between 0 and 1")
    if workers < 1:
        raise InputError(f"workers={workers} must be at least 1")
    counts = {split: int(counts.get(split, 0)) for split in SPLITS}
    root = Path(out_dir) / "speech"
    if root.exists():
        if not overwrite:
            raise InputError(f"{root} already exists; pass --force to replace it, or another --out")
        shutil.rmtree(root)
    PiperEngine()  # fail early, in this process, when the voice is missing
    chunks = []
    for split in SPLITS:
        (root / split / "audio").mkdir(parents=True)
        chunks += [_Chunk(str(root / split), split, start, min(start + CHUNK_CLIPS, counts[split]), seed, free_fraction)
                   for start in range(0, counts[split], CHUNK_CLIPS)]
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    with tqdm(total=sum(counts.values()), unit="clip", disable=not progress, desc="piper") as bar, \
            multiprocessing.get_context("spawn").Pool(workers) as pool:
        for chunk, result in zip(chunks, pool.imap(_write_chunk, chunks)):
            rows[chunk.split].extend(result)
            bar.update(chunk.stop - chunk.start)
    for split in SPLITS:
        with open(root / split / "manifest.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows[split])
    meta = {"format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE_HZ, "seed": seed, "counts": counts,
            "engine": "piper", "free_fraction": free_fraction, "augment": AugmentConfig().to_dict(),
            "command": command, "layout": "speech/{split}/audio/{index:06d}.wav, speech/{split}/manifest.jsonl"}
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s Piper clips to %s", counts, root)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.piper_dataset",
                                     description="Synthesize commands, questions and free sentences with Piper.")
    parser.add_argument("--out", required=True, help="output directory; clips go to OUT/speech")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=0, metavar="N", help=f"number of {split} clips")
    parser.add_argument("--free-fraction", type=float, default=DEFAULT_FREE_FRACTION,
                        help="share of free sentences (the rest: the command grammar)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes (one voice thread each)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/speech")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = write_piper_dataset(args.out, {split: getattr(args, split) for split in SPLITS}, seed=args.seed,
                               free_fraction=args.free_fraction, workers=args.workers, overwrite=args.force,
                               progress=not args.quiet,
                               command=" ".join(["python -m train.data.piper_dataset",
                                                 *(argv if argv is not None else sys.argv[1:])]))
    print(json.dumps({"out": str(Path(args.out) / "speech"), "counts": meta["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
