"""Kill test for `zscir index`: SIGINT and SIGKILL at random points while it encodes, several times.

After each signal: every file under the index is whole (the feature store and, when present,
the index verify against their checksums), and after a SIGINT every image encoded before it
is kept (Ctrl-C flushes the finished part of the current shard: before issue 13 it discarded
everything since the last flush, i.e. the whole run here). A final rerun completes and gives
the same features and rankings as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zscir.utils.testpoint import interruptible

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_IMAGES = 360


def make_gallery(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(N_IMAGES):
        rng = np.random.default_rng(i)
        im = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(2):
            x, y = (int(v) for v in rng.integers(0, 36, 2))
            d.ellipse([x, y, x + 12, y + 12], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        im.save(folder / f"img{i:03d}.png")


def start_index(images: Path, out: Path) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`zscir index` (shapes world CLIP, batches of 1: a few seconds of encoding) in a child; its stderr is collected by a thread."""
    cmd = [sys.executable, "-c", "from zscir.cli import main; main()", "index", "--images", str(images),
           "--out", str(out), "--batch-size", "1", "--workers", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=interruptible)
    err: list[str] = []

    def pump():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            err.append(chunk.decode("utf-8", "replace"))
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return proc, err, reader


def finish(proc: subprocess.Popen, reader: threading.Thread) -> bytes:
    """Wait for the child; its stdout, with every byte of stderr collected (only the pump reads stderr)."""
    stdout = proc.stdout.read()
    proc.wait(timeout=600)
    reader.join(timeout=600)
    return stdout


def store_rows(out: Path) -> int:
    manifest = out / "features" / "manifest.json"
    if not manifest.is_file():
        return 0
    return sum(s["rows"] - len(s["dead"]) for s in json.loads(manifest.read_text())["shards"])


def assert_whole(out: Path, note: str) -> None:
    """Every file zscir wrote is complete: the store (and the index, once written) verify."""
    from zscir.features import FeatureStore
    from zscir.index.gallery import verify_index

    if (out / "features" / "manifest.json").is_file():
        checked, problems = FeatureStore(out / "features").verify()
        assert not problems, (note, problems)
    if (out / "index.json").is_file():
        report = verify_index(out)
        assert report["ok"], (note, report)


def test_sigint_and_sigkill_at_random_points_lose_nothing_finished(tmp_path):
    from zscir.features import FeatureStore
    from zscir.index.gallery import GalleryIndex, build_index
    from zscir.world.shipped import shapes_backbone

    images = tmp_path / "images"
    make_gallery(images)
    seed = int(time.time())
    rng = random.Random(seed)
    out = tmp_path / "idx"
    kept = 0
    for round_, sig in enumerate((signal.SIGINT, signal.SIGKILL, signal.SIGINT)):
        note = f"round {round_} ({signal.Signals(sig).name}), seed {seed}"
        proc, err, reader = start_index(images, out)
        target = rng.uniform(0.05, 0.8)  # a random point of the encoding: this fraction of the images to do
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            bars = re.findall(r"encoding images:\s+\d+%\|[^|]*\| (\d+)/(\d+)", "".join(err))
            if bars and int(bars[-1][0]) >= target * int(bars[-1][1]):
                break
            time.sleep(0.005)
        proc.send_signal(sig)
        stdout = finish(proc, reader)
        text = "".join(err)
        if stdout.strip().endswith(b"}"):  # it finished before the signal arrived (the summary is out)
            kept = N_IMAGES
            assert_whole(out, note)
            continue
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Traceback" not in text, (note, text)
            m = re.search(r"the (\d+) image\(s\) encoded in this run are saved", text)
            if m:  # interrupted while encoding: every image encoded before Ctrl-C was kept
                assert store_rows(out) == kept + int(m.group(1)), (note, text)
            else:  # interrupted after the encoding (consolidating, building the faiss index): all kept
                assert store_rows(out) == N_IMAGES, (note, text)
            kept = store_rows(out)
        else:
            assert proc.returncode == -signal.SIGKILL, (note, text)
            assert store_rows(out) >= kept, note  # a kill may lose the unflushed part, never a finished shard
            kept = store_rows(out)
        assert_whole(out, note)
    assert kept > 0, f"no round kept anything (seed {seed})"

    proc, err, reader = start_index(images, out)
    stdout = finish(proc, reader)
    assert proc.returncode == 0, "".join(err)
    summary = json.loads(stdout)
    assert summary["count"] == N_IMAGES and summary["features"]["reused"] == kept
    assert summary["features"]["encoded"] == N_IMAGES - kept
    assert_whole(out, "after the rerun")

    # the same result as one uninterrupted run
    bb = shapes_backbone()
    fresh = tmp_path / "fresh"
    build_index(fresh, bb, images=images, progress=False)
    a, b = FeatureStore(out / "features").load(), FeatureStore(fresh / "features").load()
    order = np.argsort(a.ids)
    assert sorted(a.ids) == sorted(b.ids) == [f"img{i:03d}.png" for i in range(N_IMAGES)]
    np.testing.assert_allclose(np.asarray(a.pooled, np.float32)[order],
                               np.asarray(b.pooled, np.float32)[np.argsort(b.ids)], atol=2e-3)
    queries = np.asarray(b.pooled[:5], np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ia, ib = GalleryIndex.open(out), GalleryIndex.open(fresh)
    ranks_a = [[ia.ids[r] for r in row] for row in ia.search(queries, 5)[1]]
    ranks_b = [[ib.ids[r] for r in row] for row in ib.search(queries, 5)[1]]
    assert ranks_a == ranks_b
