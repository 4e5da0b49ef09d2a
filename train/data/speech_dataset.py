"""Synthetic spoken commands and questions on disk: the writer, the reader and the CLI.

    python -m train.data.speech_dataset --out DIR --train 8000 --val 500 --test 500 --seed 0

Layout (DIR is ``--out``; ``train/data/SPEECH.md`` has the same description):

    DIR/speech/meta.json                              format version, config, counts, seed, command,
                                                      espeak-ng version
    DIR/speech/{train,val,test}/manifest.jsonl        one JSON object per clip, in index order
    DIR/speech/{train,val,test}/audio/{index:06d}.wav 16-bit PCM, mono, 16 kHz

A manifest line holds: ``index``; ``path`` (of the WAV, relative to the split directory);
``transcript`` (canonical, see ``tinymm.robot.transcripts.normalize_transcript``); ``intent``
(``Intent.to_dict()``, or null); ``kind`` (command | question); ``voice`` ("en-us+m3");
``rate`` (words per minute); ``pitch`` and ``pitch_range`` (espeak-ng's 0..100);
``augmentations`` (what ``audio_augment.augment`` applied, with its parameters); ``duration``
(seconds).

Each clip is a sentence from ``speech_grammar`` read by espeak-ng in a voice drawn from its split's
``VoicePool``, resampled to 16 kHz, then augmented (noise including babble from other synthesized
sentences, reverberation, silence, speed, gain). Clip i of a split depends only on (seed, split,
i): its random streams are spawned from ``SeedSequence([seed, split id, i])`` and espeak-ng runs
with fresh state for every utterance, so a seed writes the same bytes with any number of workers.

Held-out voices and rates (``DEFAULT_CONFIG``): train and val draw from ``TRAIN_LANGUAGES`` x
``TRAIN_VARIANTS`` at rates in four bands between 90 and 240 words per minute; test draws from every
English language, including ``HELD_OUT_LANGUAGES`` that train never hears, with ``HELD_OUT_VARIANTS``
only, at the rates in the gaps between those bands. Test therefore measures generalization to voices
and speaking rates not used in training, not only to new sentences. The held-out rates lie inside the
trained range (interpolation): a model cannot be expected to extrapolate to rates far beyond any it
heard, and a user can widen the training bands to the rates their talkers use.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import multiprocessing
import shutil
import sys
import wave as wavefile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.audio_io import load_audio, resample, to_mono
from train.data.audio_augment import AugmentConfig, augment
from train.data.speech_grammar import GrammarConfig, sample_utterance
from train.data.tts import EspeakEngine, VoicePool

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}  # part of each clip's seed
SAMPLE_RATE_HZ = 16000
INT16_FULL_SCALE = 32768  # float sample x is stored as round(x * INT16_FULL_SCALE), clipped to int16
SAMPLE_WIDTH_BYTES = 2  # 16-bit PCM
DEFAULT_WORKERS = 2
DEFAULT_CHUNK_CLIPS = 16  # clips per worker task
MAX_TTS_SEED = 2**31  # seeds of espeak-ng's noise generators are drawn below this
MIN_TALK_RMS = 1e-6  # floor of the RMS a babble sentence is divided by (a silent one stays silent)

TRAIN_LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan")  # "en": British
HELD_OUT_LANGUAGES = ("en-029", "en-us-nyc", "en-gb-x-gbcwmd")
# Variants heard only in test: a spread over espeak-ng's families (m*, f*, klatt*, named voices).
HELD_OUT_VARIANTS = (
    "Andy", "Annie", "RicishayMax2", "Storm", "belinda", "boris", "edward2", "f3", "grandpa", "iven3",
    "klatt5", "m4", "michel", "mike2", "quincy", "robosoft4", "steph2", "travis", "whisperf", "zac",
)
# Variants heard in train and val ("" is each language's default voice).
TRAIN_VARIANTS = (
    "", "Alex", "Alicia", "Andrea", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed", "RicishayMax",
    "RicishayMax3", "Tweaky", "UniRobot", "adam", "anika", "anikaRobot", "announcer", "antonio", "aunty",
    "benjamin", "caleb", "croak", "david", "ed", "edward", "f1", "f2", "f4", "f5", "fast", "grandma",
    "gustave", "ian", "iven", "iven2", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt6", "linda", "m1", "m2", "m3", "m5", "m6", "m7", "m8", "marcelo", "max", "miguel", "norbert",
    "pablo", "paul", "pedro", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft5",
    "robosoft6", "robosoft7", "robosoft8", "sandro", "shelby", "steph", "steph3", "victor", "whisper",
)
TRAIN_RATES_WPM = ((90, 119), (130, 159), (170, 199), (210, 240))  # words per minute heard in train and val
HELD_OUT_RATES_WPM = ((120, 129), (160, 169), (200, 209))  # the gaps between them, heard only in test
TRAIN_POOL = VoicePool(languages=TRAIN_LANGUAGES, variants=TRAIN_VARIANTS, rates_wpm=TRAIN_RATES_WPM)
TEST_POOL = VoicePool(
    languages=TRAIN_LANGUAGES + HELD_OUT_LANGUAGES, variants=HELD_OUT_VARIANTS, rates_wpm=HELD_OUT_RATES_WPM
)


@dataclass(frozen=True)
class SpeechDataConfig:
    """Everything that decides the clips, besides the seed and the counts (stored in meta.json)."""

    sample_rate: int = SAMPLE_RATE_HZ  # Hz of the written clips
    grammar: GrammarConfig = field(default_factory=GrammarConfig)  # which sentences
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # how clips are degraded
    augment_splits: tuple[str, ...] = SPLITS  # splits whose clips are augmented
    babble_talkers: tuple[int, int] = (3, 6)  # inclusive range of sentences mixed into babble noise
    train_voices: VoicePool = TRAIN_POOL
    val_voices: VoicePool = TRAIN_POOL  # val measures fit on the training voices
    test_voices: VoicePool = TEST_POOL  # held-out voices and rates

    def __post_init__(self) -> None:
        if self.augment.sample_rate != self.sample_rate:
            raise ValueError(
                f"augment.sample_rate={self.augment.sample_rate} must equal sample_rate={self.sample_rate}"
            )
        unknown = sorted(set(self.augment_splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"augment_splits has unknown split(s) {unknown}; splits are {list(SPLITS)}")
        low, high = self.babble_talkers
        if not 1 <= low <= high:
            raise ValueError(f"babble_talkers={self.babble_talkers!r} must be (min, max) with 1 <= min <= max")

    def pool(self, split: str) -> VoicePool:
        return {"train": self.train_voices, "val": self.val_voices, "test": self.test_voices}[split]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "grammar": self.grammar.to_dict(),
            "augment": self.augment.to_dict(),
            "augment_splits": list(self.augment_splits),
            "babble_talkers": list(self.babble_talkers),
            **{f"{split}_voices": self.pool(split).to_dict() for split in SPLITS},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpeechDataConfig":
        return cls(
            sample_rate=data["sample_rate"],
            grammar=GrammarConfig.from_dict(data["grammar"]),
            augment=AugmentConfig.from_dict(data["augment"]),
            augment_splits=tuple(data["augment_splits"]),
            babble_talkers=tuple(data["babble_talkers"]),
            **{f"{split}_voices": VoicePool.from_dict(data[f"{split}_voices"]) for split in SPLITS},
        )


DEFAULT_CONFIG = SpeechDataConfig()


# ----------------------------------------------------------------------------------------------
# Writing


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write (N,) float samples in [-1, 1] as 16-bit PCM mono."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * INT16_FULL_SCALE), -INT16_FULL_SCALE, INT16_FULL_SCALE - 1)
    with wavefile.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(SAMPLE_WIDTH_BYTES)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())


@dataclass(frozen=True)
class _Chunk:
    """A worker's task: clips start..stop-1 of one split."""

    split_dir: str
    split: str
    start: int
    stop: int
    seed: int
    config: SpeechDataConfig


