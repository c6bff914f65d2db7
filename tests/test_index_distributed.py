"""`zscir index` on two processes (torchrun, gloo on the CPU) == on one process; a killed
two-process run resumes per shard and ends with the same features and index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from _torchrun import torchrun
from zscir.features import FeatureStore
from zscir.index.gallery import GalleryIndex, normalized

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow, pytest.mark.multiprocess]

N = 22  # not a multiple of the 2 processes x batch: shares of 11, batches that end early
DRIVER = str(Path(__file__).parent / "drivers" / "index_driver.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for i in range(N):
        rng = np.random.default_rng(i)
        size = [(96, 72), (64, 64), (80, 120)][i % 3]
        im = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        d.rectangle([x, y, x + 24, y + 20], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        im.save(folder / f"img{i:03d}.{'jpg' if i % 2 else 'png'}", **({"quality": 92} if i % 2 else {}))
    return folder


def index_cli(images, out, nproc: int) -> dict:
    args = ["index", "--images", str(images), "--out", str(out), "--batch-size", "4", "--shard-size", "4",
            "--workers", "0", "--json", "--no-progress"]
    start = [sys.executable] if nproc == 1 else torchrun(nproc)
    proc = subprocess.run([*start, "-m", "zscir.cli", *args], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def assert_same_index(a: Path, b: Path) -> None:
    fa, fb = FeatureStore(a / "features").load(tokens=False), FeatureStore(b / "features").load(tokens=False)
    assert fa.ids == fb.ids and len(fa.ids) == N  # the same rows in the same order
    np.testing.assert_allclose(np.asarray(fb.pooled, np.float32), np.asarray(fa.pooled, np.float32),
                               atol=2e-3, rtol=2e-3)
    ia, ib = GalleryIndex.open(a), GalleryIndex.open(b)
    assert ia.ids == ib.ids and ia.keys == ib.keys and ia.meta["kind"] == ib.meta["kind"]
    assert [Path(p).name for p in ia.paths] == [Path(p).name for p in ib.paths]
    queries = normalized(np.asarray(fa.pooled))
    sa, ra = ia.search(queries, 5)
    sb, rb = ib.search(queries, 5)
    np.testing.assert_array_equal(ra[:, 0], np.arange(N))  # each image finds itself first
    np.testing.assert_allclose(sb, sa, atol=2e-3)
    assert (ra == rb).mean() > 0.95  # ties between near-identical scores may swap
    assert not (b / "features" / "ranks").exists()  # the per-process stores were merged and removed


@pytest.fixture(scope="module")
def one_process(gallery, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("one") / "index"
    return out, index_cli(gallery, out, 1)


def test_two_processes_give_the_same_features_and_index_as_one(gallery, one_process, tmp_path):
    reference, one = one_process
    two = index_cli(gallery, tmp_path / "two", 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["features"]["encoded"] == one["features"]["encoded"] == N
    assert two["features"]["by_process"] == [N // 2, N - N // 2]  # each process encoded its share
    assert_same_index(reference, tmp_path / "two")


def test_killed_two_process_run_resumes_per_shard(gallery, one_process, tmp_path):
    out = tmp_path / "idx"
    base = [*torchrun(2), DRIVER, str(gallery), str(out)]
    # process 1 is SIGKILLed before its 6th batch (of 1 image): its shards of 2 hold 4 images
    killed = subprocess.run([*base, "--kill-rank", "1", "--after", "5"], env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode != 0
    assert not (out / "index.json").exists()
    rank1 = FeatureStore(out / "features" / "ranks" / "rank-00001")
    kept = rank1.load(tokens=False).ids
    share1 = sorted(p.name for p in gallery.iterdir())[N // 2:]
    assert kept == share1[:4]  # the finished shards, in order

    resumed = subprocess.run(base, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["count"] == N and summary["features"]["encoded"] == N
    assert summary["features"]["by_process"][1] == len(share1) - 4  # only what the kill lost was encoded again
    assert_same_index(one_process[0], out)



PROCESS_GROUP_SCRIPT = """
import atexit, os, sys
import torch.distributed as dist
out = sys.argv[1]
# registered before current_ranks, so it runs after zscir's exit handler (atexit runs the last registered first)
atexit.register(lambda: open(f"{out}.exit{os.environ['RANK']}", "w").write(str(dist.is_initialized())))
from zscir.features.distributed import current_ranks
ranks = current_ranks("cpu")
ranks.barrier()
"""


def test_a_launched_process_ends_its_process_group_before_the_interpreter_teardown(tmp_path):
    """gloo's threads left to the interpreter's teardown can abort a finished process (SIGABRT, "terminate called
    without an active exception"), failing the launcher's job: zscir ends the group in an exit handler."""
    script = tmp_path / "pg.py"
    script.write_text(PROCESS_GROUP_SCRIPT)
    out = tmp_path / "mark"
    proc = subprocess.run([*torchrun(2), str(script), str(out)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the group was alive after current_ranks (the barrier ran) and gone when the later exit handler ran
    assert [(tmp_path / f"mark.exit{r}").read_text() for r in (0, 1)] == ["False", "False"]
