"""The resumable caption cache: a SIGKILL mid-run loses nothing and captions nothing twice."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from PIL import Image

from zscir.data import caption_cache
from zscir.data.caption_cache import CaptionCache, caption_images
from zscir.generation.base import Captioner
from zscir.generation.registry import build_captioner
from zscir.data.sources import open_image_source
from zscir.errors import ZscirError
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

FAKE_CAPTIONER = '''
import time
from zscir.generation.base import Captioner
from zscir.utils.testpoint import testpoint


class SlowFakeCaptioner(Captioner):
    """Slow, deterministic, and logs every image it finishes captioning."""

    name, identity, needs_images, cacheable = "slow-fake", "slow-fake-v1", True, True

    def __init__(self, log, hang_on_call=None, marker=None, delay=0.02):
        self.log, self.hang_on_call, self.marker, self.delay, self.calls = log, hang_on_call, marker, delay, 0

    def caption(self, items, images):
        self.calls += 1
        if self.calls == self.hang_on_call:
            open(self.marker, "w").close()
            time.sleep(600)  # killed here, in the middle of a batch
        time.sleep(self.delay)
        testpoint("fake.caption")  # a test may pause (and kill) it here, inside a batch
        captions = [f"a picture {it.id} of width {im.size[0]}" for it, im in zip(items, images)]
        with open(self.log, "a") as f:
            f.write("".join(it.id + "\\n" for it in items))
        return captions
'''

RUN_SCRIPT = '''
import sys
sys.path.insert(0, {tmp!r})
from fake_captioner import SlowFakeCaptioner
from zscir.data.caption_cache import caption_images
from zscir.data.sources import open_image_source

captioner = SlowFakeCaptioner({log!r}, hang_on_call={hang}, marker={marker!r}, delay={delay})
caption_images(open_image_source({images!r}), captioner, {cache!r}, batch_size=4, progress=False)
'''


def make_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (10 + i, 8), (i * 5, 100, 200)).save(folder / f"img{i:03d}.png")


@pytest.mark.multiprocess
def test_sigkill_midway_then_rerun_captions_every_image_exactly_once(tmp_path):
    (tmp_path / "fake_captioner.py").write_text(FAKE_CAPTIONER)
    images = tmp_path / "images"
    make_images(images, 30)
    (images / "zz_copy_of_img000.png").write_bytes((images / "img000.png").read_bytes())
    (images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    log, cache, marker = tmp_path / "calls.log", tmp_path / "cache.jsonl", tmp_path / "hanging"
    script = RUN_SCRIPT.format(tmp=str(tmp_path), log=str(log), hang=4, marker=str(marker),
                               images=str(images), cache=str(cache), delay=0.02)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=interruptible)
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, "the captioning run ended before reaching the kill point"
        assert time.time() < deadline, "the captioning run never reached the kill point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    first_run = log.read_text().split()
    assert len(first_run) == 12  # three batches of 4 were finished before the kill
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sum("h" in r for r in cached) == 12

    sys.path.insert(0, str(tmp_path))
    try:
        from fake_captioner import SlowFakeCaptioner
    finally:
        sys.path.remove(str(tmp_path))
    source = open_image_source(str(images))
    result = caption_images(source, SlowFakeCaptioner(str(log), delay=0), str(cache), batch_size=4, progress=False)

    calls = Counter(log.read_text().split())
    good = [f"img{i:03d}.png" for i in range(30)]
    assert set(calls) == set(good)                 # none lost
    assert max(calls.values()) == 1                # none captioned twice (the copy shares img000's caption)
    assert list(result) == good + ["zz_copy_of_img000.png"]
    assert result["zz_copy_of_img000.png"] == result["img000.png"] == "a picture img000.png of width 10"
    assert result["img029.png"] == "a picture img029.png of width 39"
    assert (result.from_cache, result.captioned) == (13, 18)  # the copy found img000 in the cache
    assert result.skipped.reasons == {"zz_broken.png": "not an image"}

    again = caption_images(open_image_source(str(images)), SlowFakeCaptioner(str(log)), str(cache), progress=False)
    assert dict(again) == dict(result) and again.captioned == 0 and again.from_cache == 31
    assert sum(Counter(log.read_text().split()).values()) == 30


def _cached_ids(cache) -> set[str]:
    """Ids whose caption is durably in the cache (whole lines only: a cut last line is not finished)."""
    if not cache.exists():
        return set()
    return {json.loads(line)["id"] for line in cache.read_bytes().split(b"\n")[:-1] if b'"h"' in line}


@pytest.mark.multiprocess
def test_sigint_and_sigkill_at_random_points_lose_nothing_and_redo_nothing_finished(tmp_path):
    """Four interruptions (SIGKILL and SIGINT, at random moments): what was cached is never captioned
    again, no line is half-written once the cache is reopened, and the final result equals an
    uninterrupted run's."""
    import random

    (tmp_path / "fake_captioner.py").write_text(FAKE_CAPTIONER)
    images = tmp_path / "images"
    make_images(images, 40)
    sys.path.insert(0, str(tmp_path))
    try:
        from fake_captioner import SlowFakeCaptioner
    finally:
        sys.path.remove(str(tmp_path))
    reference = caption_images(open_image_source(str(images)), SlowFakeCaptioner(str(tmp_path / "ref.log"), delay=0),
                               str(tmp_path / "ref.jsonl"), batch_size=4, progress=False)

    log, cache = tmp_path / "calls.log", tmp_path / "cache.jsonl"
    script = RUN_SCRIPT.format(tmp=str(tmp_path), log=str(log), hang=None, marker="", images=str(images),
                               cache=str(cache), delay=0)
    rng = random.Random(3)
    for round_, sig in enumerate((signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT)):
        done_before = _cached_ids(cache)
        calls_before = len(log.read_text().split()) if log.exists() else 0
        # after 1 or 2 batches of this run: inside the next batch, or while the batch's lines are written
        batches = rng.randint(1, 2)
        point = rng.choice([("fake.caption", batches + 1), ("caption_cache.write", batches)])
        marker = tmp_path / f"paused{round_}"
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL,
                                env={**os.environ, **pause_env(marker, dict([point]))}, preexec_fn=interruptible)
        wait_paused(proc, marker)  # the child waits there until the signal, however busy the machine
        proc.send_signal(sig)
        proc.wait()
        redone = set(log.read_text().split()[calls_before:]) & done_before
        assert not redone, f"captioned again after {sig!r}: {sorted(redone)}"
        assert done_before <= _cached_ids(cache)  # nothing finished was lost
    with CaptionCache(cache, "slow-fake-v1") as reopened:
        assert reopened.dropped_lines <= 1   # at most the line cut by the last kill, dropped on reopening
    assert all(json.loads(line) for line in cache.read_text().splitlines())

    final = caption_images(open_image_source(str(images)), SlowFakeCaptioner(str(log), delay=0), str(cache),
                           batch_size=4, progress=False)
    assert dict(final) == dict(reference) and list(final) == list(reference)
    done = _cached_ids(cache)
    assert len(done) == 40 and sorted(done) == sorted(reference)


