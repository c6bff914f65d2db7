"""Time the default shapes world's generation against its 2-minute budget.

    python eval/world_generate_time.py [--workers 2] [--keep DIR] [--without-multiturn-too]

Builds the default world (seed 0) into a temporary folder, prints the wall
time, the ratio to the budget, the counts and the machine's load average
(the machine may be shared), as JSON on the last line. ``--without-multiturn-too`` first
builds the same world without its multi-turn split (the v2 content), so that the cost of
that split is a ratio measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from zscir.world.build import WorldConfig, generate_world

BUDGET_SECONDS = 120


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="build here and keep the world (default: a temporary folder, removed)")
    parser.add_argument("--without-multiturn-too", action="store_true",
                        help="first time the world without its multi-turn split, and report the ratio")
    args = parser.parse_args()
    without = None
    if args.without_multiturn_too:
        from dataclasses import replace

        tmp = Path(tempfile.mkdtemp(prefix="zscir-world-"))
        load = os.getloadavg()[0]
        start = time.time()
        generate_world(tmp / "world", replace(WorldConfig(), num_multiturn=0), workers=args.workers, progress=False)
        without = {"seconds": round(time.time() - start, 1), "load_average_before": round(load, 2)}
        shutil.rmtree(tmp)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zscir-world-"))
    out = root / "world" if not args.keep else root
    load_before = os.getloadavg()
    start = time.time()
    generate_world(out, WorldConfig(), workers=args.workers, force=True, progress=False)
    seconds = time.time() - start
    counts = json.loads((out / "world.json").read_text())["counts"]
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    if not args.keep:
        shutil.rmtree(root)
    print(f"default world: {seconds:.1f} s for {counts['images']} images ({size_mb:.0f} MB); "
          f"budget {BUDGET_SECONDS} s -> ratio {seconds / BUDGET_SECONDS:.2f}; load average before {load_before[0]:.1f}")
    print(json.dumps({"seconds": round(seconds, 1), "budget_seconds": BUDGET_SECONDS,
                      "ratio": round(seconds / BUDGET_SECONDS, 3), "counts": counts, "size_mb": round(size_mb),
                      "load_average_before": round(load_before[0], 2), "workers": args.workers,
                      **({"without_multiturn": without, "ratio_to_without_multiturn":
                          round(seconds / without["seconds"], 3)} if without else {})}))


if __name__ == "__main__":
    main()
