"""Render a scene spec to an RGB image.

Objects are drawn at 3x the output size and box-filtered down (anti-aliasing).
Every rendering jitters position, size, rotation, hue and brightness a little
and adds pixel noise, seeded per image: two renderings of one spec are never
pixel-identical, while one (seed, image id) always gives the same bytes.
Patterns are drawn in a contrasting shade of the object's own color
(darker on light colors, lighter on dark ones), so the color stays readable.
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from zscir.world.spec import Obj, Scene

DEFAULT_IMAGE_SIZE = 72
SUPERSAMPLE = 3

RGB = {
    "red": (220, 30, 30), "orange": (255, 140, 0), "yellow": (240, 220, 20), "green": (30, 170, 50),
    "cyan": (0, 200, 210), "blue": (30, 80, 230), "purple": (140, 50, 200), "pink": (255, 110, 190),
}
BACKGROUND_RGB = {"black": (15, 15, 15), "white": (245, 245, 245), "gray": (128, 128, 128), "brown": (105, 65, 35)}

# object radius as a fraction of a grid cell's side
SIZE_RADIUS = {"small": 0.25, "large": 0.40}
# shapes with less area than their circumcircle are drawn a little larger, so sizes read alike across shapes
SHAPE_SCALE = {"circle": 0.92, "square": 1.0, "triangle": 1.12, "star": 1.15, "cross": 1.0, "diamond": 1.05}


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


_ARM = 0.34
# unit polygons (circumradius ~1, y pointing down); the circle is drawn as an ellipse
POLYGONS = {
    "square": [(-0.74, -0.74), (0.74, -0.74), (0.74, 0.74), (-0.74, 0.74)],
    "diamond": [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)],
    "triangle": [(0.0, -0.92), (0.87, 0.6), (-0.87, 0.6)],
    "star": _star(),
    "cross": [(-_ARM, -0.95), (_ARM, -0.95), (_ARM, -_ARM), (0.95, -_ARM), (0.95, _ARM), (_ARM, _ARM), (_ARM, 0.95),
              (-_ARM, 0.95), (-_ARM, _ARM), (-0.95, _ARM), (-0.95, -_ARM), (-_ARM, -_ARM)],
}


def jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator, hue: float = 0.015, value: float = 0.06):
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = min(1.0, max(0.0, s * rng.uniform(1 - value, 1 + value)))
    v = min(1.0, max(0.0, v * rng.uniform(1 - value, 1 + value)))
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def contrast_shade(rgb: np.ndarray) -> np.ndarray:
    """The pattern's ink: darker on light colors, lighter on dark ones."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return rgb * 0.35 if luminance > 140 else rgb + 0.65 * (255 - rgb)


def _shape_mask(shape: str, radius: float, angle: float, box: int) -> np.ndarray:
    """Boolean mask [box, box] of the shape centred in the box (supersampled pixels)."""
    img = Image.new("L", (box, box), 0)
    draw = ImageDraw.Draw(img)
    c = box / 2
    if shape == "circle":
        draw.ellipse([c - radius, c - radius, c + radius, c + radius], fill=255)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        pts = [(c + radius * (x * cos - y * sin), c + radius * (x * sin + y * cos)) for x, y in POLYGONS[shape]]
        draw.polygon(pts, fill=255)
    return np.asarray(img) > 127


def _pattern_mask(pattern: str, box: int, period: float, phase: tuple[float, float]) -> np.ndarray:
    y, x = np.mgrid[0:box, 0:box].astype(np.float32)
    if pattern == "striped":  # diagonal stripes, half ink
        return ((x + y + phase[0]) % period) < period / 2
    if pattern == "dotted":
        dx = (x + phase[0]) % period - period / 2
        dy = (y + phase[1]) % period - period / 2
        return dx * dx + dy * dy < (0.26 * period) ** 2
    return np.zeros((box, box), dtype=bool)


def _draw_object(canvas: np.ndarray, obj: Obj, cell_px: float, rng: np.random.Generator) -> None:
    row, col = divmod(obj.cell, 3)
    cx = (col + 0.5 + rng.uniform(-0.07, 0.07)) * cell_px
    cy = (row + 0.5 + rng.uniform(-0.07, 0.07)) * cell_px
    radius = SIZE_RADIUS[obj.size] * SHAPE_SCALE[obj.shape] * cell_px * rng.uniform(0.93, 1.07)
    angle = math.radians(rng.uniform(-10, 10))
    box = int(math.ceil(2 * radius * 1.1)) + 2
    x0, y0 = int(round(cx - box / 2)), int(round(cy - box / 2))
    mask = _shape_mask(obj.shape, radius, angle, box)
    fill = jitter_color(RGB[obj.color], rng)
    ink = contrast_shade(fill)
    period = cell_px * rng.uniform(0.16, 0.19)
    pattern = _pattern_mask(obj.pattern, box, period, tuple(rng.uniform(0, period, size=2))) & mask
    # clip the object's box to the canvas
    H, W = canvas.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + box, H)), slice(max(x0, 0), min(x0 + box, W))
    sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    region = canvas[ys, xs]
    region[mask[sub]] = np.rint(fill).astype(np.uint8)
    region[pattern[sub]] = np.rint(ink).astype(np.uint8)


def render_array(scene: Scene, rng: np.random.Generator, size: int = DEFAULT_IMAGE_SIZE,
                 noise: float = 3.0) -> np.ndarray:
    """uint8 array [size, size, 3] of one jittered rendering of ``scene``."""
    big = size * SUPERSAMPLE
    canvas = np.empty((big, big, 3), dtype=np.uint8)
    canvas[:] = np.rint(jitter_color(BACKGROUND_RGB[scene.background], rng, hue=0.0, value=0.04)).astype(np.uint8)
    for obj in scene.objects:
        _draw_object(canvas, obj, big / 3, rng)
    # box-filter down (PIL's reduce is a C loop; numpy's mean over the reshaped canvas was 10x slower)
    small = np.asarray(Image.fromarray(canvas).reduce(SUPERSAMPLE), dtype=np.float32)
    small = small + noise * rng.standard_normal(small.shape, dtype=np.float32)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render_rng(seed: int, image_id: int) -> np.random.Generator:
    """The rendering stream of one image: fixed by the world seed and the image id."""
    return np.random.default_rng([seed, 0x52454E44, image_id])


def render_image(scene: Scene, seed: int, image_id: int, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    return Image.fromarray(render_array(scene, render_rng(seed, image_id), size))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # pixel noise leaves little to compress
    return buf.getvalue()
