"""The clip set of the Whisper studies: synthesized commands and long read-aloud clips.

Usage:
    python benchmarks/whisper_clips.py --out runs/whisper-clips [--commands 60] [--seed 0]

Writes 16 kHz mono WAVs and ``clips.json`` (one entry per clip: file, reference text, seconds,
kind, voice):

- ``commands/cmd-NNN.wav``: robot commands and questions of the project's grammar, 1-5 s, spoken
  by espeak-ng voices and variants (never the flite or festival voices, which are reserved for
  evaluation) at varied rates and pitches;
- ``long/read-30s.wav``: free sentences joined with short pauses to just under 30 s (one full
  Whisper window);
- ``long/read-70s.wav``: the same, over 60 s (several windows: the long-form path).

Needs the train extra (espeakng-loader). Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: train/ lives in the checkout
    sys.path.insert(0, str(ROOT))

from tinymm.commands.bench import write_wav  # noqa: E402
from train.data.speech_grammar import GrammarConfig, sample_utterance  # noqa: E402
from train.data.tts import EspeakEngine, SpeakingStyle  # noqa: E402

SAMPLE_RATE_HZ = 16000
MIN_COMMAND_S, MAX_COMMAND_S = 1.0, 5.0  # the command clips' range of durations
PAUSE_S = 0.35  # silence between the sentences of a long clip
LONG_CLIPS = {"read-30s": 29.0, "read-70s": 70.0}  # name -> target seconds (30 s stays inside one window)
# Voices of the clip set: espeak-ng English accents and variants (flite and festival are reserved).
VOICES = ("en-us", "en-us+m3", "en-us+f2", "en", "en+m5", "en-gb-x-rp+f4", "en-029", "en-gb-scotland+m2")
RATES_WPM = (140, 200)  # inclusive range of speaking rates
# Free sentences for the long clips: plain read speech, outside the command grammar.
SENTENCES = (
    "The robot rolled across the kitchen floor and stopped next to the table.",
    "Every morning the delivery van arrives at the loading dock before seven.",
    "Please keep the charging station clear of boxes and loose cables.",
    "The camera on the front of the arm can see objects up to two meters away.",
    "A small battery powers the sensors while the main motor is switched off.",
    "We tested the gripper with cups, bottles, books and a few soft toys.",
    "The weather turned cold in the evening, so the garden sprinklers were turned off.",
    "Our team measured the latency of every model on three different boards.",
    "The map of the warehouse is updated whenever a shelf is moved.",
    "She asked the assistant to read the last message out loud.",
    "The train to the airport leaves from platform four every twenty minutes.",
    "After the update, the speaker answered questions much faster than before.",
    "Fresh bread from the bakery on the corner is sold out by noon.",
    "The children built a tower of wooden blocks almost as tall as the door.",
    "When the light turns green, the cart follows the line on the floor.",
    "He wrote the numbers on a sheet of paper and pinned it to the wall.",
)


def _style(rng: np.random.Generator) -> SpeakingStyle:
    return SpeakingStyle(voice=VOICES[int(rng.integers(len(VOICES)))],
                         rate_wpm=int(rng.integers(RATES_WPM[0], RATES_WPM[1] + 1)))


def _commands(engine: EspeakEngine, out: Path, count: int, rng: np.random.Generator) -> list[dict]:
    entries: list[dict] = []
    grammar = GrammarConfig()
    while len(entries) < count:
        utterance = sample_utterance(rng, grammar)
        style = _style(rng)
        samples = engine.synthesize(utterance.spoken_text, style, sample_rate=SAMPLE_RATE_HZ, seed=len(entries))
        seconds = len(samples) / SAMPLE_RATE_HZ
        if not MIN_COMMAND_S <= seconds <= MAX_COMMAND_S:
            continue
        name = f"commands/cmd-{len(entries):03d}.wav"
        write_wav(out / name, samples, SAMPLE_RATE_HZ)
        entries.append({"file": name, "text": utterance.spoken_text, "seconds": round(seconds, 3),
                        "kind": "command", "voice": style.voice, "rate_wpm": style.rate_wpm})
    return entries


def _long_clip(engine: EspeakEngine, out: Path, name: str, target_s: float, rng: np.random.Generator) -> dict:
    style = _style(rng)
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE_HZ), dtype=np.float32)
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    order = rng.permutation(len(SENTENCES))
    i = 0
    while True:
        sentence = SENTENCES[int(order[i % len(order)])]
        samples = engine.synthesize(sentence, style, sample_rate=SAMPLE_RATE_HZ, seed=i)
        length = sum(len(p) for p in pieces) + len(samples)
        if length / SAMPLE_RATE_HZ > target_s:
            break
        pieces += [samples, pause]
        texts.append(sentence)
        i += 1
    audio = np.concatenate(pieces)
    path = f"long/{name}.wav"
    write_wav(out / path, audio, SAMPLE_RATE_HZ)
    return {"file": path, "text": " ".join(texts), "seconds": round(len(audio) / SAMPLE_RATE_HZ, 3),
            "kind": "long", "voice": style.voice, "rate_wpm": style.rate_wpm}


def make_clips(out: Path, commands: int, seed: int) -> list[dict]:
    """Write the clip set under ``out``; returns the clips.json entries."""
    rng = np.random.default_rng(seed)
    (out / "commands").mkdir(parents=True, exist_ok=True)
    (out / "long").mkdir(parents=True, exist_ok=True)
    with EspeakEngine() as engine:
        entries = _commands(engine, out, commands, rng)
        entries += [_long_clip(engine, out, name, seconds, rng) for name, seconds in LONG_CLIPS.items()]
    document = {"sample_rate": SAMPLE_RATE_HZ, "seed": seed,
                "command": f"python benchmarks/whisper_clips.py --out {out} --commands {commands} --seed {seed}",
                "clips": entries}
    (out / "clips.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return entries


def load_clips(directory: Path) -> list[dict]:
    """The entries of ``directory/clips.json``, each with an absolute ``path`` added."""
    document = json.loads((directory / "clips.json").read_text(encoding="utf-8"))
    return [{**entry, "path": str(directory / entry["file"])} for entry in document["clips"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the clips and clips.json to")
    parser.add_argument("--commands", type=int, default=60, help="number of command clips (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.commands < 1:
        parser.error(f"--commands {args.commands}: give at least 1")
    entries = make_clips(args.out, args.commands, args.seed)
    total = sum(e["seconds"] for e in entries)
    print(f"wrote {len(entries)} clips ({total:.0f} s of audio) and clips.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