def _babble(
    engine: EspeakEngine, pool: VoicePool, config: SpeechDataConfig, rng: np.random.Generator, n_samples: int
) -> np.ndarray:
    """(n_samples,) float32: several other sentences, each looped from a random offset, summed."""
    mix = np.zeros(n_samples, np.float64)
    for _ in range(int(rng.integers(config.babble_talkers[0], config.babble_talkers[1] + 1))):
        text, style = sample_utterance(rng, config.grammar).spoken_text, pool.sample(rng)
        talk = engine.synthesize(text, style, sample_rate=config.sample_rate, seed=int(rng.integers(MAX_TTS_SEED)))
        talk = talk / max(float(np.sqrt(np.mean(np.square(talk, dtype=np.float64)))), MIN_TALK_RMS)
        mix += talk[(int(rng.integers(talk.size)) + np.arange(n_samples)) % talk.size]
    return mix.astype(np.float32)


def _make_clip(engine: EspeakEngine, chunk: _Chunk, index: int) -> dict[str, Any]:
    """Synthesize, augment and write clip ``index``; return its manifest line."""
    config = chunk.config
    seeds = np.random.SeedSequence([chunk.seed, SPLIT_IDS[chunk.split], index]).spawn(3)
    text_rng, voice_rng, augment_rng = (np.random.default_rng(s) for s in seeds)
    pool = config.pool(chunk.split)
    utterance = sample_utterance(text_rng, config.grammar)
    style = pool.sample(voice_rng)
    tts_seed = int(voice_rng.integers(MAX_TTS_SEED))
    samples = engine.synthesize(utterance.spoken_text, style, sample_rate=config.sample_rate, seed=tts_seed)
    applied: list[dict[str, Any]] = []
    if chunk.split in config.augment_splits:
        babble = functools.partial(_babble, engine, pool, config)
        samples, applied = augment(samples, augment_rng, config.augment, babble=babble)
    relative = f"audio/{index:06d}.wav"
    write_wav(Path(chunk.split_dir) / relative, samples, config.sample_rate)
    return {
        "index": index,
        "path": relative,
        "transcript": utterance.transcript,
        "intent": utterance.intent.to_dict(),
        "kind": utterance.kind,
        "voice": style.voice,
        "rate": style.rate_wpm,
        "pitch": style.pitch,
        "pitch_range": style.pitch_range,
        "augmentations": applied,
        "duration": round(samples.size / config.sample_rate, 4),
    }


