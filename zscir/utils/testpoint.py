"""Named pause points, so that a test decides where a child process is when it sends a signal.

A long-running loop calls ``testpoint("area.point")`` at a place worth interrupting. Unless
the environment says otherwise this is one dictionary lookup and nothing happens. A test sets

    ZSCIR_TEST_PAUSE_AT="area.point:3"        (or several, comma-separated: "a:2,b:1")
    ZSCIR_TEST_PAUSE_FILE=/tmp/.../paused

in the child's environment (:func:`pause_env`); the child, on reaching ``area.point`` for the
3rd time, writes "area.point 3 PID" to the pause file and blocks there until a signal ends or
interrupts it (SIGINT raises ``KeyboardInterrupt`` at that point, as a Ctrl-C would). The test
waits for the file (:func:`wait_paused`) and then signals: no sleep has to be long enough,
however busy the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

PAUSE_AT = "ZSCIR_TEST_PAUSE_AT"
PAUSE_FILE = "ZSCIR_TEST_PAUSE_FILE"

_hits: dict[str, int] = {}


def interruptible() -> None:
    """``preexec_fn`` of a child a test will interrupt: SIGINT as a terminal's foreground process has it.

    A shell starts a background job (``pytest ... &``, ``nohup``) with SIGINT ignored, and an ignored
    signal is inherited by every child: without this, the child would sleep through the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _targets(spec: str) -> dict[str, int]:
    targets = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.rpartition(":")
        targets[name] = int(count)
    return targets


def testpoint(name: str) -> None:
    """Pause here if the environment names this point and this is its chosen hit (see the module doc)."""
    spec = os.environ.get(PAUSE_AT)
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _targets(spec).get(name) != _hits[name]:
        return
    marker = Path(os.environ[PAUSE_FILE])
    tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
    tmp.write_text(f"{name} {_hits[name]} {os.getpid()}\n")
    os.replace(tmp, marker)  # the test sees the whole line or nothing
    while True:  # until the test's signal: SIGKILL ends the process, SIGINT raises KeyboardInterrupt here
        time.sleep(3600)


testpoint.__test__ = False  # not a pytest test, whatever module imports it


def pause_env(marker: str | os.PathLike, points: dict[str, int]) -> dict[str, str]:
    """Environment entries that pause a child at ``points`` (name -> which hit, from 1)."""
    spec = ",".join(f"{name}:{count}" for name, count in points.items())
    return {PAUSE_AT: spec, PAUSE_FILE: str(marker)}


def wait_paused(proc: subprocess.Popen, marker: str | os.PathLike, timeout: float = 600) -> str:
    """Wait until ``proc`` has paused at its test point; return the point's name. Fails if it exits first."""
    marker = Path(marker)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited (code {proc.returncode}) before reaching its pause point")
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not reach its pause point within {timeout} s")
        time.sleep(0.01)
    return marker.read_text().split()[0]
