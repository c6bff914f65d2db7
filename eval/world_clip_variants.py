"""Variants of the world CLIP's image tower: their step cost, and the shipped recipe trained on each.

The world CLIP (`zscir-shapes-vit`, 72 px, 12-px patches) separated compact shapes and solid vs dotted worst
(checkpoints/shapes_clip.md). The variants tried, each one change from the 128-wide tower shipped until
2026-12-07 (run 8 of the card):

    base  that 128-wide image tower (4 heads of 32)
    p8    8-px patches on the same 72-px render (9x9 grid, 82 tokens; the world's images unchanged)
    r96   a 96-px render with 12-px patches (8x8 grid, 65 tokens; a new world render)
    w192  an image tower of width 192 (6 heads of 32): the shipped `zscir-shapes-vit` since 2026-12-07 (run 10)

    python eval/world_clip_variants.py --step-cost           # s/step of every variant in one run (random batch)
    python eval/world_clip_variants.py --train p8 --out runs/clip-p8   # the shipped recipe, one thing changed
    python eval/world_clip_variants.py --train w192 --steps 1600 --out runs/clip-w192-1600   # card's run 10: 45 min

``--train`` uses `zscir world train-backbone`'s defaults (seed 0, 200,000 scenes, 1,600 steps, batch 256;
runs 6 and 7 of the card ran the then defaults, 100,000 scenes and 700 steps), ``--steps`` overriding the
step count, and writes OUT/record.json: timings, the machine's load average and the held-out numbers
(`zscir world eval-backbone`'s 1,000 scenes).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

VARIANTS = {"base": {"width": 128}, "p8": {"width": 128, "patch_size": 8}, "r96": {"width": 128, "image_size": 96},
            "w192": {"width": 192}}


def register_variants() -> None:
    """Make `zscir-shapes-vit-<variant>` known to open_clip (configs written to a temporary folder)."""
    import open_clip

    from zscir.backbone.loading import MODEL_CONFIG_DIR, register_model_configs

    register_model_configs()
    base = json.loads((MODEL_CONFIG_DIR / "zscir-shapes-vit.json").read_text())
    folder = Path(tempfile.mkdtemp(prefix="zscir-clip-variants-"))
    for name, change in VARIANTS.items():
        cfg = copy.deepcopy(base)
        cfg["vision_cfg"].update(change)
        (folder / f"zscir-shapes-vit-{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def step_cost(steps: int = 6, warmup: int = 2) -> dict:
    """Seconds per training step (forward, backward, AdamW) of each variant on a random batch of 256
    images and 256 30-token texts, 2 threads."""
    import open_clip
    import torch
    import torch.nn.functional as F

    from zscir.world.train_backbone import encode_text_bucketed

    torch.set_num_threads(2)
    out = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        model = open_clip.create_model(f"zscir-shapes-vit-{name}").train()
        size = model.visual.image_size[0]
        x = torch.randn(256, 3, size, size)
        tokens = torch.randint(1, 400, (256, 30))
        tokens[:, -1] = 49407
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            a = F.normalize(model.encode_image(x), dim=-1)
            b = F.normalize(encode_text_bucketed(model, tokens), dim=-1)
            loss = (a @ b.T).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[name] = round(sum(times[warmup:]) / (steps - warmup), 3)
    return {"seconds_per_step": out, "ratio_to_base": {k: round(v / out["base"], 2) for k, v in out.items()}}


def train_variant(name: str, out: Path, steps: int | None = None) -> dict:
    import os

    from zscir.backbone import load_backbone
    from zscir.world.eval_backbone import evaluate_backbone
    from zscir.world.train_backbone import TrainConfig, train_backbone

    cfg = TrainConfig(model=f"zscir-shapes-vit-{name}", **({"steps": steps} if steps else {}))
    out.mkdir(parents=True, exist_ok=True)
    record = train_backbone(cfg, out / "weights.safetensors", out / "run")
    start = time.time()
    record["heldout"] = evaluate_backbone(load_backbone(cfg.model, str(out / "weights.safetensors")), 1000)
    record["eval_seconds"] = round(time.time() - start)
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "record.json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-cost", action="store_true", help="Measure each variant's seconds per step.")
    parser.add_argument("--train", choices=sorted(VARIANTS), help="Train the shipped recipe on this variant.")
    parser.add_argument("--out", type=Path, default=None, help="Run folder of --train [runs/clip-VARIANT].")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps of --train [train-backbone's].")
    args = parser.parse_args()
    if not (args.step_cost or args.train):
        parser.error("give --step-cost and/or --train VARIANT")
    register_variants()
    if args.step_cost:
        print(json.dumps(step_cost()))
    if args.train:
        record = train_variant(args.train, args.out or Path(f"runs/clip-{args.train}"), args.steps)
        print(json.dumps(record["heldout"]))


if __name__ == "__main__":
    main()
