"""Image decoding and image sources: every kind of bad file, in folders, list files and tar shards."""

import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from zscir.data.images import BadImageError, SkipReport, decode_image
from zscir.data.sources import expand_braces, open_image_source
from zscir.errors import ZscirError


# --- builders of good and bad image files ------------------------------------------------------

def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: for 48-bit RGB (PIL cannot write it) and for lying headers (bombs)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def noise(w=64, h=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def rgb48_png() -> bytes:
    # 2x1 pixels: (0xABCD, 0x1234, 0xFFFF) and (0, 0x8000, 0x0101); each row starts with filter byte 0
    row = b"\x00" + struct.pack(">6H", 0xABCD, 0x1234, 0xFFFF, 0, 0x8000, 0x0101)
    return raw_png(2, 1, 16, 2, row)


def corrupt_png() -> bytes:
    """A valid header and a damaged compressed stream (bit rot in the pixel data)."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    junk = bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"\x78\x9c" + junk)
            + png_chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """A few hundred bytes whose header claims 100000 x 100000 pixels (30 GB of RGB)."""
    return raw_png(100_000, 100_000, 8, 2, b"\x00" * 64)


def bad_and_good_files() -> dict[str, bytes]:
    """name -> bytes for every case the issue lists, plus plain good images."""
    gray16 = Image.fromarray(np.full((8, 8), 0x8080, dtype=np.uint16))
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 1
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)   # left half opaque red
    rgba[:, 2:] = (0, 0, 255, 0)     # right half fully transparent blue
    good_jpeg = encode(noise(), "JPEG", quality=90)
    return {
        "good.jpg": good_jpeg,
        "good.png": encode(Image.new("RGB", (10, 6), (10, 200, 30)), "PNG"),
        "good.webp": encode(Image.new("RGB", (8, 8), (0, 0, 255)), "WEBP", lossless=True),
        "good.bmp": encode(Image.new("RGB", (5, 5), (1, 2, 3)), "BMP"),
        "png_named.jpg": encode(Image.new("RGB", (4, 4), (9, 9, 9)), "PNG"),
        "cmyk.jpg": encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=95),
        "palette.png": encode(palette, "PNG"),
        "palette_transparent.png": encode(palette_transparent, "PNG"),
        "gray16.png": encode(gray16, "PNG"),
        "rgb48.png": rgb48_png(),
        "alpha.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la.png": encode(Image.new("LA", (4, 4), (100, 0)), "PNG"),
        "empty.jpg": b"",
        "corrupt.png": corrupt_png(),
        "not_an_image.jpg": b"hello, I am a text file with a .jpg name\n",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "bomb.png": bomb_png(),
    }


EXPECTED_SKIPS = {"empty.jpg": "empty file", "corrupt.png": "corrupt", "not_an_image.jpg": "not an image",
                  "truncated.jpg": "truncated", "bomb.png": "too large (decompression bomb refused)"}


# --- decoding ----------------------------------------------------------------------------------

def test_every_bad_kind_is_converted_or_refused_with_its_reason():
    files = bad_and_good_files()
    for name, data in files.items():
        if name in EXPECTED_SKIPS:
            with pytest.raises(BadImageError) as e:
                decode_image(data, name)
            assert e.value.reason == EXPECTED_SKIPS[name], name
            assert e.value.item_id == name and name in str(e.value)
        else:
            image = decode_image(data, name)
            assert image.mode == "RGB", name


def test_conversions_keep_the_right_colours():
    files = bad_and_good_files()
    # CMYK (0, 255, 0, 0) is magenta
    r, g, b = decode_image(files["cmyk.jpg"]).getpixel((4, 4))
    assert r > 230 and g < 25 and b > 230
    assert decode_image(files["palette.png"]).getpixel((0, 0)) == (200, 30, 40)
    # a transparent palette entry becomes the white background
    assert decode_image(files["palette_transparent.png"]).getpixel((0, 0)) == (255, 255, 255)
    # 16-bit data is scaled, not clipped: 0x8080 -> 0x80
    assert decode_image(files["gray16.png"]).getpixel((3, 3)) == (128, 128, 128)
    rgb48 = decode_image(files["rgb48.png"])
    assert rgb48.getpixel((0, 0)) == (0xAB, 0x12, 0xFF) and rgb48.getpixel((1, 0)) == (0, 0x80, 0x01)
    alpha = decode_image(files["alpha.png"])
    assert alpha.getpixel((0, 0)) == (255, 0, 0) and alpha.getpixel((3, 3)) == (255, 255, 255)
    assert decode_image(files["la.png"]).getpixel((0, 0)) == (255, 255, 255)  # fully transparent grey


def test_bomb_refused_from_header_and_limit_is_configurable():
    with pytest.raises(BadImageError, match="decompression bomb.*10000000000 pixels"):
        decode_image(bomb_png(), "bomb.png")
    # between PIL's own warning limit and ours, we decide from the header
    with pytest.raises(BadImageError, match="12000x10000 > 100000000 pixels"):
        decode_image(raw_png(12_000, 10_000, 8, 2, b"\x00" * 64), "big.png", max_pixels=100_000_000)
    big = encode(Image.new("RGB", (40, 40)), "PNG")
    assert decode_image(big, max_pixels=1600).size == (40, 40)
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(big, max_pixels=1599)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (10, 20)


def test_skip_report_counts_once_per_id_and_lists_items():
    report = SkipReport()
    report.add("a.jpg", "corrupt")
    report.add("a.jpg", "corrupt")
    report.add("b.jpg", "truncated")
    report.add("c.jpg", "corrupt")
    assert len(report) == 3
    assert report.by_reason() == {"corrupt": 2, "truncated": 1}
    text = report.summary(max_items=2)
    assert text.splitlines()[0] == "skipped 3 item(s): 2 corrupt, 1 truncated"
    assert "a.jpg: corrupt" in text and "and 1 more" in text
    assert report.to_dict()["items"][1] == {"id": "b.jpg", "reason": "truncated"}


# --- folders and list files --------------------------------------------------------------------

def make_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    files = bad_and_good_files()
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "UPPER.JPEG").write_bytes(files["good.jpg"])
    (root / "nested" / "b.png").write_bytes(files["good.png"])
    (root / "notes.txt").write_text("not listed")
    (root / "photo.gif").write_bytes(encode(Image.new("RGB", (2, 2)), "GIF"))  # listed: every --images lists gifs
    return files


def test_folder_source_ids_counts_and_skip_report(tmp_path):
    files = make_folder(tmp_path)
    source = open_image_source(str(tmp_path))
    assert source.kind == "folder"
    ids = [item.id for item in source]
    expected = sorted([*files, "photo.gif", "nested/b.png", "nested/deeper/UPPER.JPEG"])
    assert ids == expected  # stable: sorted by id, relative posix paths
    assert source.estimated_len() == len(expected)
    loaded = {item.id: source.load_or_skip(item) for item in source}
    good = {k for k, v in loaded.items() if v is not None}
    assert good == set(expected) - set(EXPECTED_SKIPS)
    assert all(loaded[k].mode == "RGB" for k in good)
    assert source.skipped.reasons == EXPECTED_SKIPS
    # iterating twice does not double count
    for item in source:
        source.load_or_skip(item)
    assert len(source.skipped) == len(EXPECTED_SKIPS)


def test_content_hash_is_of_the_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (3, 3), (1, 1, 1)), "PNG"))
    (tmp_path / "copy_of_a.png").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "b.png").write_bytes(encode(Image.new("RGB", (3, 3), (2, 2, 2)), "PNG"))
    hashes = {item.id: item.content_hash for item in open_image_source(str(tmp_path))}
    assert hashes["a.png"] == hashes["copy_of_a.png"] != hashes["b.png"]
    import hashlib
    assert hashes["b.png"] == hashlib.sha256((tmp_path / "b.png").read_bytes()).hexdigest()


def test_list_file_source(tmp_path):
    make_folder(tmp_path / "imgs")
    listing = tmp_path / "list.txt"
    absolute = tmp_path / "imgs" / "good.png"
    listing.write_text(f"# my images\nimgs/good.jpg\n\n{absolute}\nimgs/missing.jpg\n  imgs/cmyk.jpg  \nimgs/bomb.png\n")
    source = open_image_source(str(listing))
    assert source.kind == "list"
    assert [i.id for i in source] == ["imgs/good.jpg", str(absolute), "imgs/missing.jpg", "imgs/cmyk.jpg",
                                      "imgs/bomb.png"]
    images = [source.load_or_skip(i) for i in source]
    assert [im is not None for im in images] == [True, True, False, True, False]
    assert source.skipped.reasons == {"imgs/missing.jpg": "missing file",
                                      "imgs/bomb.png": "too large (decompression bomb refused)"}


def test_unusable_specs_say_what_was_expected(tmp_path):
    with pytest.raises(ZscirError, match="no such file or folder") as e:
        open_image_source(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "one.jpg").write_bytes(encode(noise(), "JPEG"))
    with pytest.raises(ZscirError, match="single image file"):
        open_image_source(str(tmp_path / "one.jpg"))
    with pytest.raises(ZscirError, match="none of the 2 tar shard"):
        open_image_source(str(tmp_path / "{0..1}.tar"))
    (tmp_path / "bin.lst").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ZscirError, match="UTF-8"):
        open_image_source(str(tmp_path / "bin.lst"))


# --- webdataset tar shards (img2dataset layout) ------------------------------------------------

def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                add_member(tar, f"{key}.{ext}", data)


def sample(key, image_bytes, caption, image_ext="jpg"):
    members = {image_ext: image_bytes} if image_bytes is not None else {}
    members["txt"] = caption.encode()
    members["json"] = json.dumps({"key": key, "caption": caption, "status": "success"}).encode()
    return key, members


def make_shards(root):
    files = bad_and_good_files()
    write_shard(root / "00000.tar", [
        sample("000000000", files["good.jpg"], "a dog on grass"),
        sample("000000001", files["truncated.jpg"], "a cut picture"),
        sample("000000002", files["cmyk.jpg"], "a magenta square"),
        sample("000000003", None, "no image here"),
        sample("000000004", files["gray16.png"], "a gray square", image_ext="png"),
    ])
    write_shard(root / "00001.tar", [
        sample("000010000", files["alpha.png"], "red and white", image_ext="png"),
        sample("000010001", files["empty.jpg"], "empty"),
        sample("000010002", files["bomb.png"], "a bomb", image_ext="png"),
        sample("000010003", files["palette.png"], "a palette image", image_ext="png"),
    ])
    # a shard cut short in the middle of its third sample (a download that died)
    write_shard(root / "00002.tar", [sample(f"0000200{i:02d}", files["good.jpg"], f"cat {i}") for i in range(4)])
    with tarfile.open(root / "00002.tar") as tar:
        third_image = tar.getmember("000020002.jpg")
    data = (root / "00002.tar").read_bytes()
    (root / "00002.tar").write_bytes(data[: third_image.offset_data + third_image.size // 2])
    # 00003.tar is missing
    for n, successes in ((0, 4), (1, 4), (2, 4)):
        (root / f"{n:05d}_stats.json").write_text(json.dumps({"successes": successes}))
    return files


def test_tar_shards_ids_extras_and_skip_report(tmp_path):
    make_shards(tmp_path)
    source = open_image_source(str(tmp_path / "{00000..00003}.tar"))
    assert source.kind == "tar"
    items = list(source)
    ids = [i.id for i in items]
    assert ids == ["000000000", "000000001", "000000002", "000000004",
                   "000010000", "000010001", "000010002", "000010003",
                   "000020000", "000020001"]  # the samples before the cut are kept
    assert items[0].extras["txt"] == b"a dog on grass"
    assert json.loads(items[0].extras["json"])["caption"] == "a dog on grass"
    loaded = {i.id: source.load_or_skip(i) for i in items}
    assert loaded["000000002"].mode == "RGB" and loaded["000000004"].getpixel((0, 0)) == (128, 128, 128)
    assert loaded["000010000"].getpixel((3, 0)) == (255, 255, 255)
    reasons = source.skipped.reasons
    assert reasons["000000001"] == "truncated"
    assert reasons["000000003"] == "no image member in sample"
    assert reasons["000010001"] == "empty file"
    assert reasons["000010002"] == "too large (decompression bomb refused)"
    assert reasons[str(tmp_path / "00003.tar")] == "missing shard"
    assert reasons[str(tmp_path / "00002.tar")].startswith("corrupt shard (stopped after 2 samples")
    assert len(reasons) == 6
    assert source.estimated_len() is None  # 00003 has no stats file
    assert open_image_source(str(tmp_path / "0000[01].tar")).estimated_len() == 8


def test_folder_of_shards_and_glob_and_forced_kind(tmp_path):
    make_shards(tmp_path)
    by_folder = [i.id for i in open_image_source(str(tmp_path))]
    by_glob = [i.id for i in open_image_source(str(tmp_path / "*.tar"))]
    assert by_folder == by_glob and by_folder[0] == "000000000"
    forced = open_image_source("tar:" + str(tmp_path / "00001.tar"))
    assert [i.id for i in forced] == ["000010000", "000010001", "000010002", "000010003"]


def test_brace_expansion():
    assert expand_braces("cc3m/{00000..00003}.tar") == [f"cc3m/0000{i}.tar" for i in range(4)]
    assert expand_braces("s{8..11}") == ["s8", "s9", "s10", "s11"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{x,{y,z}0}") == ["x", "y0", "z0"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ZscirError, match="unbalanced"):
        expand_braces("a{1..2")


# --- one rule for every --images ----------------------------------------------------------------

def mixed_folder(root):
    """.jpg .png .gif .tif (+ .TIFF, nested), a dotfile, a hidden folder and a non-image."""
    root.mkdir(parents=True)
    picture = noise(16, 12, seed=3)
    (root / "a.jpg").write_bytes(encode(picture, "JPEG"))
    (root / "b.png").write_bytes(encode(picture, "PNG"))
    (root / "c.gif").write_bytes(encode(picture, "GIF"))
    (root / "d.tif").write_bytes(encode(picture, "TIFF"))
    (root / "sub").mkdir()
    (root / "sub" / "e.TIFF").write_bytes(encode(picture, "TIFF"))
    (root / ".hidden.jpg").write_bytes(encode(picture, "JPEG"))          # a dotfile (e.g. a macOS ._ fork)
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "f.jpg").write_bytes(encode(picture, "JPEG"))    # in a hidden folder
    (root / "notes.txt").write_text("not an image")
    return ["a.jpg", "b.png", "c.gif", "d.tif", "sub/e.TIFF"]


def test_index_and_pretrain_list_a_folder_by_one_rule(tmp_path):
    from zscir.data.items import IMAGE_EXTENSIONS
    from zscir.data.sources import FolderSource

    expected = mixed_folder(tmp_path / "mixed")
    source = open_image_source(str(tmp_path / "mixed"))               # pretrain and caption
    assert source.kind == "folder" and [i.id for i in source] == expected
    assert [i for i, _ in FolderSource(tmp_path / "mixed").files()] == expected   # zscir index (build_index)
    images = [source.load_or_skip(i) for i in source]
    assert all(im is not None and im.mode == "RGB" and im.size == (16, 12) for im in images)
    assert set(IMAGE_EXTENSIONS) == {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def test_index_and_pretrain_commands_take_the_same_images(tmp_path, capsys):
    from zscir.cli import main
    from zscir.data.items import IMAGES_RULE

    expected = mixed_folder(tmp_path / "mixed")
    captions = {i: f"a red car parked near a green fence number {n}" for n, i in enumerate(expected)}
    captions.update({".hidden.jpg": "a small dog sitting on a wooden bench", "f.jpg": "a small dog on a bench"})
    (tmp_path / "caps.json").write_text(json.dumps(captions))

    def run(args):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        out = capsys.readouterr().out
        assert e.value.code == 0, out
        return json.loads(out[out.index("{"):])

    index = run(["index", "--images", tmp_path / "mixed", "--out", tmp_path / "idx", "--json", "--no-progress"])
    pretrain = run(["pretrain", "--images", tmp_path / "mixed", "--captions", tmp_path / "caps.json",
                    "--feature-cache", "globals", "--batch-size", 2, "--epochs", 1, "--max-steps", 1,
                    "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run", "--json"])
    assert index["count"] == pretrain["data"]["num_images"] == len(expected)
    from zscir.features import FeatureStore

    assert FeatureStore(tmp_path / "idx" / "features").ids() == expected       # the images each one encoded
    assert sorted(FeatureStore(pretrain["data"]["feature_store"]).ids()) == expected
    for command in ("index", "pretrain", "caption"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert IMAGES_RULE in " ".join(capsys.readouterr().out.split()), command
