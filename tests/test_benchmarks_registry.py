"""The benchmark and family registries: every benchmark names a family, the world is a plugin loaded by path."""

from __future__ import annotations

import os
import subprocess
import sys

from zscir.benchmarks import BENCHMARKS, KINDS, get_benchmark
from zscir.evaluation.families import FAMILIES
from zscir.evaluation.protocol import CHOICE_RECORDS

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_every_benchmark_names_a_family_and_known_protocol_choices():
    assert set(FAMILIES) == set(KINDS)
    for name in BENCHMARKS:
        spec = get_benchmark(name)
        assert spec.name == name and spec.family in FAMILIES and spec.gallery_definition
        assert set(spec.protocol_choices) <= set(CHOICE_RECORDS)
    assert FAMILIES["cirr"].subset_k == 3 and not FAMILIES["circo"].subset_k
    assert FAMILIES["fashioniq"].category_mean is not None and FAMILIES["circo"].category_mean is None


def test_the_shapes_world_is_a_plugin_loaded_by_import_path_on_first_use():
    code = ("import sys\nimport zscir.benchmarks as b, zscir.evaluation.run, zscir.evaluation.report\n"
            "print(isinstance(b.BENCHMARKS['shapes'], str), any(m.startswith('zscir.world') for m in sys.modules))\n"
            "spec = b.get_benchmark('shapes')\n"
            "import zscir.world.benchmark as w\n"
            "print(spec is w.SPEC, b.BENCHMARKS['shapes'] is w.SPEC, spec.defaults is w.DEFAULTS)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "True", "True", "True"]
