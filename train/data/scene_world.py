"""The synthetic scene world: its vocabulary, the scene dataclasses and seeded scene sampling.

A scene is 1 to 4 non-overlapping objects on a background. An object is either a *shape*
(one of SHAPES, in one of COLORS, small or large) or a *sign* (a light or dark plate carrying one
of SIGN_TEXTS in a Hershey font). Everything a caption, a question or a label can say is derived
from these dataclasses, so the language is true by construction.

Geometry lives here, rasterization in ``scene_render``: coordinates are float pixels of the final
image, x to the right and y down, with (0, 0) the top-left corner of the top-left pixel. Positive
rotations turn counter-clockwise on screen (the convention of ``cv2.getRotationMatrix2D``).

Sampling is deterministic: ``sample_scene(config, rng)`` draws everything from the numpy
Generator it is given, and ``scene_rngs(seed, stream, index)`` gives the independent generators of
scene ``index`` (world, render, language), so scene i is the same whatever else is generated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# --- vocabulary -------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
# Chosen so that every pair stays far apart in RGB (closest: orange-yellow, ~87) after jitter,
# noise and JPEG.
COLORS_RGB: Mapping[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (40, 170, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 215, 35),
    "orange": (240, 130, 20),
    "purple": (140, 50, 175),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS = tuple(COLORS_RGB)
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
SIGN_TEXTS = ("STOP", "GO", "EXIT", "LEFT", "RIGHT") + tuple(str(d) for d in range(10))
PLATES_RGB: Mapping[str, tuple[int, int, int]] = {"light": (232, 232, 222), "dark": (30, 32, 40)}
PLATES = tuple(PLATES_RGB)
KINDS = ("shape", "sign")
# Hershey fonts by name (scene_render maps them to OpenCV constants).
FONTS = ("simplex", "plain", "duplex", "complex", "triplex", "complex_small", "simplex_italic", "complex_italic")
TRAIN_FONTS = ("simplex", "duplex", "complex")
HELDOUT_FONTS = ("triplex", "complex_small", "simplex_italic")
FONT_SETS: Mapping[str, tuple[str, ...]] = {"train": TRAIN_FONTS, "heldout": HELDOUT_FONTS, "all": FONTS}
BACKGROUND_KINDS = ("flat", "gradient", "noise")

# --- geometry, as fractions of the image's shorter side unless said otherwise ---------------------
MIN_IMAGE_SIDE_PX = 32  # smaller images cannot hold a legible sign
MAX_OBJECTS = 4
SMALL_RADIUS_FRAC = (0.11, 0.13)  # range of a small shape's radius
LARGE_RADIUS_FRAC = (0.18, 0.21)  # range of a large shape's radius (no overlap with small)
SIGN_TEXT_HEIGHT_FRAC = (0.15, 0.18)  # range of a sign's cap height
SIGN_PAD_FRAC = 0.4  # plate padding around the text, as a fraction of the text height
SIGN_CHAR_WIDTH_FRAC = 0.85  # room per character, as a fraction of the text height
SIGN_MAX_WIDTH_FRAC = 0.9  # a plate is never wider than this fraction of the image width
BORDER_FRAC = 0.02  # objects keep this far from the image edge
GAP_FRAC = 0.03  # objects' bounding boxes keep this far from each other
POSITION_MARGIN_FRAC = 0.04  # centres this close to a third line (fraction of that axis) have no position
UNCLEAR_POSITION = "unclear"  # answer to "where is ...?" for a centre on the line between two named positions
RELATION_MARGIN_FRAC = 0.1  # a relation holds when the centres differ by more than this along its axis
RELATION_DOMINANCE = 2.0  # ...and is *clear* when that is this many times the other axis' difference
MAX_PLACEMENT_TRIES = 60  # rejection-sampling budget per object
MAX_SCENE_TRIES = 20  # backgrounds tried before a config is declared unable to place anything
CIRCLE_VERTICES = 64

# --- backgrounds, in 0-255 levels ----------------------------------------------------------------
BG_GRAY_RANGE = (45.0, 200.0)  # base gray level of a background
BG_TINT = 35.0  # per-channel tint added to the gray level
TEXTURE_CELLS_RANGE = (3, 9)  # noise texture resolution, cells across the image
SQRT3 = math.sqrt(3.0)  # a gray texture of amplitude a moves an RGB colour by at most a*sqrt(3)

# Unit outlines (circumradius about 1, centred on the origin, y down).
_W, _L = 0.34, 1.0  # cross arm half-width and length
_UNIT_OUTLINES: Mapping[str, np.ndarray] = {
    "circle": np.stack(
        [np.cos(np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)),
         np.sin(np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False))], axis=1),
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    # equilateral, circumradius 1.15, shifted so that its bounding box is centred
    "triangle": np.array([(0.0, -1.15), (0.996, 0.575), (-0.996, 0.575)]) + (0.0, 0.2875),
    "star": np.array([
        (r * math.cos(-math.pi / 2 + k * math.pi / 5), r * math.sin(-math.pi / 2 + k * math.pi / 5))
        for k, r in zip(range(10), [1.12, 0.48] * 5)
    ]) + (0.0, 0.1),
    "cross": np.array([(-_W, -_L), (_W, -_L), (_W, -_W), (_L, -_W), (_L, _W), (_W, _W), (_W, _L),
                       (-_W, _L), (-_W, _W), (-_L, _W), (-_L, -_W), (-_W, -_W)]),
    "diamond": np.array([(0.0, -1.12), (0.72, 0.0), (0.0, 1.12), (-0.72, 0.0)]),
}


def _check_subset(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value or any(v not in allowed for v in value):
        raise ValueError(f"world.{name}={value!r} must be a non-empty tuple drawn from {list(allowed)}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"world.{name}={value!r} must be a number in [0, 1]")


def _check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"world.{name}={value!r} must be a non-negative number")


@dataclass(frozen=True)
class WorldConfig:
    """What a scene may contain. Every field is validated once, here."""

    width: int = 64  # image width in pixels
    height: int = 64  # image height in pixels
    min_objects: int = 1  # fewest objects per scene
    max_objects: int = 4  # most objects per scene (at most MAX_OBJECTS)
    sign_prob: float = 0.25  # chance that each object is a sign, while fewer than max_signs are placed
    max_signs: int = 1  # most signs per scene
    shapes: tuple[str, ...] = SHAPES  # shapes to draw from (a subset holds combinations out)
    colors: tuple[str, ...] = COLORS  # colours to draw from
    sign_texts: tuple[str, ...] = SIGN_TEXTS  # texts to draw from
    fonts: tuple[str, ...] = TRAIN_FONTS  # Hershey fonts for signs; HELDOUT_FONTS for a held-out test
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS  # background kinds to draw from
    max_rotation_deg: float = 15.0  # objects turn by up to this much either way
    gradient_delta_max: float = 70.0  # largest per-channel difference between a gradient's ends, 0-255
    texture_amplitude_max: float = 16.0  # largest noise-texture amplitude, 0-255 gray levels
    color_jitter: int = 12  # per-channel uniform jitter of an object's RGB, 0-255 levels
    contrast_margin: float = 90.0  # smallest RGB distance between an object and its local background

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIDE_PX:
                raise ValueError(f"world.{name}={value!r} must be an integer >= {MIN_IMAGE_SIDE_PX} pixels")
        for name in ("min_objects", "max_objects", "max_signs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"world.{name}={value!r} must be a non-negative integer")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"world needs 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        _check_fraction("sign_prob", self.sign_prob)
        _check_subset("shapes", self.shapes, SHAPES)
        _check_subset("colors", self.colors, COLORS)
        _check_subset("sign_texts", self.sign_texts, SIGN_TEXTS)
        _check_subset("fonts", self.fonts, FONTS)
        _check_subset("backgrounds", self.backgrounds, BACKGROUND_KINDS)
        for name in ("max_rotation_deg", "gradient_delta_max", "texture_amplitude_max", "color_jitter",
                     "contrast_margin"):
            _check_non_negative(name, getattr(self, name))
        if self.max_rotation_deg > 30:
            raise ValueError(f"world.max_rotation_deg={self.max_rotation_deg} must be <= 30 "
                             "(a square turned 45 degrees would look like a diamond)")

    @property
    def side(self) -> int:
        """The image's shorter side in pixels; sizes scale with it."""
        return min(self.width, self.height)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WorldConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Background:
    """A background: flat colour, linear gradient, or flat colour plus a smooth gray texture."""

    kind: str  # one of BACKGROUND_KINDS
    rgb0: tuple[float, float, float]  # base colour (gradient start), 0-255
    rgb1: tuple[float, float, float]  # gradient end (equal to rgb0 unless kind == "gradient")
    angle_deg: float = 0.0  # gradient direction, counter-clockwise from +x
    texture_amplitude: float = 0.0  # noise texture amplitude, 0-255 gray levels (kind == "noise")
    texture_cells: int = 0  # noise texture resolution in cells across the image
    texture_seed: int = 0  # seed of the texture's own Generator


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene. Shapes fill shape/color/size/radius; signs fill text/plate/font/plate_size."""

    kind: str  # "shape" or "sign"
    center: tuple[float, float]  # (x, y) in pixels
    rotation_deg: float  # counter-clockwise turn about the centre
    rgb: tuple[int, int, int]  # fill colour (shapes) or plate colour (signs), 0-255
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    radius: float | None = None  # pixels; outline = unit outline * radius
    text: str | None = None
    plate: str | None = None  # "light" or "dark"
    font: str | None = None  # one of FONTS
    plate_size: tuple[float, float] | None = None  # (width, height) of the plate in pixels
    text_height: float | None = None  # cap height of the text in pixels


@dataclass(frozen=True)
class Scene:
    """A whole scene: image size, background and objects (the ground truth of every annotation)."""

    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]

    @property
    def side(self) -> int:
        return min(self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; each object also gets its derived bbox and position."""
        objects = []
        for obj in self.objects:
            d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None}
            d["bbox"] = [round(float(v), 2) for v in object_bbox(obj)]
            d["position"] = position_of(obj, self.width, self.height)
            objects.append(d)
        return {"width": self.width, "height": self.height,
                "background": {f.name: getattr(self.background, f.name) for f in dataclasses.fields(Background)},
                "objects": objects}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Scene":
        """Inverse of to_dict (derived keys are ignored)."""
        fields = {f.name for f in dataclasses.fields(SceneObject)}
        objects = tuple(
            SceneObject(**{k: tuple(v) if isinstance(v, list) else v for k, v in o.items() if k in fields})
            for o in data["objects"]
        )
        bg = {k: tuple(v) if isinstance(v, list) else v for k, v in data["background"].items()}
        return cls(int(data["width"]), int(data["height"]), Background(**bg), objects)


