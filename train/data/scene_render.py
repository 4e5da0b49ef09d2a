"""Rasterize a scene with OpenCV, then augment it (blur, Gaussian noise, JPEG artifacts).

``render_scene(scene, config, rng)`` returns an (H, W, 3) uint8 RGB image. Shapes are anti-aliased
polygons with sub-pixel vertices; signs are a plate, a thin border and text from ``cv2.putText``
(Hershey fonts), drawn upright on a patch and turned into place with ``cv2.warpAffine``. With
``render_scale`` k > 1 the scene is rasterized at k times the size and shrunk with INTER_AREA
(supersampling); k = 1 rasterizes directly, a different look used for held-out tests.

All randomness comes from the Generator passed in (the augmentation strengths are drawn first,
always in the same order, so that switching one augmentation off does not change the others) and
from the background's own texture seed: the same scene, config and seed give identical bytes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from train.data.scene_world import Background, Scene, SceneObject, gradient_t, object_outline

FONT_CODES = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "plain": cv2.FONT_HERSHEY_PLAIN,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex_small": cv2.FONT_HERSHEY_COMPLEX_SMALL,
    "simplex_italic": cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
    "complex_italic": cv2.FONT_HERSHEY_COMPLEX | cv2.FONT_ITALIC,
}
TEXT_RGB = {"light": (20, 20, 20), "dark": (240, 240, 240)}  # text and border colour per plate
SUBPIXEL_BITS = 4  # cv2 drawing shift: vertices at 1/16 pixel
SUBPIXEL = 1 << SUBPIXEL_BITS
STROKE_PER_TEXT_HEIGHT = 1 / 7  # Hershey stroke thickness in pixels per pixel of cap height
BORDER_PER_PLATE_HEIGHT = 0.07  # plate border thickness as a fraction of the plate height
MIN_BLUR_SIGMA_PX = 0.1  # blurs weaker than this are skipped


@dataclass(frozen=True)
class RenderConfig:
    """How a scene is rasterized and how strongly it is augmented. Validated once, here."""

    render_scale: int = 2  # rasterize at this multiple, then INTER_AREA down; 1 = direct rasterization
    blur_prob: float = 0.3  # chance of a Gaussian blur
    blur_sigma_max: float = 0.8  # blur sigma drawn from [0, this], output pixels
    noise_sigma_max: float = 6.0  # Gaussian pixel-noise sigma drawn from [0, this], 0-255 levels
    jpeg_prob: float = 0.5  # chance of a JPEG round trip
    jpeg_quality_min: int = 40  # JPEG quality drawn from [min, max]
    jpeg_quality_max: int = 95

    def __post_init__(self) -> None:
        scale = self.render_scale
        if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 8:
            raise ValueError(f"render.render_scale={self.render_scale!r} must be an integer in 1..8")
        for name in ("blur_prob", "jpeg_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"render.{name}={value!r} must be a probability in [0, 1]")
        for name in ("blur_sigma_max", "noise_sigma_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"render.{name}={value!r} must be a non-negative number")
        lo, hi = self.jpeg_quality_min, self.jpeg_quality_max
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 100):
            raise ValueError(f"render needs integers 1 <= jpeg_quality_min <= jpeg_quality_max <= 100, got {lo}, {hi}")

    @classmethod
    def clean(cls, render_scale: int = 2) -> "RenderConfig":
        """No blur, noise or JPEG: exact colours, for tests and inspection."""
        return cls(render_scale=render_scale, blur_prob=0.0, blur_sigma_max=0.0, noise_sigma_max=0.0, jpeg_prob=0.0)

    @classmethod
    def from_dict(cls, data: dict) -> "RenderConfig":
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RenderInfo:
    """The augmentation actually applied to one image (stored in its annotation)."""

    render_scale: int
    blur_sigma: float  # 0 when not blurred
    noise_sigma: float  # 0-255 levels
    jpeg_quality: int  # 0 when no JPEG round trip


def render_background(bg: Background, width: int, height: int, scale: int = 1) -> np.ndarray:
    """The background alone as (height*scale, width*scale, 3) uint8 RGB."""
    h, w = height * scale, width * scale
    c0, c1 = np.asarray(bg.rgb0, np.float32), np.asarray(bg.rgb1, np.float32)
    if bg.kind == "gradient":
        xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / scale  # (1, w) pixel centres
        ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / scale  # (h, 1)
        t = gradient_t(bg, xs, ys, width, height).astype(np.float32)[..., None]  # (h, w, 1)
        img = c0 + t * (c1 - c0)
    else:
        img = np.empty((h, w, 3), np.float32)
        img[:] = c0
    if bg.texture_amplitude > 0:
        cells_x = bg.texture_cells
        cells_y = max(2, round(cells_x * height / width))
        cells = np.random.default_rng(bg.texture_seed).uniform(-1, 1, (cells_y, cells_x)).astype(np.float32)
        texture = np.clip(cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)
        img = img + bg.texture_amplitude * texture[..., None]
    return np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def _cv_points(points: np.ndarray, scale: int) -> np.ndarray:
    """(N, 2) scene pixels (corner convention) -> int32 cv2 fixed-point vertices (pixel centres)."""
    return np.rint((points * scale - 0.5) * SUBPIXEL).astype(np.int32).reshape(-1, 1, 2)


def _draw_sign(canvas: np.ndarray, obj: SceneObject, scale: int) -> None:
    """Composite a sign onto the (kH, kW, 3) canvas in place."""
    pw, ph = obj.plate_size[0] * scale, obj.plate_size[1] * scale
    text_h = obj.text_height * scale
    size = int(math.ceil(math.hypot(pw, ph))) + 4  # patch big enough for any rotation
    patch = np.zeros((size, size, 3), np.uint8)
    alpha = np.zeros((size, size), np.uint8)
    corners = np.array([(-pw / 2, -ph / 2), (pw / 2, -ph / 2), (pw / 2, ph / 2), (-pw / 2, ph / 2)]) + size / 2
    cv2.fillPoly(patch, [_cv_points(corners, 1)], obj.rgb, cv2.LINE_AA, SUBPIXEL_BITS)
    cv2.fillPoly(alpha, [_cv_points(corners, 1)], 255, cv2.LINE_AA, SUBPIXEL_BITS)
    ink = TEXT_RGB[obj.plate]
    border = max(1, round(BORDER_PER_PLATE_HEIGHT * ph))
    inset = corners + np.array([(1, 1), (-1, 1), (-1, -1), (1, -1)]) * border / 2
    cv2.polylines(patch, [_cv_points(inset, 1)], True, ink, border, cv2.LINE_AA, SUBPIXEL_BITS)

    font = FONT_CODES[obj.font]
    thickness = max(1, round(text_h * STROKE_PER_TEXT_HEIGHT))
    (w1, h1), _ = cv2.getTextSize(obj.text, font, 1.0, thickness)
    room_w = pw - 2 * border - 2 * thickness
    font_scale = min(text_h / h1, room_w / w1)
    (tw, th), _ = cv2.getTextSize(obj.text, font, font_scale, thickness)
    origin = (int(round(size / 2 - tw / 2)), int(round(size / 2 + th / 2)))
    cv2.putText(patch, obj.text, origin, font, font_scale, ink, thickness, cv2.LINE_AA)

    centre = (size / 2 - 0.5, size / 2 - 0.5)
    m = cv2.getRotationMatrix2D(centre, obj.rotation_deg, 1.0)
    m[:, 2] += (obj.center[0] * scale - 0.5 - centre[0], obj.center[1] * scale - 0.5 - centre[1])
    dsize = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(patch, m, dsize, flags=cv2.INTER_LINEAR).astype(np.float32)
    a = cv2.warpAffine(alpha, m, dsize, flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255.0
    # The patch is black outside the plate, so it is premultiplied by its alpha.
    canvas[:] = np.clip(np.rint(canvas * (1.0 - a) + warped), 0, 255).astype(np.uint8)


def rasterize(scene: Scene, scale: int = 1) -> np.ndarray:
    """The clean scene (no augmentation) at the output size, (H, W, 3) uint8 RGB."""
    canvas = render_background(scene.background, scene.width, scene.height, scale)
    for obj in scene.objects:
        if obj.kind == "sign":
            _draw_sign(canvas, obj, scale)
        else:
            cv2.fillPoly(canvas, [_cv_points(object_outline(obj), scale)], obj.rgb, cv2.LINE_AA, SUBPIXEL_BITS)
    if scale > 1:
        canvas = cv2.resize(canvas, (scene.width, scene.height), interpolation=cv2.INTER_AREA)
    return canvas


def render_scene(scene: Scene, config: RenderConfig, rng: np.random.Generator) -> tuple[np.ndarray, RenderInfo]:
    """Rasterize and augment a scene: returns ((H, W, 3) uint8 RGB image, the augmentation applied)."""
    # Draw every strength first, in a fixed order, whatever is switched on.
    blur_on = rng.random() < config.blur_prob
    blur_sigma = float(rng.uniform(0.0, config.blur_sigma_max)) if blur_on else 0.0
    noise_sigma = float(rng.uniform(0.0, config.noise_sigma_max))
    jpeg_on = rng.random() < config.jpeg_prob
    jpeg_quality = int(rng.integers(config.jpeg_quality_min, config.jpeg_quality_max + 1)) if jpeg_on else 0

    img = rasterize(scene, config.render_scale)
    if blur_sigma >= MIN_BLUR_SIGMA_PX:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    else:
        blur_sigma = 0.0
    if noise_sigma > 0:
        noisy = img.astype(np.float32) + rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
        img = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if jpeg_quality:
        # The JPEG colour transform expects BGR order.
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"OpenCV failed to JPEG-encode a {img.shape} image at quality {jpeg_quality}")
        img = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return img, RenderInfo(config.render_scale, round(blur_sigma, 4), round(noise_sigma, 4), jpeg_quality)


def object_mask(obj: SceneObject, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of the pixels whose centre lies inside the object's outline."""
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [_cv_points(object_outline(obj), 1)], 1, cv2.LINE_8, SUBPIXEL_BITS)
    return mask.astype(bool)


def image_grid(images: Sequence[np.ndarray], columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images into one (rows*(H+gap), columns*(W+gap), 3) image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / columns)
    grid = np.full((rows * (h + gap), columns * (w + gap), 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    return grid
