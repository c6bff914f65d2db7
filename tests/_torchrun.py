"""The torchrun command the multi-process tests start: `--standalone` picks a free port, so two
suites (or a suite beside a user's job) on one machine never meet on a fixed one."""

from __future__ import annotations

import shutil

import pytest


def torchrun(nproc: int = 2) -> list[str]:
    path = shutil.which("torchrun")
    if path is None:
        pytest.skip("torchrun not on PATH")
    return [path, "--standalone", "--nproc_per_node", str(nproc)]