# --- derived geometry ------------------------------------------------------------------------------
def _rotate(points: np.ndarray, angle_deg: float) -> np.ndarray:
    """Turn (N, 2) points counter-clockwise on screen (y down) about the origin."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.stack([c * points[:, 0] + s * points[:, 1], -s * points[:, 0] + c * points[:, 1]], axis=1)


def object_outline(obj: SceneObject) -> np.ndarray:
    """The object's outline polygon as (N, 2) float64 (x, y) pixels: the shape, or the sign's plate."""
    if obj.kind == "sign":
        w, h = obj.plate_size
        local = np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])
    else:
        local = _UNIT_OUTLINES[obj.shape] * obj.radius
    return _rotate(local, obj.rotation_deg) + np.asarray(obj.center)


def object_bbox(obj: SceneObject) -> tuple[float, float, float, float]:
    """Axis-aligned box (x0, y0, x1, y1) in pixels around the object's outline."""
    pts = object_outline(obj)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _third(value: float, extent: float) -> int | None:
    """0, 1 or 2 for the third of [0, extent) holding value; None within the margin of a third line."""
    margin = POSITION_MARGIN_FRAC * extent
    for k, line in enumerate((extent / 3, 2 * extent / 3)):
        if abs(value - line) < margin:
            return None
        if value < line:
            return k
    return 2


