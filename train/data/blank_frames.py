"""Frames that hold none of the scene objects, with the captions and answers that say so.

A model trained only on scenes with objects describes objects in every frame it is shown: a black
frame has "one" object, noise carries a sign. These frames teach it the empty answer. Each kind
is drawn with random colours, scales and angles:

- ``background``: a scene background of the world (flat, gradient or texture) with no object,
  through the scene renderer's blur, noise and JPEG;
- ``flat``: one colour anywhere in RGB, black, white and grays included;
- ``noise``: pixel noise (Gaussian, uniform or salt-and-pepper, colour or gray), sometimes blurred;
- ``fractal``: 1/f noise in colour (the spectrum of natural images, without their content);
- ``gradient``: linear or radial, between two or three colours;
- ``checkerboard`` and ``stripes``: periodic patterns at any period and angle;
- ``scribbles``: thin lines and arcs, clutter that is not a scene object;
- ``specks``: dots far smaller than the smallest scene object.

Captions say there are no objects ("there are no objects", parsed as the fact count 0); "how
many" questions are answered "zero", "is there" questions "no", and questions about an object's
colour, shape, size, position or sign text "none".

``BlankFrames(count, size, seed, stream)`` has the interface of ``SceneDataset`` that training
reads (``annotations``, ``len``, ``[i] -> (image, annotation)``); frame i depends only on (seed,
stream, i) and is drawn when it is read, so nothing is written to disk. ``SceneMix`` puts scenes
and blank frames behind one index.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from train.data.scene_language import PLURALS
from train.data.scene_render import RenderConfig, render_scene
from train.data.scene_world import COLORS, SHAPES, WorldConfig, sample_scene

BLANK_KINDS = ("background", "flat", "noise", "fractal", "gradient", "checkerboard", "stripes", "scribbles",
               "specks")
EMPTY_CAPTIONS = ("there are no objects", "no objects", "a scene with no objects")
ZERO, NO, NONE = "zero", "no", "none"  # the answers of a frame without objects
BLANK_STREAM_OFFSET = 100  # blank frames of split stream s use stream s + this: never a scene's seed
QUESTIONS_PER_TYPE = 2  # questions of each attribute type asked of one frame


def _colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB anywhere in the cube; one draw in four is a gray level (black and white included)."""
    if rng.random() < 0.25:
        return np.full(3, rng.choice([0.0, 255.0, rng.uniform(0, 255)]), np.float32)
    return rng.uniform(0, 255, 3).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): xs (1, size), ys (size, 1)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return axis[None, :], axis[:, None]


