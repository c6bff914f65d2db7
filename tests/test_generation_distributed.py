"""`zscir caption` and `zscir edit` on two processes (torchrun, gloo on the CPU) leave the same cache as one:
each process generates its share into the one file, and sampled outputs do not depend on the rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _generation import noise_images, save_blip2, save_causal_lm
from _torchrun import torchrun

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow, pytest.mark.multiprocess]

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
N = 7  # not a multiple of 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    images = root / "images"
    images.mkdir()
    for i, im in enumerate(noise_images(N, seed=11)):
        im.save(images / f"img{i}.png")
    (images / "copy_of_img0.png").write_bytes((images / "img0.png").read_bytes())
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "caption": f"a red circle {i}", "instruction": "make it blue"})
                             + "\n" for i in range(N)))
    return {"images": images, "pairs": pairs, "blip2": save_blip2(root / "blip2"), "lm": save_causal_lm(root / "lm")}


def launch(args: list[str], nproc: int) -> dict:
    start = [sys.executable] if nproc == 1 else torchrun(nproc)
    proc = subprocess.run([*start, "-m", "zscir.cli", *args], env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def entries(cache) -> dict:
    """What a cache holds: (generator key, content key) -> outputs, and the declarations."""
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    held = {(r["c"], r["h"]): r.get("outputs", r.get("caption")) for r in rows if "h" in r}
    declared = sorted(json.dumps(r, sort_keys=True) for r in rows if "h" not in r)
    return {"entries": held, "declared": declared}


def test_two_processes_caption_and_edit_into_the_same_cache_as_one(setup, tmp_path):
    caption = ["caption", "--images", str(setup["images"]), "--captioner", f"blip2:{setup['blip2']}",
               "--decoding", "sample", "--num-outputs", "2", "--seed", "3", "--max-new-tokens", "4", "--device", "cpu",
               "--batch-size", "2", "--json", "--quiet"]
    one = launch([*caption, "--cache", str(tmp_path / "one.jsonl"), "--out", str(tmp_path / "one.out")], 1)
    two = launch([*caption, "--cache", str(tmp_path / "two.jsonl"), "--out", str(tmp_path / "two.out")], 2)
    assert one["captioned_now"] == N + 1 and two["processes"] == 2 and one["images"] == two["images"] == N + 1
    # the copy of img0 is in the other process's share: it finds img0's caption in the cache or captions it too
    assert two["captioned_now"] + two["from_cache"] == N + 1
    assert entries(tmp_path / "one.jsonl") == entries(tmp_path / "two.jsonl")
    assert len(entries(tmp_path / "one.jsonl")["entries"]) == N  # the copy shares img0's entry
    assert (tmp_path / "one.out").read_text() == (tmp_path / "two.out").read_text()

    edit = ["edit", "--editor", f"hf-lm:{setup['lm']}", "--pairs", str(setup["pairs"]), "--max-new-tokens", "4",
            "--device", "cpu", "--batch-size", "2", "--json", "--quiet"]
    one = launch([*edit, "--cache", str(tmp_path / "e1.jsonl"), "--out", str(tmp_path / "e1.out")], 1)
    two = launch([*edit, "--cache", str(tmp_path / "e2.jsonl"), "--out", str(tmp_path / "e2.out")], 2)
    assert one["edited_now"] == two["edited_now"] == N and two["processes"] == 2
    assert entries(tmp_path / "e1.jsonl") == entries(tmp_path / "e2.jsonl")
    assert (tmp_path / "e1.out").read_text() == (tmp_path / "e2.out").read_text()