_CELL_POSITIONS = {(1, 1): "center", (0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom"}


def _cell(obj: SceneObject, width: int, height: int) -> tuple[int | None, int | None]:
    """(column, row) thirds of the object's centre; None on an axis where it is near a third line."""
    return _third(obj.center[0], width), _third(obj.center[1], height)


def _cell_position(col: int | None, row: int | None) -> str | None:
    return None if col is None or row is None else _CELL_POSITIONS.get((col, row))


def position_of(obj: SceneObject, width: int, height: int) -> str | None:
    """The object's position word from its centre's third of the image, or None when ambiguous.

    The centre third is "center", the middle-row side thirds "left"/"right", the middle-column
    top/bottom thirds "top"/"bottom". Corners, and centres near a third line, have no position.
    """
    return _cell_position(*_cell(obj, width, height))


def position_answer(obj: SceneObject, width: int, height: int) -> str | None:
    """What "where is it?" answers: the position word, UNCLEAR_POSITION, or None when not asked.

    A centre within the margin of the third line between two named positions (left|center,
    center|right, top|center, center|bottom) has no position; saying so teaches the model the
    margin band that captions only teach by leaving it out. Corners, and lines next to a corner,
    are not asked about.
    """
    col, row = _cell(obj, width, height)
    if (col is None and row == 1) or (row is None and col == 1):
        return UNCLEAR_POSITION
    return _cell_position(col, row)


def _displacements(a: SceneObject, b: SceneObject) -> dict[str, tuple[float, float]]:
    """Per relation: (displacement along its axis, absolute displacement along the other axis)."""
    dx = b.center[0] - a.center[0]
    dy = b.center[1] - a.center[1]
    return {"left of": (dx, abs(dy)), "right of": (-dx, abs(dy)), "above": (dy, abs(dx)), "below": (-dy, abs(dx))}


def relation_holds(a: SceneObject, b: SceneObject, relation: str, side: int) -> bool:
    """True when "a <relation> b" is true: the centres differ by more than the margin along its axis."""
    if relation not in RELATIONS:
        raise ValueError(f"relation {relation!r} is not one of {list(RELATIONS)}")
    along, _ = _displacements(a, b)[relation]
    return along > RELATION_MARGIN_FRAC * side


def clear_relation(a: SceneObject, b: SceneObject, side: int) -> str | None:
    """The one relation that clearly holds from a to b (dominant axis), or None if it is diagonal."""
    for relation, (along, across) in _displacements(a, b).items():
        if along > RELATION_MARGIN_FRAC * side and along >= RELATION_DOMINANCE * across:
            return relation
    return None


# --- background colour, shared with the renderer --------------------------------------------------
def gradient_t(bg: Background, xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Gradient parameter in [0, 1] at pixel coordinates xs, ys (any matching shapes, float)."""
    a = math.radians(bg.angle_deg)
    c, s = math.cos(a), -math.sin(a)  # counter-clockwise on screen
    extent = abs(width * c) + abs(height * s)
    t = ((xs - width / 2) * c + (ys - height / 2) * s) / extent + 0.5
    return np.clip(t, 0.0, 1.0)


def background_contrast(bg: Background, rgb: np.ndarray | Sequence[float], box: tuple[float, float, float, float],
                        width: int, height: int) -> np.ndarray:
    """Smallest RGB distance between each colour and the background anywhere inside box (x0, y0, x1, y1).

    rgb is one colour (3,) or several (N, 3), 0-255; returns a float64 array of shape () or (N,).
    """
    c0, c1 = np.asarray(bg.rgb0, float), np.asarray(bg.rgb1, float)
    x0, y0, x1, y1 = box
    ts = gradient_t(bg, np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]), width, height)
    # Along the box the background runs over the colour segment [c(tmin), c(tmax)]; the texture
    # moves it by at most amplitude * sqrt(3).
    p, q = c0 + ts.min() * (c1 - c0), c0 + ts.max() * (c1 - c0)
    target = np.asarray(rgb, float)
    seg = q - p
    denom = float(seg @ seg)
    u = np.zeros(target.shape[:-1]) if denom == 0 else np.clip((target - p) @ seg / denom, 0.0, 1.0)
    nearest = p + u[..., None] * seg
    return np.linalg.norm(target - nearest, axis=-1) - bg.texture_amplitude * SQRT3


# --- sampling ------------------------------------------------------------------------------------
def scene_rngs(seed: int, stream: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent (world, render, language) Generators of scene `index` in split `stream`.

    Seeded from the tuple (seed, stream, index) rather than seed + index, so that seeds and splits
    never share scenes; scene i does not depend on how many scenes are made or in what order.
    """
    children = np.random.SeedSequence([int(seed), int(stream), int(index)]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def _sample_background(config: WorldConfig, rng: np.random.Generator) -> Background:
    kind = str(rng.choice(config.backgrounds))
    gray = rng.uniform(*BG_GRAY_RANGE)
    rgb0 = np.clip(gray + rng.uniform(-BG_TINT, BG_TINT, 3), 0, 255)
    if kind == "gradient":
        rgb1 = np.clip(rgb0 + rng.uniform(-config.gradient_delta_max, config.gradient_delta_max, 3), 0, 255)
        return Background(kind, tuple(map(float, rgb0)), tuple(map(float, rgb1)), float(rng.uniform(0, 360)))
    if kind == "noise":
        return Background(
            kind, tuple(map(float, rgb0)), tuple(map(float, rgb0)),
            texture_amplitude=float(rng.uniform(0.3, 1.0) * config.texture_amplitude_max),
            texture_cells=int(rng.integers(TEXTURE_CELLS_RANGE[0], TEXTURE_CELLS_RANGE[1] + 1)),
            texture_seed=int(rng.integers(2**31)),
        )
    return Background(kind, tuple(map(float, rgb0)), tuple(map(float, rgb0)))


def _sample_body(config: WorldConfig, want_sign: bool, rng: np.random.Generator) -> dict[str, Any]:
    """Everything about a new object except where it goes and its colour."""
    side = config.side
    rotation = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    if want_sign:
        text = str(rng.choice(config.sign_texts))
        text_h = float(rng.uniform(*SIGN_TEXT_HEIGHT_FRAC)) * side
        pad = SIGN_PAD_FRAC * text_h
        plate_h = text_h + 2 * pad
        plate_w = min(max(len(text) * SIGN_CHAR_WIDTH_FRAC * text_h + 2 * pad, plate_h),
                      SIGN_MAX_WIDTH_FRAC * config.width)
        # Signs tilt half as much as shapes: text turned far is not what cameras see on plates.
        return {"kind": "sign", "rotation_deg": rotation / 2, "text": text, "font": str(rng.choice(config.fonts)),
                "plate_size": (float(plate_w), float(plate_h)), "text_height": text_h}
    size = str(rng.choice(SIZES))
    lo, hi = SMALL_RADIUS_FRAC if size == "small" else LARGE_RADIUS_FRAC
    return {"kind": "shape", "rotation_deg": rotation, "shape": str(rng.choice(config.shapes)), "size": size,
            "radius": float(rng.uniform(lo, hi)) * side}


def _boxes_apart(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(config: WorldConfig, bg: Background, placed: list[SceneObject], body: dict[str, Any],
           rng: np.random.Generator) -> SceneObject | None:
    """Rejection-sample a centre and a colour for body; None when MAX_PLACEMENT_TRIES all fail."""
    side, w, h = config.side, config.width, config.height
    border, gap = BORDER_FRAC * side, GAP_FRAC * side
    boxes = [object_bbox(o) for o in placed]
    names = PLATES if body["kind"] == "sign" else config.colors
    palette = np.array([(PLATES_RGB if body["kind"] == "sign" else COLORS_RGB)[n] for n in names], float)
    local = object_bbox(SceneObject(center=(0.0, 0.0), rgb=(0, 0, 0), **body))  # box around a centre at 0
    for attempt in range(MAX_PLACEMENT_TRIES):
        if attempt == MAX_PLACEMENT_TRIES // 2 and body["kind"] == "shape" and body["size"] == "large":
            body = {**body, "size": "small", "radius": float(rng.uniform(*SMALL_RADIUS_FRAC)) * side}
            local = object_bbox(SceneObject(center=(0.0, 0.0), rgb=(0, 0, 0), **body))
        x0, y0, x1, y1 = local
        lo_x, hi_x = border - x0, w - border - x1
        lo_y, hi_y = border - y0, h - border - y1
        if lo_x > hi_x or lo_y > hi_y:
            continue
        center = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
        box = (x0 + center[0], y0 + center[1], x1 + center[0], y1 + center[1])
        if not all(_boxes_apart(box, other, gap) for other in boxes):
            continue
        ok = np.flatnonzero(background_contrast(bg, palette, box, w, h) >= config.contrast_margin)
        if ok.size == 0:
            continue
        name = names[int(ok[rng.integers(ok.size)])]
        if body["kind"] == "sign":
            return SceneObject(center=center, rgb=PLATES_RGB[name], plate=name, **body)
        jitter = rng.integers(-config.color_jitter, config.color_jitter + 1, 3)
        rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS_RGB[name]) + jitter, 0, 255))
        return SceneObject(center=center, rgb=rgb, color=name, **body)
    return None


def sample_scene(config: WorldConfig, rng: np.random.Generator) -> Scene:
    """Draw one scene: background, then objects placed one by one without overlap.

    An object that finds no free, contrasting spot within MAX_PLACEMENT_TRIES is dropped (a large
    shape first retries as a small one), so a scene can hold fewer objects than drawn, never zero.
    """
    for _ in range(MAX_SCENE_TRIES):
        bg = _sample_background(config, rng)
        n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
        objects: list[SceneObject] = []
        n_signs = 0
        for _ in range(n_objects):
            want_sign = n_signs < config.max_signs and rng.random() < config.sign_prob
            obj = _place(config, bg, objects, _sample_body(config, want_sign, rng), rng)
            if obj is None:
                logger.debug("dropped an object that found no free spot after %d tries", MAX_PLACEMENT_TRIES)
                continue
            n_signs += obj.kind == "sign"
            objects.append(obj)
        if objects:  # else no colour contrasted with this background: draw another
            return Scene(config.width, config.height, bg, tuple(objects))
    raise ValueError(
        f"no object could be placed in {MAX_SCENE_TRIES} backgrounds with colors={config.colors} and "
        f"contrast_margin={config.contrast_margin}: allow more colours or lower contrast_margin"
    )
