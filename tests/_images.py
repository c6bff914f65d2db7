"""Small test pictures shared by the index, retrieve and serve tests."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(220, 30, 30), (30, 180, 40), (30, 60, 220), (230, 200, 20), (200, 40, 200), (20, 200, 200)]


def draw_image(path: Path, seed: int) -> Path:
    """Coloured shapes on a coloured ground: distinct enough for a random tiny CLIP to tell apart."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (40, 32), PALETTE[seed % len(PALETTE)])
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x, y = rng.integers(0, 30), rng.integers(0, 22)
        d.rectangle([x, y, x + rng.integers(4, 12), y + rng.integers(4, 12)], fill=PALETTE[rng.integers(0, 6)])
    im.save(path)
    return path
