"""One image decoder for the whole project: every entry point hands the model the same pixels.

Each awkward file (16-bit PNG, EXIF-rotated JPEG, RGBA with transparency, a palette with a
transparent entry, CMYK, and a decompression bomb: a small PNG whose header declares
100000 x 100000 pixels) goes through index, eval, retrieve, pretraining data, caption and the
HTML page. The tensors reaching the backbone must equal ``preprocess(decode_image(bytes))``,
and the bomb must be skipped everywhere with the decoder's reason.

On a bare ``convert("RGB")`` (index, retrieve, eval and the page before issue 13) the 16-bit
PNG comes out white, the EXIF rotation is lost and transparency lands on black, so the
tensors differ and this test fails.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.data.images import BadImageError, decode_image
from zscir.errors import ZscirError

BOMB_REASON = "too large (decompression bomb refused)"


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def cases() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    gray16 = Image.fromarray((rng.integers(0, 65536, (24, 20))).astype(np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = Image.fromarray(rng.integers(0, 256, (16, 40, 3), dtype=np.uint8))
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (200, 20, 20, 255)
    rgba[:, 10:] = (20, 20, 200, 0)  # transparent: white after decoding, black after convert("RGB")
    palette = Image.new("P", (18, 18), 1)
    palette.putpalette([0, 0, 0, 30, 160, 40] + [0] * 762)
    palette.paste(0, (0, 0, 9, 18))
    palette.info["transparency"] = 0
    cmyk = Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "CMYK")
    return {
        "gray16.png": _encode(gray16, "PNG"),
        "exif_rotated.jpg": _encode(rotated, "JPEG", quality=95, exif=exif.tobytes()),
        "rgba.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": _encode(palette, "PNG"),
        "cmyk.jpg": _encode(cmyk, "JPEG", quality=95),
        "bomb.png": _bomb(),
    }


GOOD = ["gray16.png", "exif_rotated.jpg", "rgba.png", "palette.png", "cmyk.jpg"]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


class Recording:
    """The tiny backbone, recording every tensor its preprocess produces (threads included)."""

    def __init__(self, backbone):
        self._bb, self.seen, self._lock = backbone, [], threading.Lock()

    def __getattr__(self, name):
        return getattr(self._bb, name)

    def preprocess(self, image):
        x = self._bb.preprocess(image)
        with self._lock:
            self.seen.append(_digest(x))
        return x

    def take(self) -> set[str]:
        seen, self.seen = set(self.seen), []
        return seen


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("decoder")
    folder = root / "images"
    folder.mkdir()
    files = cases()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    expected = {name: _digest(tiny_backbone.preprocess(decode_image(files[name], name))) for name in GOOD}
    assert len(set(expected.values())) == len(GOOD)
    return {"root": root, "folder": folder, "files": files, "expected": expected,
            "bb": Recording(tiny_backbone)}


def test_the_cases_are_the_hard_ones(setup):
    """The decoder's answer differs from a bare convert("RGB") for every case (else the test proves nothing)."""
    files = setup["files"]
    for name in GOOD:
        if name == "cmyk.jpg":
            continue  # PIL's CMYK -> RGB is the decoder's too: in the matrix because a decoder must not break it
        with Image.open(io.BytesIO(files[name])) as im:
            bare = np.asarray(im.convert("RGB"))
        good = np.asarray(decode_image(files[name], name))
        differs = bare.shape != good.shape or int(np.abs(bare.astype(int) - good).max()) > 20
        assert differs, name
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(files["bomb.png"], "bomb.png")


def test_index_and_retrieve_see_the_decoders_pixels(setup):
    from zscir.index.gallery import build_index
    from zscir.index.retriever import Retriever
    from zscir.models.query import load_query_encoder

    bb = setup["bb"]
    summary = build_index(setup["root"] / "index", bb, images=setup["folder"], progress=False)
    assert bb.take() == set(setup["expected"].values())
    assert [c["id"] for c in summary["features"]["corrupt"]] == ["bomb.png"]
    assert summary["features"]["corrupt"][0]["reason"].startswith(BOMB_REASON)

    from zscir.index.gallery import GalleryIndex

    r = Retriever(GalleryIndex.open(setup["root"] / "index"), load_query_encoder("image", bb))
    for name in GOOD:
        r.search(setup["folder"] / name, "make it red", k=2)
        assert bb.take() == {setup["expected"][name]}, name
    with pytest.raises(ZscirError, match=r"bomb\.png.*decompression bomb refused"):
        r.search(setup["folder"] / "bomb.png", "make it red", k=2)


def test_eval_gallery_features_see_the_decoders_pixels(setup):
    from zscir.benchmarks.base import EvalSplit
    from zscir.evaluation.features import CacheReport, gallery_features

    bb = setup["bb"]
    names = sorted(setup["files"])
    split = EvalSplit("cirr", "val", "cirr", names, {n: setup["folder"] / n for n in names}, [])
    report = CacheReport()
    gallery = gallery_features(bb, split, setup["root"] / "eval-cache", report, progress=False)
    assert bb.take() == set(setup["expected"].values())
    assert sorted(gallery.ids) == sorted(GOOD)
    assert [c["id"] for c in report.corrupt] == ["bomb.png"] and report.corrupt[0]["reason"].startswith(BOMB_REASON)


def test_pretraining_data_sees_the_decoders_pixels(setup):
    from zscir.data.sources import open_image_source
    from zscir.features import FeatureStore
    from zscir.training.pretrain_data import PretrainingSet

    bb = setup["bb"]
    items = list(open_image_source(str(setup["folder"])))
    report = FeatureStore(setup["root"] / "pretrain-store").update(bb, items, progress=False)  # the cached path
    assert bb.take() == set(setup["expected"].values())
    assert [i for i, _ in report.corrupt] == ["bomb.png"] and report.corrupt[0][1].startswith(BOMB_REASON)
    good = [i for i in items if i.id in GOOD]
    data = PretrainingSet([i.id for i in good], ["a"] * len(good), ["b"] * len(good), bb, sources=good,
                          mode="off", need_tokens=False)  # the uncached path: decoded every step
    data.batch(np.arange(len(good)))
    assert bb.take() == set(setup["expected"].values())


def test_caption_sees_the_decoders_pixels(setup, tiny_backbone):
    from zscir.data.caption_cache import caption_images
    from zscir.generation.base import Captioner
    from zscir.data.sources import open_image_source

    class RecordingCaptioner(Captioner):
        name = identity = "recording"
        cacheable = True  # a cached captioner decodes; a lookup (cacheable=False) never sees pixels

        def caption(self, items, images):
            return [f"caption {setup['bb'].preprocess(im) is not None}" for im in images]

    result = caption_images(open_image_source(str(setup["folder"])), RecordingCaptioner(),
                            cache_path=setup["root"] / "captions.jsonl", progress=False)
    assert setup["bb"].take() == set(setup["expected"].values())
    assert sorted(result) == sorted(GOOD)
    assert result.skipped.reasons == {"bomb.png": BOMB_REASON}


def test_html_page_shows_the_decoders_pixels(setup):
    from zscir.index.html import thumbnail_data_uri

    for name in GOOD:
        want = thumbnail_data_uri(decode_image(setup["files"][name], name))
        assert thumbnail_data_uri(setup["folder"] / name) == want and want is not None, name
    assert thumbnail_data_uri(setup["folder"] / "bomb.png") is None