def test_a_half_written_last_line_is_dropped_and_appends_stay_valid(tmp_path):
    path = tmp_path / "cache.jsonl"
    with CaptionCache(path, "cap-A") as cache:
        cache.add_many([("h1", "a.png", "a cat"), ("h2", "b.png", "a dog")])
    with open(path, "ab") as f:
        f.write(b'{"h": "h3", "c": "')  # the kill came in the middle of a write
    with CaptionCache(path, "cap-A") as cache:
        assert cache.entries == {"h1": "a cat", "h2": "a dog"}
        assert cache.dropped_lines == 1
        cache.add_many([("h3", "c.png", "a bird")])
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 5  # header, declaration, 3 captions
    assert json.loads(lines[0]) == caption_cache.HEADER
    with CaptionCache(path, "cap-A") as cache:
        assert cache.get("h3") == "a bird" and cache.dropped_lines == 0


def test_a_different_captioner_identity_never_reuses_captions(tmp_path):
    path = tmp_path / "cache.jsonl"
    with CaptionCache(path, "blip:model@1|beams=3") as cache:
        cache.add_many([("h1", "a.png", "old caption")])
    with CaptionCache(path, "blip:model@1|beams=5") as other:
        assert len(other) == 0
        other.add_many([("h1", "a.png", "new caption")])
    with CaptionCache(path, "blip:model@1|beams=3") as cache:
        assert cache.get("h1") == "old caption"
    declarations = [json.loads(x) for x in path.read_text().splitlines() if "captioner" in x]
    assert [d["captioner"] for d in declarations] == ["blip:model@1|beams=3", "blip:model@1|beams=5"]


