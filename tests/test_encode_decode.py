"""Decoding for the encoder: JPEG draft decode (bounded against a full decode), worker
processes (== in-process), and the encoding precision as part of the store's identity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.data.images import decode_image
from zscir.errors import ZscirError
from zscir.features import FeatureStore
from zscir.features.encode import encode_sources
from zscir.features.precision import check_precision
from zscir.features.sources import as_sources

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def photo_jpegs(folder, n=12):
    """Real photographs (skimage's samples), cropped and resized to a few camera-like sizes, as JPEGs."""
    skdata = pytest.importorskip("skimage.data")
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    sizes = [(640, 480), (480, 640), (800, 600), (500, 500), (1024, 576), (333, 251)]
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)]).convert("RGB")
        w, h = im.size
        im = im.crop((i * 7 % 40, i * 5 % 30, w - i * 3 % 25, h)).resize(sizes[i % len(sizes)], Image.BICUBIC)
        path = folder / f"photo{i:02d}.jpg"
        im.save(path, quality=90)
        items.append((path.stem, path))
    return items


@pytest.fixture(scope="module")
def world_bb():
    from zscir.world.shipped import shapes_backbone

    return shapes_backbone()


@pytest.fixture(scope="module")
def vit_bb():
    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("zscir-tiny-test", pretrained=None)


def test_draft_decode_is_the_smallest_dct_scale_covering_the_input(tmp_path):
    for path in [p for _, p in photo_jpegs(tmp_path, 6)]:
        data = path.read_bytes()
        full = decode_image(data)
        for min_size in (32, 64, 100, 224, 240, 300):
            draft = decode_image(data, min_size=min_size)
            short = min(draft.size)
            assert short >= min(min_size, min(full.size))
            if draft.size != full.size:  # reduced: by 2, 4 or 8, and the next reduction would not cover
                scale = full.size[0] / draft.size[0]
                assert round(scale) in (2, 4, 8) and abs(full.size[1] / draft.size[1] - scale) < 0.1
                assert min(full.size) / (2 * round(scale)) < min_size or round(scale) == 8
            else:
                assert min(full.size) / 2 < min_size  # half the size would be too small
    png = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(png, "PNG")
    assert decode_image(png.getvalue(), min_size=64).size == (400, 300)  # only JPEGs have draft scales


@pytest.mark.parametrize("name, bound", [("world_bb", 0.99), ("vit_bb", 0.998)])
def test_draft_decode_changes_features_by_a_bounded_amount(name, bound, request, tmp_path):
    bb = request.getfixturevalue(name)
    sources, bad = as_sources(photo_jpegs(tmp_path, 12))
    assert not bad
    full = np.concatenate([b.pooled for b in encode_sources(bb, sources, batch_size=6, workers=0)]).astype(np.float32)
    draft = np.concatenate([b.pooled for b in encode_sources(bb, sources, batch_size=6, workers=0, draft=True)]
                           ).astype(np.float32)
    cos = (full * draft).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(draft, axis=1)
    # measured on these 12 photos: world CLIP (64 px, trained on flat shapes: photos at 1/8 scale move
    # it most) min 0.992, median 0.9999; the tiny test ViT (random weights) min 0.9999
    assert cos.min() > bound and np.median(cos) > 0.999, cos
    assert not np.array_equal(full, draft)  # draft decoding did happen


