"""Render the sample inputs that ship with tinymm and that ``tinymm demo`` runs every task on.

    python scripts/make_samples.py [--out tinymm/assets/samples] [--seed 0]

Writes, into OUT (replacing what is there once everything is written):

- ``images/*.png``: a handful of 64x64 scenes from the project's scene generator
  (train/data/scene_world.py, scene_render.py), rendered without augmentation, chosen to cover
  one to four objects, many shapes and colours, and a sign with a word and one with a digit;
- ``audio/*.wav``: spoken commands and spoken questions about those scenes, synthesized offline
  with espeak-ng (train/data/tts.py) in a few voices, 16 kHz mono 16-bit PCM;
- ``samples.json``: the manifest (format below) with each sample's ground truth.

Manifest (``format: "tinymm-samples"``, ``format_version: 1``)::

    {"seed": 0, "command": "...", "labels": [every zero-shot label of the scene world],
     "images": [{"id", "file", "width", "height", "about", "objects": [{"kind", "shape", "color",
                 "size", "text", "position"}], "captions": [...], "qa": [{"type", "question",
                 "answer"}], "labels": [the labels of its objects]}],
     "clips": [{"id", "file", "kind": "command" | "question", "transcript", "intent",
                "voice", "rate_wpm", "duration_s", and for a question: "image" (an image id),
                "question" (the canonical question), "answer"}]}

``qa`` holds the questions ``tinymm demo`` asks of the image (a few, of different types), all
with answers true of the scene. Everything is deterministic given ``--seed``: the same seed
writes the same bytes. Needs the train extra (espeakng-loader, OpenCV) but not torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: train/ lives in the checkout, it is not installed
    sys.path.insert(0, str(ROOT))

from tinymm.errors import TinymmError  # noqa: E402
from tinymm.robot.intent import Intent, IntentParser  # noqa: E402
from tinymm.robot.transcripts import normalize_transcript  # noqa: E402
from train.data.scene_dataset import encode_png, generate_example  # noqa: E402
from train.data.scene_language import all_labels  # noqa: E402
from train.data.scene_render import RenderConfig  # noqa: E402
from train.data.scene_world import SIGN_TEXTS, WorldConfig  # noqa: E402
from train.data.speech_dataset import write_wav  # noqa: E402
from train.data.speech_grammar import GrammarConfig, render  # noqa: E402
from train.data.tts import EspeakEngine, SpeakingStyle  # noqa: E402

logger = logging.getLogger("make_samples")

FORMAT = "tinymm-samples"
FORMAT_VERSION = 1
MANIFEST = "samples.json"
DEFAULT_OUT = ROOT / "tinymm" / "assets" / "samples"
IMAGE_SIDE_PX = 64  # the scene models' input size
SAMPLE_RATE_HZ = 16000  # the speech models' rate
SAMPLES_STREAM = 100  # scene generator stream of the first sample image (the k-th uses 100 + k): apart
# from the dataset splits' streams (0..3), so no sample is a training image
MAX_SCENE_TRIES = 500  # scene indexes searched per spec before giving up
QUESTIONS_PER_IMAGE = 2  # typed questions the demo asks of each image
SILENCE_S = 0.15  # silence around each clip, seconds (a user pauses before and after speaking)
SIGN_WORDS = tuple(t for t in SIGN_TEXTS if not t.isdigit())
SIGN_DIGITS = tuple(t for t in SIGN_TEXTS if t.isdigit())
# Question types in the order the demo prefers to ask them (rotated per image for variety).
QA_PREFERENCE = ("color", "count_shape", "shape", "exist", "count", "position", "size", "sign")


@dataclass(frozen=True)
class SceneSpec:
    """One sample image: how many objects and signs it holds."""

    id: str
    about: str  # what the image shows the demo's reader
    objects: int  # exactly this many objects
    signs: int = 0  # of which this many are signs (0 or 1)
    sign_texts: tuple[str, ...] = SIGN_TEXTS

    def world(self) -> WorldConfig:
        return WorldConfig(width=IMAGE_SIDE_PX, height=IMAGE_SIDE_PX, min_objects=self.objects,
                           max_objects=self.objects, sign_prob=1.0 if self.signs else 0.0, max_signs=self.signs,
                           sign_texts=self.sign_texts)


CLIP_SOURCES = ("fixed", "pick_up", "question")


@dataclass(frozen=True)
class ClipSpec:
    """One spoken sample: an intent said in one voice.

    ``source`` says where the intent comes from: "fixed" (``intent``), "pick_up" (pick up the
    first shape of ``image``) or "question" (the first question of ``question_type`` asked of
    ``image`` that the speech grammar can say; the clip is then about that image).
    """

    id: str
    source: str  # one of CLIP_SOURCES
    voice: str  # espeak-ng voice, from the training pool
    rate_wpm: int  # words per minute
    intent: Intent | None = None  # source "fixed"
    image: str | None = None  # sources "pick_up" and "question": a SceneSpec id
    question_type: str | None = None  # source "question": a scene QA type

    def __post_init__(self) -> None:
        if self.source not in CLIP_SOURCES:
            raise ValueError(f"clip {self.id}: source={self.source!r} is not one of {list(CLIP_SOURCES)}")
        if (self.source == "fixed") != (self.intent is not None) or (self.source == "fixed") == (self.image is not None):
            raise ValueError(f"clip {self.id}: a fixed clip gives an intent, the others an image")
        if (self.source == "question") != (self.question_type is not None):
            raise ValueError(f"clip {self.id}: question_type goes with source 'question' only")


SCENES = (
    SceneSpec("one-shape", "one shape", objects=1),
    SceneSpec("two-shapes", "two shapes", objects=2),
    SceneSpec("three-shapes", "three shapes", objects=3),
    SceneSpec("four-shapes", "four shapes", objects=4),
    SceneSpec("sign-word", "a sign with a word and a shape", objects=2, signs=1, sign_texts=SIGN_WORDS),
    SceneSpec("sign-digit", "a sign with a digit and two shapes", objects=3, signs=1, sign_texts=SIGN_DIGITS),
)
# Voices and rates of the training pool (train/data/speech_dataset.py), said clearly.
CLIPS = (
    ClipSpec("command-move", "fixed", "en-us", 160, intent=Intent("move", direction="forward", distance_m=3)),
    ClipSpec("command-turn", "fixed", "en+m3", 150, intent=Intent("turn", direction="left")),
    ClipSpec("command-pick", "pick_up", "en-us+f2", 165, image="two-shapes"),
    ClipSpec("command-stop", "fixed", "en-gb-x-rp", 170, intent=Intent("stop")),
    ClipSpec("question-color", "question", "en-us+m1", 155, image="three-shapes", question_type="color"),
    ClipSpec("question-count", "question", "en+f4", 160, image="four-shapes", question_type="count"),
    ClipSpec("question-sign", "question", "en-us", 150, image="sign-word", question_type="sign"),
)


def find_scene(spec: SceneSpec, seed: int, stream: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The first scene of ``stream`` that has exactly the objects and signs of ``spec``."""
    world, render_config = spec.world(), RenderConfig.clean()
    for index in range(MAX_SCENE_TRIES):
        image, annotation = generate_example(world, render_config, seed, stream, index)
        objects = annotation["objects"]
        if len(objects) == spec.objects and sum(o["kind"] == "sign" for o in objects) == spec.signs:
            return image, annotation
    raise RuntimeError(f"no scene with {spec.objects} objects and {spec.signs} signs in {MAX_SCENE_TRIES} tries")