class PickyCaptioner(Captioner):
    """Fails on images narrower than ``fail_below`` pixels; counts calls."""

    name, identity = "picky", "picky-v1"

    def __init__(self, fail_below=0):
        self.fail_below, self.calls = fail_below, 0

    def caption(self, items, images):
        self.calls += 1
        if any(im.size[0] < self.fail_below for im in images):
            raise ValueError("cannot caption this one")
        return [f"width {im.size[0]}" for im in images]


def test_one_image_the_captioner_fails_on_is_skipped_not_its_batch(tmp_path):
    make_images(tmp_path / "imgs", 8)  # widths 10..17
    source = open_image_source(str(tmp_path / "imgs"))
    result = caption_images(source, PickyCaptioner(fail_below=11), tmp_path / "c.jsonl", batch_size=4, progress=False)
    assert len(result) == 7 and "img000.png" not in result and result["img001.png"] == "width 11"
    assert result.skipped.reasons == {"img000.png": "captioner failed (ValueError)"}


def test_a_broken_captioner_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_cache, "MAX_CONSECUTIVE_FAILURES", 5)
    make_images(tmp_path / "imgs", 8)
    with pytest.raises(ZscirError, match="failed on 5 images in a row.*ValueError"):
        caption_images(open_image_source(str(tmp_path / "imgs")), PickyCaptioner(fail_below=1000),
                       tmp_path / "c.jsonl", batch_size=4, progress=False)


def test_wrong_number_of_captions_is_an_error_not_a_shift(tmp_path):
    class Short(PickyCaptioner):
        def caption(self, items, images):
            return ["one caption"][: len(items) - 1] if len(items) > 1 else ["one caption"]

    make_images(tmp_path / "imgs", 3)
    result = caption_images(open_image_source(str(tmp_path / "imgs")), Short(), tmp_path / "c.jsonl",
                            batch_size=3, progress=False)
    assert dict(result) == {f"img{i:03d}.png": "one caption" for i in range(3)}  # retried one by one


def test_lookup_captioners_neither_cache_nor_decode(tmp_path):
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    captions = tmp_path / "caps.jsonl"
    captions.write_text("\n".join(json.dumps({"id": f"img{i:03d}.png", "caption": f"c{i}"}) for i in range(2)))
    source = open_image_source(str(tmp_path / "imgs"))
    result = caption_images(source, build_captioner("file", path=str(captions)), tmp_path / "unused.jsonl",
                            progress=False)
    assert dict(result) == {"img000.png": "c0", "img001.png": "c1"}
    assert result.skipped.reasons == {"broken.png": "no caption", "img002.png": "no caption"}
    assert not (tmp_path / "unused.jsonl").exists() and result.cache_path is None


def test_duplicate_ids_across_shards_are_reported(tmp_path):
    import io
    import tarfile

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    for shard in ("00000.tar", "00001.tar"):
        with tarfile.open(tmp_path / shard, "w") as tar:
            info = tarfile.TarInfo("000000007.png")
            info.size = len(png.getvalue())
            tar.addfile(info, io.BytesIO(png.getvalue()))
    source = open_image_source(str(tmp_path / "{00000..00001}.tar"))
    result = caption_images(source, PickyCaptioner(), tmp_path / "c.jsonl", progress=False)
    assert list(result) == ["000000007"]
    assert result.skipped.reasons == {"000000007 (again)": "duplicate id"}


def test_default_cache_path_is_per_identity_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path))
    a = caption_cache.default_cache_path("blip:Salesforce/blip@abc|beams=3")
    b = caption_cache.default_cache_path("blip:Salesforce/blip@abc|beams=5")
    assert a.parent == b.parent == tmp_path / "captions" and a != b
    assert a.name.startswith("blip_Salesforce_blip_abc-")
