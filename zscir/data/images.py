"""Safe image decoding: bytes -> RGB ``PIL.Image``, or a clear reason why not.

Real image collections are messy. Everything PIL can decode is converted to
8-bit RGB (CMYK, palette, greyscale, 16-bit, float, alpha); what cannot be
decoded raises :class:`BadImageError` with a short reason, which long jobs
record in a :class:`SkipReport` and move on.

Bounded cost, decided from the header before any pixel is decoded:
- more pixels than ``max_pixels`` (zscir's own limit, any size: PIL's global
  ``Image.MAX_IMAGE_PIXELS`` is not consulted, so a caller may go above it) is refused
  as a decompression bomb, so a 100k x 100k PNG of a few kilobytes never allocates 30 GB;
- a long side more than ``max_aspect`` times the short side (a 372-byte 100000 x 1 PNG)
  is refused as an extreme aspect ratio: nothing useful survives a square model input.
Preprocessing bounds its own canvases for images that do not come through here
(:mod:`zscir.backbone.preprocess`).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zscir.errors import ZscirError

# ~89.5 megapixels (a 9459 x 9459 image; the number PIL uses too). Bigger images are almost
# never real photos in a captioning set, and refusing them bounds memory per worker at ~270 MB
# of RGB. zscir's own setting: any value is honoured (PIL's check is lifted while we open).
DEFAULT_MAX_PIXELS = 89_478_485
# long side / short side; banners and panoramas stay far below, a 100000 x 1 strip does not
DEFAULT_MAX_ASPECT = 100.0

TOO_LARGE = "too large (decompression bomb refused)"
TOO_ELONGATED = "extreme aspect ratio"
_PIL_LIMIT_LOCK = threading.Lock()  # PIL's limit is a module global: lifted for our open only

# Transparent areas become white: product shots and logos are drawn on white.
ALPHA_BACKGROUND = (255, 255, 255)


class BadImageError(ZscirError):
    """An image that cannot be used; ``reason`` is a short, countable label."""

    def __init__(self, item_id: str, reason: str, detail: str = ""):
        self.item_id, self.reason, self.detail = item_id, reason, detail
        super().__init__(f"{item_id}: {reason}" + (f" ({detail})" if detail else ""))


def decode_image(data: bytes, item_id: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_size: int | None = None, max_aspect: float | None = DEFAULT_MAX_ASPECT) -> Image.Image:
    """Decode encoded image bytes to an 8-bit RGB image, or raise :class:`BadImageError`.

    Refused from the header alone: more than ``max_pixels`` pixels (reason :data:`TOO_LARGE`), a
    long side over ``max_aspect`` times the short side (:data:`TOO_ELONGATED`; None: no limit).

    ``min_size``: the caller only needs the shorter side to be at least ``min_size`` pixels
    (a model's input size). A JPEG is then decoded in draft mode: libjpeg scales by 1/2,
    1/4 or 1/8 during decoding (DCT scaling, 2-8x faster than a full decode), to the smallest
    such size whose shorter side still covers ``min_size``; other formats, and images already
    smaller, are decoded in full. None (default) always decodes in full.
    """
    if not data:
        raise BadImageError(item_id, "empty file")
    try:
        with warnings.catch_warnings():
            # PIL only *warns* between its limit and twice it; we decide ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_unchecked(data)
            width, height = image.size  # read from the header, nothing decoded yet
            check_size(item_id, width, height, max_pixels, max_aspect)
            if min_size is not None:
                draft_to_cover(image, min_size)
            image.load()
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:  # a plugin's own check (e.g. an ICO frame) beyond ours
        raise BadImageError(item_id, TOO_LARGE, str(e)) from None
    except MemoryError:
        raise BadImageError(item_id, "out of memory while decoding") from None
    except UnidentifiedImageError:
        raise BadImageError(item_id, "not an image", "PIL cannot identify the format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise BadImageError(item_id, reason, str(e)) from None
    try:
        if image.getexif().get(0x0112, 1) != 1:  # else exif_transpose would only copy the pixels
            image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF, not in pixels
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    try:
        return to_rgb(image)
    except (OSError, ValueError) as e:
        raise BadImageError(item_id, "unsupported pixel format", f"mode {image.mode}: {e}") from None


def check_size(item_id: str, width: int, height: int, max_pixels: int,
               max_aspect: float | None = DEFAULT_MAX_ASPECT) -> None:
    """Raise :class:`BadImageError` for a size over the pixel cap or the aspect cap (see :func:`decode_image`)."""
    if width * height > max_pixels:
        raise BadImageError(item_id, TOO_LARGE, f"{width}x{height} > {max_pixels} pixels ({width * height} pixels)")
    if max_aspect is not None and max(width, height) > max_aspect * max(1, min(width, height)):
        raise BadImageError(item_id, TOO_ELONGATED, f"{width}x{height}: the long side is over {max_aspect:g} "
                                                    "times the short side")


def _open_unchecked(data: bytes) -> Image.Image:
    """``Image.open`` without PIL's global pixel limit (the caller checks its own, any size)."""
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def draft_to_cover(image: Image.Image, min_size: int) -> None:
    """Ask a not yet loaded JPEG for the smallest DCT-scaled size whose shorter side is >= ``min_size``.

    PIL's ``draft`` picks the largest reduction (1/2, 1/4, 1/8) that keeps both sides >= the
    requested size, so we request ``min_size`` x ``min_size``: the shorter side stays >= ``min_size``
    (EXIF rotation swaps the sides, never the shorter one). A no-op for other formats.
    """
    if image.format != "JPEG" or min_size < 1:
        return
    if min(image.size) < 2 * min_size:
        return  # even 1/2 would not cover
    image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else None, (min_size, min_size))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling (not clipping) high bit depths."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode == "P":
        # A palette may carry transparency; go through RGBA so it is composited.
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    values = array.astype(np.float64)
    if mode == "F":
        # Float images are either in [0, 1] or already in [0, 255].
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        values = np.nan_to_num(values) * scale
    elif mode.startswith("I;16") or (values.size and values.max() > 255):
        # 16-bit data (PNG greyscale 16 opens as "I"): 65535 -> 255.
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@dataclass
class SkipReport:
    """Items a long job skipped, with why; printed at the end instead of dying on the first.

    Keyed by item id, so recording the same item twice (a rerun, a second
    pass) counts it once.
    """

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, item_id: str, reason: str) -> None:
        self.reasons.setdefault(item_id, reason)

    def record(self, error: BadImageError) -> None:
        self.add(error.item_id, error.reason)

    def __len__(self) -> int:
        return len(self.reasons)

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.reasons

    @property
    def count(self) -> int:
        return len(self.reasons)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(self.reasons.values()).most_common())

    def to_dict(self) -> dict:
        return {"skipped": self.count, "by_reason": self.by_reason(),
                "items": [{"id": k, "reason": v} for k, v in self.reasons.items()]}

    def summary(self, max_items: int = 20) -> str:
        """A few human-readable lines: the count per reason, then the first items."""
        if not self.reasons:
            return "skipped: none"
        counts = ", ".join(f"{n} {reason}" for reason, n in self.by_reason().items())
        lines = [f"skipped {self.count} item(s): {counts}"]
        for item_id, reason in list(self.reasons.items())[:max_items]:
            lines.append(f"  {item_id}: {reason}")
        if self.count > max_items:
            lines.append(f"  ... and {self.count - max_items} more")
        return "\n".join(lines)