def choose_qa(qa: Sequence[dict[str, Any]], rotation: int, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` QA pairs of different types, by QA_PREFERENCE rotated by ``rotation``."""
    order = QA_PREFERENCE[rotation % len(QA_PREFERENCE):] + QA_PREFERENCE[: rotation % len(QA_PREFERENCE)]
    if any(q["type"] == "sign" for q in qa):
        order = ("sign", *(t for t in order if t != "sign"))
    chosen = []
    for qa_type in order:
        match = next((q for q in qa if q["type"] == qa_type), None)
        if match is not None:
            chosen.append({"type": match["type"], "question": match["question"], "answer": match["answer"]})
        if len(chosen) == count:
            break
    return chosen


def image_entry(spec: SceneSpec, annotation: dict[str, Any], rotation: int) -> dict[str, Any]:
    keep = ("kind", "shape", "color", "size", "text", "position")
    return {
        "id": spec.id,
        "file": f"images/{spec.id}.png",
        "width": annotation["width"],
        "height": annotation["height"],
        "about": spec.about,
        "objects": [{k: o.get(k) for k in keep} for o in annotation["objects"]],
        "captions": [c["text"] for c in annotation["captions"]],
        "qa": choose_qa(annotation["qa"], rotation, QUESTIONS_PER_IMAGE),
        "all_qa": annotation["qa"],  # dropped before writing; questions are picked from it
        "labels": annotation["labels"],
    }


def spoken_question(spec: ClipSpec, image: dict[str, Any], parser: IntentParser) -> tuple[Intent, str]:
    """(intent, answer) of the first QA of ``spec.question_type`` that the speech grammar can ask."""
    for qa in image["all_qa"]:
        if qa["type"] != spec.question_type:
            continue
        intent = parser.parse(qa["question"])
        if intent is not None and intent.question == qa["question"]:
            return intent, qa["answer"]
    raise RuntimeError(f"image {image['id']!r} has no {spec.question_type} question that the speech grammar can ask")


def pick_up_intent(image: dict[str, Any]) -> Intent:
    """Pick up the image's first shape: a command that names something really in the scene."""
    shape = next(o for o in image["objects"] if o["kind"] == "shape")
    return Intent("pick_up", color=shape["color"], shape=shape["shape"])


def clip_entries(images: dict[str, dict[str, Any]], seed: int) -> list[tuple[dict[str, Any], str]]:
    """(manifest entry without file facts, text to speak) for every clip of CLIPS."""
    parser = IntentParser()
    grammar = GrammarConfig(prefix_prob=0.0, suffix_prob=0.0)
    out = []
    for number, spec in enumerate(CLIPS):
        rng = np.random.default_rng([seed, number])
        entry: dict[str, Any] = {"id": spec.id, "file": f"audio/{spec.id}.wav"}
        if spec.source == "fixed":
            intent = spec.intent
        elif spec.source == "pick_up":
            intent = pick_up_intent(images[spec.image])
        else:
            intent, answer = spoken_question(spec, images[spec.image], parser)
            entry.update(image=spec.image, question=intent.question, answer=answer)
        utterance = render(intent, rng, grammar)
        if parser.parse(utterance.transcript) != intent:
            raise RuntimeError(f"{utterance.transcript!r} does not parse back to {intent}")
        entry.update(kind=intent.kind, transcript=normalize_transcript(utterance.transcript),
                     intent=intent.to_dict(), voice=spec.voice, rate_wpm=spec.rate_wpm)
        out.append((entry, utterance.spoken_text))
    return out


def write_samples(out: Path, seed: int, command: str) -> dict[str, Any]:
    """Render everything into a staging directory next to ``out``, then swap it in; returns the manifest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}-staging-{os.getpid()}")  # hidden, and removed below
    staging.mkdir()  # with the umask's permissions: the samples are installed as they are
    try:
        (staging / "images").mkdir()
        (staging / "audio").mkdir()
        images = {}
        for rotation, spec in enumerate(SCENES):
            image, annotation = find_scene(spec, seed, SAMPLES_STREAM + rotation)
            images[spec.id] = image_entry(spec, annotation, rotation)
            (staging / images[spec.id]["file"]).write_bytes(encode_png(image))
            logger.info("%s: %s", spec.id, images[spec.id]["captions"][0])
        engine = EspeakEngine()
        clips = []
        for number, (entry, text) in enumerate(clip_entries(images, seed)):
            spec = CLIPS[number]
            style = SpeakingStyle(voice=spec.voice, rate_wpm=spec.rate_wpm)
            speech = engine.synthesize(text, style, sample_rate=SAMPLE_RATE_HZ, seed=seed)
            silence = np.zeros(int(SILENCE_S * SAMPLE_RATE_HZ), np.float32)
            samples = np.concatenate([silence, speech, silence])
            write_wav(staging / entry["file"], samples, SAMPLE_RATE_HZ)
            entry["duration_s"] = round(samples.size / SAMPLE_RATE_HZ, 3)
            clips.append(entry)
            logger.info("%s: %r in %s", entry["id"], text, spec.voice)
        for image in images.values():
            del image["all_qa"]
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "seed": seed, "command": command,
                    "espeak_ng": engine.version,
                    "labels": all_labels(), "images": list(images.values()), "clips": clips}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging`` by renames in one directory (never a half-written ``out``)."""
    old = out.with_name(f".{out.name}-old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    if old.exists():
        shutil.rmtree(old)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory to (re)write (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and the speech (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each sample")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    command = shlex.join(["python", "scripts/make_samples.py", *argv])
    try:
        manifest = write_samples(args.out, args.seed, command)
    except TinymmError as e:
        sys.stderr.write(f"make_samples: error: {e}\n")
        return e.exit_code
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    sys.stderr.write(f"wrote {len(manifest['images'])} images and {len(manifest['clips'])} clips to {args.out} "
                     f"({size / 1024:.0f} KiB)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
