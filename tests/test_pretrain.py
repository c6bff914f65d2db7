"""Pretraining loop: exact resume after SIGKILL, and 2 processes (gloo) == 1 process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _torchrun import torchrun
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

DRIVER = str(Path(__file__).parent / "drivers" / "pretrain_driver.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigint_and_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(tmp_path, features):
    """Three interruptions (SIGKILL, SIGINT, SIGKILL) at random steps and moments within a step or a save:
    the resumed run ends with the same weights and the same log (each step once, same losses)."""
    from zscir.checkpoint import load_checkpoint

    straight = tmp_path / "straight"
    subprocess.run([sys.executable, DRIVER, "train", features, str(straight)], env=ENV, check=True)

    killed = tmp_path / "killed"
    rng = np.random.default_rng(13)
    for n, sig in enumerate([signal.SIGKILL, signal.SIGINT, signal.SIGKILL]):
        # after 1 or 2 steps of this run: before its save, inside the next step, or inside this run's first save
        steps = int(rng.integers(1, 3))
        point = [("pretrain.step", steps), ("driver.forward", steps + 1), ("driver.save", 1)][int(rng.integers(0, 3))]
        marker = tmp_path / f"paused{n}"
        cmd = [sys.executable, DRIVER, "train", features, str(killed), "--pause-points"] + (["--resume"] if n else [])
        proc = subprocess.Popen(cmd, env={**ENV, **pause_env(marker, dict([point]))}, stderr=subprocess.DEVNULL,
                                preexec_fn=interruptible)
        wait_paused(proc, marker)  # the child waits there until the signal, however busy the machine
        proc.send_signal(sig)
        proc.wait()
        assert proc.returncode != 0 and not (killed / "model.safetensors").exists(), "the run finished first"
        if (killed / "train_state.json").exists():  # whole, and its weights match their sha256
            _, meta = load_checkpoint(killed / "train_state")
            assert meta["progress"]["global_step"] <= _steps_logged(killed)
    subprocess.run([sys.executable, DRIVER, "train", features, str(killed), "--resume"], env=ENV, check=True)

    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((killed / "model.json").read_text())["training"]["steps"] == 9
    want, got = _log(straight), _log(killed)
    assert [e["step"] for e in got] == list(range(1, 10))  # each step logged once, none lost
    assert [e["loss"] for e in got] == [e["loss"] for e in want]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_give_same_loss_and_gradients_as_one(tmp_path, features):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, DRIVER, "grads", features, str(one)], env=ENV, check=True)
    subprocess.run([*torchrun(2), DRIVER, "grads", features, str(two)],
                   env=ENV, check=True, capture_output=True)
    g1, g2 = load_file(one), load_file(two)
    assert g1["processes"].item() == 1 and g2["processes"].item() == 2
    torch.testing.assert_close(g2["loss"], g1["loss"], atol=1e-5, rtol=1e-5)
    for k in g1:
        if k not in ("loss", "processes"):
            torch.testing.assert_close(g2[k], g1[k], atol=1e-5, rtol=1e-4, msg=k)
    assert sum(v.abs().sum() for k, v in g1.items() if k not in ("loss", "processes")) > 0