def _write_chunk(chunk: _Chunk) -> list[dict[str, Any]]:
    engine = EspeakEngine(fresh_state=True)  # one per worker task; deterministic per utterance
    return [_make_clip(engine, chunk, index) for index in range(chunk.start, chunk.stop)]


def _check_counts(counts: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise InputError(f"unknown split(s) {unknown} in counts; splits are {list(SPLITS)}")
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"counts[{split!r}]={n!r} must be a non-negative integer number of clips")
    return {split: counts.get(split, 0) for split in SPLITS}


def write_speech_dataset(
    out_dir: str | Path,
    counts: Mapping[str, int],
    *,
    seed: int = 0,
    config: SpeechDataConfig = DEFAULT_CONFIG,
    workers: int = DEFAULT_WORKERS,
    chunk_clips: int = DEFAULT_CHUNK_CLIPS,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Write ``counts[split]`` clips per split under ``out_dir/speech``; returns meta.json's content.

    ``workers`` processes synthesize in parallel (1: in this process). An existing
    ``out_dir/speech`` is an error unless ``overwrite``, which replaces it.
    """
    counts = _check_counts(counts)
    if workers < 1 or chunk_clips < 1:
        raise InputError(f"workers={workers} and chunk_clips={chunk_clips} must be at least 1")
    try:
        for split in SPLITS:
            config.pool(split).check_available()
    except ValueError as e:
        raise InputError(f"the voice pools name voices this espeak-ng lacks: {e}") from e
    root = Path(out_dir) / "speech"
    if root.exists():
        if not overwrite:
            raise InputError(f"{root} already exists; pass overwrite=True (--force) to replace it, or another --out")
        shutil.rmtree(root)
    chunks = []
    for split in SPLITS:
        split_dir = root / split
        (split_dir / "audio").mkdir(parents=True)
        for start in range(0, counts[split], chunk_clips):
            chunks.append(_Chunk(str(split_dir), split, start, min(start + chunk_clips, counts[split]), seed, config))
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for chunk, chunk_rows in zip(chunks, _run(chunks, workers, progress, total=sum(counts.values()))):
        rows[chunk.split].extend(chunk_rows)
    for split in SPLITS:
        with open(root / split / "manifest.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows[split])
    engine = EspeakEngine()
    meta = {
        "format_version": FORMAT_VERSION,
        "sample_rate": config.sample_rate,
        "seed": seed,
        "counts": counts,
        "config": config.to_dict(),
        "command": command,
        "espeak_ng": {"version": engine.version, "native_sample_rate": engine.sample_rate},
        "layout": "speech/{split}/audio/{index:06d}.wav, speech/{split}/manifest.jsonl",
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s clips to %s", counts, root)
    return meta


def _run(chunks: Sequence[_Chunk], workers: int, progress: bool, total: int) -> Iterator[list[dict[str, Any]]]:
    """Results of ``_write_chunk`` over ``chunks``, in order, with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=total, unit="clip", disable=not progress, desc="speech") as bar:
        if workers == 1:
            for chunk in chunks:
                yield _write_chunk(chunk)
                bar.update(chunk.stop - chunk.start)
            return
        # spawn, not fork: a worker must not inherit a parent's loaded libespeak-ng (see tts.py).
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for chunk, result in zip(chunks, pool.imap(_write_chunk, chunks)):
                yield result
                bar.update(chunk.stop - chunk.start)


