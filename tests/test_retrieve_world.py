"""Fresh install: `zscir retrieve` with no --index and no --model answers the documented shapes-world examples.

Uses the default cache directory (where the default world and its index are built on first
use, as on a user's machine); the first run in a clean cache builds both (about a minute).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zscir.index.examples import EXAMPLES_FILE, TOP_K, examples_jsonl, load_examples


def _shipped_fti():
    from zscir.errors import ZscirError
    from zscir.world import shipped

    try:
        backbone = shipped.shapes_backbone()
    except ZscirError as e:
        return None, f"the shapes world's CLIP is not shipped: {e}"
    ckpt = shipped.shipped_fti_checkpoint(backbone.identity)
    if ckpt is None:
        return None, "no shipped FTI checkpoint for the shapes CLIP in checkpoints/"
    if not EXAMPLES_FILE.is_file():
        return None, f"{EXAMPLES_FILE.name} not generated (python -m zscir.index.examples_cli)"
    return ckpt, ""


@pytest.mark.slow
def test_fresh_install_answers_the_documented_examples(tmp_path):
    ckpt, reason = _shipped_fti()
    if ckpt is None:
        pytest.skip(reason)
    from zscir.world.build import default_world

    record = load_examples()
    assert len(record["examples"]) >= 20 and record["k"] == TOP_K
    world = default_world(progress=False, log=lambda m: None)
    queries = examples_jsonl(world, tmp_path / "examples.jsonl")
    exe = shutil.which("zscir")
    cmd = ([exe] if exe else [sys.executable, "-c", "from zscir.cli import main; main()"])
    proc = subprocess.run(cmd + ["retrieve", "--queries", str(queries), "-k", str(TOP_K), "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["model"]["method"] == "fti" and data["skipped"] == []
    answers = data["queries"]
    assert len(answers) == len(record["examples"])
    missed = []
    for ex, ans in zip(record["examples"], answers):
        top = [Path(h["path"]).name for h in ans["results"]]
        if Path(ex["target"]).name not in top:
            missed.append((ex["val_id"], ex["text"], top))
    assert not missed, missed
