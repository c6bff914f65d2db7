"""Image preprocessing shared by every part that encodes images.

Two choices, recorded by name in caches and results:
- ``"targetpad-1.25"`` (default, as in SEARLE and FTI4CIR): pad the image with
  black to aspect ratio 1.25 only when it is more elongated than that, then
  resize the short side and center-crop. Elongated product photos keep their
  ends instead of losing them to the crop.
- ``"clip"``: CLIP's own resize + center-crop.
- ``"lincir"``: LinCIR's official evaluation, which preprocesses with transformers'
  ``CLIPImageProcessor`` and runs CLIP in fp16: convert to RGB, resize the short
  side (bicubic), center-crop with the offset FLOORED (torchvision rounds half to
  even: a one-pixel shift when the resized long side minus the crop size is odd and
  half of it rounds up), rescale by 1/255 in float64, normalise in float32, then round
  the pixels to fp16.

Both convert to RGB after the crop, as the official pipelines do (SEARLE's and
FTI4CIR's ``targetpad_transform``, CLIP's ``_transform``): an image handed over
in its own mode is padded, resized and cropped in that mode. For RGB and
greyscale images the order changes nothing; for palette images (PIL resizes
them with nearest-neighbour), RGBA (resized with premultiplied alpha, then the
alpha is dropped) and CMYK (padding 0 is white there) it does. zscir's image
decoder (:func:`zscir.data.images.decode_image`) already returns RGB (alpha
composited on white), so images read through it are unaffected.

Bounded cost for any input shape, with the official pixels for every ordinary image: TargetPad
pads at full resolution (as the official pipelines do) unless the padded canvas would hold more
than ``PAD_GROWTH`` times the image's own pixels and more than ``(CANVAS_FACTOR * size)**2``
pixels; only then (an aspect ratio past ``PAD_GROWTH * 1.25`` on a large image: a 100000 x 1 strip
would become a 100000 x 80000 canvas) is the image first resized (bicubic, antialiased) so that the
canvas's shorter side is ``CANVAS_FACTOR * size``, and padded after. A short-side resize whose long
side would pass ``LONG_SIDE_FACTOR * size`` (CLIP's and LinCIR's crop of a strip beyond the
decoder's aspect limit) resizes only the cropped box (PIL's ``resize(box=...)``: the same sampling
positions; PIL's 8-bit rounding between its two passes may differ slightly).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from zscir.errors import ZscirError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TARGETPAD_RATIO = 1.25
CANVAS_FACTOR = 4      # a shrunk image's padded canvas: its shorter side is this times the model's input size
PAD_GROWTH = 2         # padding may at most double an image's pixels before the image is shrunk first
LONG_SIDE_FACTOR = 128  # a short-side resize never makes a long side past this times the input size


def target_pad(image: Image.Image, target_ratio: float = TARGETPAD_RATIO) -> Image.Image:
    """Pad ``image`` symmetrically so that its aspect ratio is at most ``target_ratio``."""
    w, h = image.size
    if max(w, h) / min(w, h) < target_ratio:
        return image
    scaled_max = max(w, h) / target_ratio
    pad_w = max(int((scaled_max - w) / 2), 0)
    pad_h = max(int((scaled_max - h) / 2), 0)
    canvas = Image.new(image.mode, (w + 2 * pad_w, h + 2 * pad_h), 0)
    if image.mode == "P":  # keep the colours: index 0 of the image's own palette pads, as torchvision's pad
        canvas.putpalette(image.getpalette())
    canvas.paste(image, (pad_w, pad_h))
    return canvas


def shrink_for_pad(image: Image.Image, size: int, target_ratio: float = TARGETPAD_RATIO) -> Image.Image:
    """``image`` resized (bicubic) so that its TargetPad canvas's shorter side is ``CANVAS_FACTOR * size``, when
    padding would more than ``PAD_GROWTH``-fold a large image's pixels; else unchanged (the official pixels)."""
    w, h = image.size
    long_side, short_side = max(w, h), min(w, h)
    canvas_short = long_side / target_ratio if long_side / short_side >= target_ratio else short_side
    bound = CANVAS_FACTOR * size
    canvas_pixels = long_side * canvas_short
    if canvas_short <= bound or canvas_pixels <= max(PAD_GROWTH * w * h, bound * bound):
        return image
    scale = bound / canvas_short
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def resize_and_crop(image: Image.Image, size: int, offset: Callable[[int], int]) -> Image.Image:
    """Resize the shorter side to ``size`` (as torchvision's ``resize``) and crop ``size`` x ``size`` at
    ``offset(extra)`` along each side; a long resized side (over ``LONG_SIDE_FACTOR * size``) is never made:
    only the cropped box of the source is resized."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if max(new_w, new_h) <= LONG_SIDE_FACTOR * size:
        image = image.resize((new_w, new_h), Image.BICUBIC)
        left, top = offset(new_w - size), offset(new_h - size)
        return image.crop((left, top, left + size, top + size))
    sx, sy = w / new_w, h / new_h
    left, top = offset(new_w - size), offset(new_h - size)
    return image.resize((size, size), Image.BICUBIC, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def _torchvision_offset(extra: int) -> int:
    return int(round(extra / 2.0))  # torchvision's center_crop: half, rounded half to even


def _floored_offset(extra: int) -> int:
    return extra // 2  # transformers' CLIPImageProcessor


class Preprocess:
    """PIL image -> normalised float tensor [3, size, size].

    In two steps, so that a batch can travel as bytes: :meth:`pixels` (pad, resize, crop: uint8
    [3, size, size]) and :meth:`normalize` (any [..., 3, size, size] uint8 batch, on any device; the
    same float operations as torchvision's ``to_tensor`` + ``normalize``, so the result is the same
    to the bit). Decoding workers send uint8 batches, a quarter of the float bytes, and the main
    process (or the GPU) normalises a whole batch at once.
    """

    def __init__(self, name: str, size: int, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        self.name, self.size, self.mean, self.std = name, size, tuple(mean), tuple(std)
        self._pad: Callable[[Image.Image], Image.Image] = target_pad if name.startswith("targetpad") else (lambda im: im)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        if self._pad is target_pad:  # an extreme strip is shrunk before it is padded (see the module's docstring)
            image = target_pad(shrink_for_pad(image, self.size))
        image = resize_and_crop(image, self.size, _torchvision_offset).convert("RGB")
        return TF.pil_to_tensor(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return pixels.to(torch.float32).div(255).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Preprocess({self.name!r}, size={self.size})"


class HFCLIPPreprocess(Preprocess):
    """transformers' ``CLIPImageProcessor`` as LinCIR's official evaluation uses it, pixels rounded to fp16."""

    def pixels(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")  # the processor converts first (do_convert_rgb)
        # the crop's offset is floored, where torchvision rounds
        return TF.pil_to_tensor(resize_and_crop(image, self.size, _floored_offset))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        scaled = pixels.to(torch.float64).mul(1 / 255).to(torch.float32)  # rescale in float64, cast, as it does
        return scaled.sub_(mean).div_(std).to(torch.float16).to(torch.float32)


# the registry: recorded name -> class; PREPROCESS_NAMES maps every accepted name to its recorded name
PREPROCESSINGS: dict[str, type[Preprocess]] = {"targetpad-1.25": Preprocess, "clip": Preprocess,
                                               "lincir": HFCLIPPreprocess}
PREPROCESS_NAMES = {"targetpad": "targetpad-1.25", "targetpad-1.25": "targetpad-1.25", "clip": "clip",
                    "lincir": "lincir"}


def make_preprocess(name: str, image_size: int, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD) -> Preprocess:
    """Build the named preprocessing (``targetpad`` / ``targetpad-1.25``, ``clip`` or ``lincir``)."""
    if name not in PREPROCESS_NAMES:
        raise ZscirError(f"unknown preprocessing {name!r}: expected one of {', '.join(map(repr, PREPROCESS_NAMES))}")
    recorded = PREPROCESS_NAMES[name]
    return PREPROCESSINGS[recorded](recorded, image_size, mean, std)