# ----------------------------------------------------------------------------------------------
# Reading


class SpeechDataset:
    """The clips of one split written by ``write_speech_dataset``, as (waveform, item) pairs.

    ``dataset[i]`` is ((N,) float32 mono samples at ``sample_rate`` Hz, the manifest line as a
    dict with ``path`` made absolute). ``len()`` and iteration work as for a list.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise InputError(f"split={split!r} is not one of {list(SPLITS)}")
        self.root = Path(root) / "speech"
        self.split = split
        manifest = self.root / split / "manifest.jsonl"
        if not manifest.is_file():
            raise InputError(
                f"{manifest} does not exist; write the dataset first: "
                f"python -m train.data.speech_dataset --out {root} --train N --val N --test N"
            )
        meta_path = self.root / "meta.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        except json.JSONDecodeError as e:
            raise InputError(f"{meta_path} is not valid JSON ({e.msg}, line {e.lineno}); rewrite the dataset") from e
        self.sample_rate = int(self.meta.get("sample_rate", SAMPLE_RATE_HZ))
        self.items = _read_manifest(manifest)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        item = dict(self.items[i])
        item["path"] = str((self.root / self.split / item["path"]).resolve())
        samples, rate = load_audio(item["path"])
        waveform = to_mono(samples)
        if rate != self.sample_rate:
            waveform = resample(waveform, rate, self.sample_rate)
        return waveform, item

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for i in range(len(self)):
            yield self[i]


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    items = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{line_number} is not valid JSON ({e.msg}); rewrite the dataset") from e
        if not isinstance(item, dict) or not {"path", "transcript"} <= set(item):
            raise InputError(f"{path}:{line_number} needs an object with 'path' and 'transcript', got {line[:80]!r}")
        items.append(item)
    return items


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.data.speech_dataset",
        description="Synthesize spoken robot commands and scene questions with espeak-ng (see train/data/SPEECH.md).",
    )
    parser.add_argument("--out", required=True, help="output directory; clips go to OUT/speech")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=0, metavar="N", help=f"number of {split} clips")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="synthesis processes")
    parser.add_argument("--clean-eval", action="store_true", help="do not augment val and test clips")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/speech")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = dataclasses.replace(DEFAULT_CONFIG, augment_splits=("train",)) if args.clean_eval else DEFAULT_CONFIG
    meta = write_speech_dataset(
        args.out,
        {split: getattr(args, split) for split in SPLITS},
        seed=args.seed,
        config=config,
        workers=args.workers,
        overwrite=args.force,
        progress=not args.quiet,
        command=" ".join(["python -m train.data.speech_dataset", *(argv if argv is not None else sys.argv[1:])]),
    )
    print(json.dumps({"out": str(Path(args.out) / "speech"), "counts": meta["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
