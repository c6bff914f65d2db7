"""A tiny served world for the serve tests: backbone weights in a file, an FTI checkpoint, an index of drawn images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import torch
from _images import draw_image


def build_world(root: Path, n_images: int = 12, more_images: Callable[[Path], None] | None = None) -> dict:
    """Images g00.png ... drawn into ``root/gallery`` (``more_images(folder)`` adds others), indexed with the FTI
    checkpoint: {root, weights, backbone, fti, images, paths, index}."""
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone
    from zscir.index.gallery import build_index
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint

    torch.manual_seed(0)
    weights = root / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in load_backbone("zscir-tiny-test", None).model.state_dict().items()},
              str(weights))
    bb = load_backbone("zscir-tiny-test", str(weights))
    cfg = get_mapping_config("fti4cir-tiny")
    torch.manual_seed(0)
    fti = str(save_mapping_checkpoint(root / "fti", create_mapping_network(cfg, backbone_dims(bb)), cfg, bb))
    images = root / "gallery"
    images.mkdir()
    paths = [draw_image(images / f"g{i:02d}.png", i) for i in range(n_images)]
    if more_images is not None:
        more_images(images)
    build_index(root / "index", bb, images=images, progress=False, model=fti)
    return {"root": root, "weights": weights, "backbone": bb, "fti": fti, "images": images, "paths": paths,
            "index": root / "index"}


def strip_png(width: int, height: int) -> bytes:
    """A real, decodable RGB PNG of width x height black pixels, compressed to a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = (b"\0" + b"\0" * 3 * width) * height  # filter byte 0, then the row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))
