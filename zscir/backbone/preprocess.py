"""Image preprocessing shared by every part that encodes images.

Two choices, recorded by name in caches and results:
- ``"targetpad-1.25"`` (default, as in SEARLE and FTI4CIR): pad the image with
  black to aspect ratio 1.25 only when it is more elongated than that, then
  resize the short side and center-crop. Elongated product photos keep their
  ends instead of losing them to the crop.
- ``"clip"``: CLIP's own resize + center-crop.

Both convert to RGB after the crop, as the official pipelines do (SEARLE's and
FTI4CIR's ``targetpad_transform``, CLIP's ``_transform``): an image handed over
in its own mode is padded, resized and cropped in that mode. For RGB and
greyscale images the order changes nothing; for palette images (PIL resizes
them with nearest-neighbour), RGBA (resized with premultiplied alpha, then the
alpha is dropped) and CMYK (padding 0 is white there) it does. zscir's image
decoder (:func:`zscir.data.images.decode_image`) already returns RGB (alpha
composited on white), so images read through it are unaffected.
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
        image = self._pad(image)
        image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, self.size).convert("RGB")
        return TF.pil_to_tensor(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return pixels.to(torch.float32).div(255).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Preprocess({self.name!r}, size={self.size})"


PREPROCESS_NAMES = {"targetpad": "targetpad-1.25", "targetpad-1.25": "targetpad-1.25", "clip": "clip"}


def make_preprocess(name: str, image_size: int, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD) -> Preprocess:
    """Build the named preprocessing (``targetpad`` / ``targetpad-1.25`` or ``clip``)."""
    if name not in PREPROCESS_NAMES:
        raise ZscirError(f"unknown preprocessing {name!r}: expected one of 'targetpad' or 'clip'")
    return Preprocess(PREPROCESS_NAMES[name], image_size, mean, std)
