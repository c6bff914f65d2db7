"""Notices about what is served, shown in /healthz and on the page.

The one notice today: photos searched with the shapes world's CLIP. The world's tiny CLIP was
trained on coloured shapes; an index built with it over any other gallery ranks photos by noise.
"The world's CLIP" is a backbone for which the default benchmark ships its query model; "the
world's gallery" is an index whose images lie under the benchmark's own data root.
"""

from __future__ import annotations

import os

from zscir.benchmarks import get_benchmark

DEFAULT_BENCHMARK = "shapes"


def world_clip_notice(index_meta: dict, benchmark: str = DEFAULT_BENCHMARK) -> str | None:
    spec = get_benchmark(benchmark)
    pick = spec.defaults.query_model
    identity = index_meta.get("backbone") or {}
    if pick is None or not pick(identity):
        return None
    images = index_meta.get("images_root")
    if images and spec.default_root is not None:
        world = os.path.realpath(spec.default_root())
        if os.path.realpath(images).startswith(world.rstrip(os.sep) + os.sep) or os.path.realpath(images) == world:
            return None
    return (f"this index was built with the {spec.title}'s CLIP ({identity.get('model')}), a tiny model trained on "
            "coloured shapes, over a gallery that is not the world's: rankings of photos are close to random; "
            "rebuild it with `zscir index --clip NAME --pretrained TAG|FILE` (e.g. ViT-L-14 openai)")