def test_worker_processes_give_the_same_features_as_in_process(world_bb, tmp_path):
    items = photo_jpegs(tmp_path, 10)
    items.append(("broken", tmp_path / "broken.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    sources, _ = as_sources(items)
    runs = []
    for workers in (0, 2):
        batches = list(encode_sources(world_bb, sources, batch_size=3, workers=workers, draft=True))
        runs.append((sum((b.ids for b in batches), []), np.concatenate([b.pooled for b in batches if b.ids]),
                     sum((b.corrupt for b in batches), [])))
    (ids0, p0, bad0), (ids2, p2, bad2) = runs
    assert ids0 == ids2 == [i for i, _ in items[:10]]
    np.testing.assert_array_equal(p0, p2)
    assert [i for i, _ in bad0] == [i for i, _ in bad2] == ["broken"]


def test_batches_travel_as_uint8_pixels_and_normalise_to_the_same_bits(world_bb, tmp_path):
    from torchvision.transforms import functional as TF

    pre = world_bb.preprocess
    items = photo_jpegs(tmp_path, 6)
    images = [decode_image(p.read_bytes(), min_size=pre.size) for _, p in items]
    images.append(Image.new("P", (90, 300), 3))    # elongated: target-padded; a palette image
    for image in images:
        pixels = pre.pixels(image)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, pre.size, pre.size)
        padded = TF.center_crop(TF.resize(pre._pad(image), pre.size, interpolation=TF.InterpolationMode.BICUBIC),
                                pre.size).convert("RGB")
        reference = TF.normalize(TF.to_tensor(padded), pre.mean, pre.std)   # torchvision's float pipeline
        assert torch.equal(pre(image), reference)
        assert torch.equal(pre.normalize(torch.stack([pixels, pixels]))[1], reference)
    # what encode_sources feeds the model: the same features as preprocessing each image by itself
    sources, _ = as_sources(items)
    pooled = np.concatenate([b.pooled for b in encode_sources(world_bb, sources, batch_size=4, workers=0, draft=True)])
    with torch.inference_mode():
        batches = [torch.stack([pre(im) for im in images[s:min(s + 4, 6)]]) for s in (0, 4)]   # the same batches
        direct = np.concatenate([world_bb.encode_image(x).pooled.numpy() for x in batches])
    np.testing.assert_array_equal(pooled, direct.astype(np.float16))


def test_fp16_and_bf16_need_native_cpu_support():
    check_precision("fp32", "cpu", frozenset())
    with pytest.raises(ZscirError, match="avx512_fp16") as e:
        check_precision("fp16", "cpu", frozenset({"avx512f", "avx512_bf16"}))
    assert "\n" not in str(e.value)
    with pytest.raises(ZscirError, match="avx512_bf16"):
        check_precision("bf16", "cpu", frozenset({"avx2"}))
    check_precision("fp16", "cpu", frozenset({"avx512_fp16"}))
    check_precision("bf16", "cpu", frozenset({"amx_bf16"}))
    with pytest.raises(ZscirError, match="--precision"):
        check_precision("int8", "cpu")


def test_an_fp32_store_is_not_reused_by_a_bf16_run(world_bb, tmp_path):
    from zscir.utils.cpu import has_native
    from zscir.index.gallery import GalleryIndex, build_index

    if not has_native("bf16"):
        pytest.skip("this CPU has no native bf16")
    items = photo_jpegs(tmp_path / "imgs", 6)
    out = tmp_path / "idx"
    build_index(out, world_bb, items=items, batch_size=3, workers=0, progress=False)
    fp32 = np.asarray(FeatureStore(out / "features").load().pooled, np.float32)
    with pytest.raises(ZscirError, match="fp32 features, not bf16"):
        build_index(out, world_bb, items=items, batch_size=3, workers=0, progress=False, precision="bf16")
    with pytest.raises(ZscirError, match="two precisions are never mixed"):  # the store itself refuses too
        FeatureStore(out / "features").update(world_bb, items, precision="bf16", progress=False)
    summary = build_index(out, world_bb, items=items, batch_size=3, workers=0, progress=False, precision="bf16",
                          force=True)
    assert summary["features"]["encoded"] == 6 and summary["features"]["reused"] == 0
    store = FeatureStore(out / "features")
    assert store.meta["precision"] == "bf16" and GalleryIndex.open(out).meta["precision"] == "bf16"
    bf16 = np.asarray(store.load().pooled, np.float32)
    assert not np.array_equal(bf16, fp32)
    cos = (bf16 * fp32).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cos.min() > 0.99, cos
    # and a bf16 index is not silently reused by an fp32 run either
    with pytest.raises(ZscirError, match="bf16 features, not fp32"):
        build_index(out, world_bb, items=items, batch_size=3, workers=0, progress=False)


def test_index_cli_reads_webdataset_shards(tmp_path):
    import json
    import tarfile

    from click.testing import CliRunner

    from zscir.cli import cli
    from zscir.index.gallery import GalleryIndex

    photos = photo_jpegs(tmp_path / "photos", 6)
    (tmp_path / "shards").mkdir()
    for s in range(2):
        with tarfile.open(tmp_path / "shards" / f"{s:05d}.tar", "w") as tar:
            for name, path in photos[s * 3:(s + 1) * 3]:
                tar.add(path, arcname=f"{name}.jpg")
    runs = {}
    for label, spec in (("tar", str(tmp_path / "shards" / "{00000..00001}.tar")), ("folder", str(tmp_path / "photos"))):
        res = CliRunner().invoke(cli, ["index", "--images", spec, "--out", str(tmp_path / label), "--json",
                                       "--no-progress", "--workers", "0"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout[res.stdout.index("{"):])["count"] == 6
        runs[label] = FeatureStore(tmp_path / label / "features").load()
    assert runs["tar"].ids == [n for n, _ in photos] and runs["folder"].ids == [f"{n}.jpg" for n, _ in photos]
    assert GalleryIndex.open(tmp_path / "tar").ids == runs["tar"].ids
    np.testing.assert_array_equal(np.asarray(runs["tar"].pooled), np.asarray(runs["folder"].pooled))


@pytest.mark.parametrize("full_s, fewer_s, kept", [(1.0, 0.5, 1), (0.5, 0.6, 4), (0.5, 1.0, 4)])
def test_core_balance_keeps_the_faster_thread_split(full_s, fewer_s, kept, monkeypatch):
    from zscir.features import encode

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    clock = [0.0]
    monkeypatch.setattr(encode.time, "perf_counter", lambda: clock[0])
    try:
        balance = encode.CoreBalance(workers=3)          # all 4 threads, then 4 - 3 = 1
        assert balance.active and balance.fewer == 1
        seen = []
        for b in range(1 + 3 * balance.WINDOW):
            # the start-up batch is slow and not timed; then each batch costs its window's share
            clock[0] += 5.0 if b == 0 else (full_s if torch.get_num_threads() == 4 else fewer_s) / balance.WINDOW
            balance.batch_done()
            seen.append(torch.get_num_threads())
        w = balance.WINDOW
        assert balance.trials == pytest.approx([full_s, fewer_s])
        # seen[b]: the threads after batch b (b = 0: start-up); the switch comes after batch w
        if fewer_s > 1.5 * full_s:      # clearly slower: the trial stops after its first batch
            assert seen[:w] == [4] * w and seen[w] == 1 and set(seen[w + 1:]) == {4}
        else:
            assert seen[:w] == [4] * w and seen[w:2 * w] == [1] * w and set(seen[2 * w:]) == {kept}
        balance.restore()
        assert torch.get_num_threads() == 4
        torch.set_num_threads(2)
        assert not encode.CoreBalance(workers=0).active     # decoding in this process: nothing to share
    finally:
        torch.set_num_threads(before)


def test_decoding_workers_share_the_cores_with_the_other_processes_of_a_launch(monkeypatch):
    from zscir.features import loader

    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader.default_decode_workers() == 8            # one per core, at most 8
    for local, workers in (("1", 8), ("2", 6), ("4", 3), ("16", 1), ("not a number", 8)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert loader.default_decode_workers() == workers, local