def _along(size: int, angle: float) -> np.ndarray:
    """(size, size) float32 coordinate along direction ``angle`` (radians), in [-0.71, 0.71]."""
    xs, ys = _grid(size)
    return (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + t[..., None] * (b - a)


def _noise(size: int, rng: np.random.Generator) -> np.ndarray:
    channels = 3 if rng.random() < 0.6 else 1
    mean, spread = rng.uniform(40, 215), rng.uniform(10, 120)
    form = rng.integers(3)
    if form == 0:
        img = rng.normal(mean, spread, (size, size, channels))
    elif form == 1:
        img = rng.uniform(mean - spread, mean + spread, (size, size, channels))
    else:
        img = np.full((size, size, channels), mean)
        hits = rng.random((size, size)) < rng.uniform(0.02, 0.3)
        img[hits] = rng.choice([0.0, 255.0], (int(hits.sum()), 1))
    img = np.broadcast_to(img, (size, size, 3)).astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    return img


def _fractal(size: int, rng: np.random.Generator) -> np.ndarray:
    """Colour noise with a 1/f^beta amplitude spectrum, stretched to a random range."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx ** 2 + fy ** 2)
    radius[0, 0] = 1.0
    amplitude = radius ** -rng.uniform(1.0, 2.2)
    out = np.empty((size, size, 3), np.float32)
    base, spread = rng.uniform(30, 225, 3), rng.uniform(30, 140)
    for c in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(size, size))
        field = (field - field.mean()) / (field.std() + 1e-9)
        out[..., c] = base[c] + spread * field
    return out


def _gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:  # radial, from a random centre
        xs, ys = _grid(size)
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / rng.uniform(0.5, 1.4)
    else:
        t = _along(size, rng.uniform(0, 2 * np.pi)) + 0.71
        t = t / 1.42
    t = np.clip(t, 0, 1).astype(np.float32)
    if rng.random() < 0.3:  # three colours
        a, b, c = _colour(rng), _colour(rng), _colour(rng)
        return np.where((t < 0.5)[..., None], _blend(a, b, 2 * t), _blend(b, c, 2 * t - 1))
    return _blend(_colour(rng), _colour(rng), t)


def _periodic(size: int, rng: np.random.Generator, checker: bool) -> np.ndarray:
    period = rng.uniform(3, size / 1.5) / size
    angle = rng.uniform(0, np.pi)
    u = _along(size, angle) / period
    if checker:
        v = _along(size, angle + np.pi / 2) / period
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif rng.random() < 0.5:
        t = (np.floor(u) % 2).astype(np.float32)
    else:
        t = (0.5 + 0.5 * np.sin(2 * np.pi * u)).astype(np.float32)
    return _blend(_colour(rng), _colour(rng), t)


def _scribbles(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.ascontiguousarray(np.broadcast_to(_colour(rng), (size, size, 3)))
    for _ in range(int(rng.integers(2, 12))):
        colour = tuple(float(v) for v in _colour(rng))
        thickness = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            p, q = rng.integers(-size // 4, size + size // 4, (2, 2))
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, thickness, cv2.LINE_AA)
        else:
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(int(v) for v in rng.integers(size // 6, size, 2))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start, start + rng.uniform(30, 160),
                        colour, thickness, cv2.LINE_AA)
    return img


def _specks(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.ascontiguousarray(np.broadcast_to(_colour(rng), (size, size, 3)))
    for _ in range(int(rng.integers(5, 60))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, centre, int(rng.integers(0, max(2, size // 40) + 1)),
                   tuple(float(v) for v in _colour(rng)), -1, cv2.LINE_AA)
    return img


def blank_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 RGB frame of ``kind`` (one of BLANK_KINDS) without a scene object."""
    if kind == "background":
        scene = sample_scene(WorldConfig(width=size, height=size), rng)  # its background, without its objects
        return render_scene(dataclasses.replace(scene, objects=()), RenderConfig(), rng)[0]
    makers = {
        "flat": lambda: np.broadcast_to(_colour(rng), (size, size, 3)),
        "noise": lambda: _noise(size, rng),
        "fractal": lambda: _fractal(size, rng),
        "gradient": lambda: _gradient(size, rng),
        "checkerboard": lambda: _periodic(size, rng, checker=True),
        "stripes": lambda: _periodic(size, rng, checker=False),
        "scribbles": lambda: _scribbles(size, rng),
        "specks": lambda: _specks(size, rng),
    }
    if kind not in makers:
        raise ValueError(f"blank frame kind {kind!r} is not one of {list(BLANK_KINDS)}")
    return np.ascontiguousarray(np.clip(np.rint(makers[kind]()), 0, 255).astype(np.uint8))


def blank_qa(rng: np.random.Generator) -> list[dict[str, str]]:
    """The questions of ``scene_language.make_qa``'s forms, answered for a frame without objects."""
    def pick(seq: Sequence[str]) -> list[str]:
        return [seq[i] for i in rng.permutation(len(seq))[:QUESTIONS_PER_TYPE]]

    qa = [{"type": "count", "question": "how many objects are there?", "answer": ZERO}]
    qa += [{"type": "count_shape", "question": f"how many {PLURALS[s]} are there?", "answer": ZERO} for s in pick(SHAPES)]
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    for i in rng.permutation(len(pairs))[:QUESTIONS_PER_TYPE]:
        color, shape = pairs[i]
        article = "an" if color[0] in "aeiou" else "a"
        qa.append({"type": "exist", "question": f"is there {article} {color} {shape}?", "answer": NO})
        qa.append({"type": "size", "question": f"what size is the {color} {shape}?", "answer": NONE})
        qa.append({"type": "position", "question": f"where is the {color} {shape}?", "answer": NONE})
    qa += [{"type": "color", "question": f"what color is the {s}?", "answer": NONE} for s in pick(SHAPES)]
    qa += [{"type": "shape", "question": f"what shape is the {c} object?", "answer": NONE} for c in pick(COLORS)]
    qa.append({"type": "sign", "question": "what does the sign say?", "answer": NONE})
    qa.append({"type": "position", "question": "where is the sign?", "answer": NONE})
    return qa


def blank_annotation(kind: str, size: int, index: int, rng: np.random.Generator) -> dict[str, Any]:
    """The annotation of a frame without objects, in the scene dataset's form (no objects, no labels)."""
    return {
        "id": index, "index": index, "image": None, "width": size, "height": size, "blank_kind": kind,
        "background": None, "objects": [], "relations": [],
        "captions": [{"text": text, "facts": [["count", ["any"], 0]]} for text in EMPTY_CAPTIONS],
        "qa": blank_qa(rng), "labels": [], "render": None,
    }


def _rngs(seed: int, stream: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    children = np.random.SeedSequence([int(seed), BLANK_STREAM_OFFSET + int(stream), int(index)]).spawn(2)
    return np.random.default_rng(children[0]), np.random.default_rng(children[1])


class BlankFrames:
    """``count`` frames without scene objects, kinds in turn; SceneDataset's reading interface."""

    def __init__(self, count: int, size: int, seed: int = 0, stream: int = 0,
                 kinds: Sequence[str] = BLANK_KINDS) -> None:
        unknown = sorted(set(kinds) - set(BLANK_KINDS))
        if unknown or not kinds:
            raise ValueError(f"blank frame kinds {unknown or list(kinds)} are not a non-empty subset of {list(BLANK_KINDS)}")
        self.size, self.seed, self.stream, self.kinds = size, seed, stream, tuple(kinds)
        self.annotations = [blank_annotation(self.kind(i), size, i, _rngs(seed, stream, i)[1]) for i in range(count)]

    def kind(self, index: int) -> str:
        return self.kinds[index % len(self.kinds)]

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        annotation = dict(self.annotations[index])  # IndexError past the end
        annotation["captions"] = [{"text": c["text"], "facts": frozenset({("count", ("any",), 0)})}
                                  for c in annotation["captions"]]
        return blank_image(self.kind(index), self.size, _rngs(self.seed, self.stream, index)[0]), annotation


class SceneMix:
    """Scenes, then blank frames, behind one index (the reading interface of SceneDataset)."""

    def __init__(self, scenes: Any, blanks: BlankFrames) -> None:
        self.scenes, self.blanks = scenes, blanks
        self.annotations: list[Mapping[str, Any]] = [*scenes.annotations, *blanks.annotations]

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        n = len(self.scenes)
        return self.scenes[index] if index < n else self.blanks[index - n]


__all__ = ["BLANK_KINDS", "EMPTY_CAPTIONS", "BlankFrames", "SceneMix", "blank_image", "blank_qa", "blank_annotation"]
