"""The fine-vs-coarse modification-text study on the shapes world.

How much does a fine-grained modification text help, and how far are the
zero-shot methods from heads trained on triplets? On the world's val
triplets, with its fine texts ("make the large red circle blue") and their
coarse twins ("change the circle's color"), for

    image+text sum            (training-free, the world's CLIP)
    single-token ZS           (a pretrained single pseudo-word network, checkpoint)
    FTI ZS                    (a pretrained FTI4CIR network, checkpoint)
    Combiner                  (CLIP4Cir head trained on the world's train triplets, same text style)
    FineCIR-style on CLIP     (entity-guided head, finecir-clip, trained likewise)
    BLIP-2 image / text / sum (training-free, the world's BLIP-2: --blip2, `zscir world train-blip2`)
    FineCIR (BLIP-2)          (FineCIR as published, head finecir, trained likewise on the BLIP-2)
    FashionBLIP-2             (adapters + multi-head matching, head fashionblip2, likewise)

it prints mAP@10 and R@1 (the annotated target), and the training time of
each head. Heads are trained with `zscir train-supervised` defaults (CLIP
heads: --epochs/--batch-size below; BLIP-2 heads: their recipe's), one run
per head and text style, reused when already in --out unless --retrain.
A second table crosses styles: heads trained on fine texts, queried with
coarse ones, and the reverse.

    python eval/study_fine_vs_coarse.py                        # default world, shipped CLIP, BLIP-2, checkpoints
    python eval/study_fine_vs_coarse.py --fti F --single S     # other zero-shot checkpoints
    python eval/study_fine_vs_coarse.py --world DIR --clip NAME --pretrained FILE --blip2 FOLDER

Without a BLIP-2 (no --blip2 and no shipped checkpoints/shapes_blip2) its rows stay empty.

Results: OUT/study.json and OUT/study.md (the tables), OUT/eval/ and OUT/eval-blip2/
(the full evaluation runs: rankings, protocol, timings).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from zscir.utils.atomic import atomic_write_json, atomic_write_text

ROWS = [("sum", "image+text sum"), ("single", "single-token ZS"), ("fti", "FTI ZS"),
        ("combiner", "Combiner (supervised)"), ("finecir-clip", "FineCIR-style on CLIP (supervised)"),
        ("blip2:image", "BLIP-2 image"), ("blip2:text", "BLIP-2 text"), ("blip2:sum", "BLIP-2 image+text sum"),
        ("finecir", "FineCIR on BLIP-2 (supervised)"), ("fashionblip2", "FashionBLIP-2 (supervised)")]
CLIP_HEADS, BLIP2_HEADS = ("combiner", "finecir-clip"), ("finecir", "fashionblip2")
SHIPPED_BLIP2 = Path(__file__).resolve().parent.parent / "checkpoints" / "shapes_blip2"
STYLES = {"fine": "val", "coarse": "val_coarse"}
METRICS = ("mAP@10", "R@1")


def shipped_zero_shot(backbone) -> dict[str, str]:
    """{method: checkpoint} of the shipped mapping networks trained on ``backbone``."""
    from zscir.world.shipped import shipped_checkpoints

    found = {}
    for path in shipped_checkpoints(backbone.identity):
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("kind") == "mapping":
            found.setdefault(meta.get("method"), str(path))
    return found


def train_heads(out: Path, world: Path, clip, pretrained, blip2, cache_dir, epochs: int, batch_size: int, threads,
                retrain: bool, log) -> dict:
    """{(style, head): the training summary}, CLIP heads on ``clip``, BLIP-2 heads on ``blip2`` (when given)."""
    from zscir.models.blip2_heads.registry import recipe
    from zscir.training.supervised import SupervisedConfig, run_supervised_training
    from zscir.training.supervised_blip2 import run_blip2_training

    heads = {}
    for style in STYLES:
        for head in CLIP_HEADS + (BLIP2_HEADS if blip2 else ()):
            run = out / "heads" / f"{style}-{head}"
            done = run / "model.safetensors"
            record_file = run / "study_record.json"
            if done.is_file() and record_file.is_file() and not retrain:
                heads[(style, head)] = json.loads(record_file.read_text())
                log(f"reusing {done} (trained in {heads[(style, head)]['seconds']['training']:.0f} s)")
                continue
            if run.exists() and retrain:
                import shutil

                shutil.rmtree(run)
            log(f"training {head} on {style} texts -> {run}")
            if head in BLIP2_HEADS:
                training = recipe(head)["training"]
                cfg = SupervisedConfig(out=str(run), dataset="shapes", texts=style, head=head, threads=threads,
                                       **{k: training[k] for k in ("epochs", "batch_size", "lr", "weight_decay")})
                result = run_blip2_training(cfg, f"blip2:{blip2}", root=world, resume=True, log=log)
            else:
                cfg = SupervisedConfig(out=str(run), dataset="shapes", texts=style, head=head, epochs=epochs,
                                       batch_size=batch_size, threads=threads)
                result = run_supervised_training(cfg, root=world, clip_name=clip, pretrained=pretrained,
                                                 cache_dir=cache_dir, resume=True, log=log)
            atomic_write_json(record_file, result)
            heads[(style, head)] = result
    return heads


def with_top1(metrics: dict, ranking_file: Path, split) -> dict:
    """Add R@1 (the annotated target ranked first; the evaluation's CIRCO metrics start at k=5) and
    hit@1 (any ground truth ranked first) from the run's top-50 rankings."""
    ranking = json.loads(ranking_file.read_text())
    queries = [q for q in split.queries if q.qid in ranking]
    first = [str(ranking[q.qid][0]) if ranking[q.qid] else None for q in queries]
    r1 = 100.0 * sum(f == q.targets[0] for f, q in zip(first, queries)) / len(split.queries)
    hit1 = 100.0 * sum(f in q.targets for f, q in zip(first, queries)) / len(split.queries)
    return {**metrics, "R@1": r1, "hit@1": hit1}


def cell(metrics: dict | None, key: str) -> str:
    return "—" if metrics is None else f"{metrics[key]:.2f}"


@click.command()
@click.option("--world", default=None, help="A shapes world folder. Default: the default world (built on first use).")
@click.option("--clip", default=None, help="Backbone name. Default: the world's shipped CLIP.")
@click.option("--pretrained", default=None, help="Backbone weights for --clip.")
@click.option("--blip2", default=None, help="A BLIP-2 retrieval folder for the BLIP-2 rows. Default: the shipped "
              "checkpoints/shapes_blip2 when present.")
@click.option("--fti", default=None, help="FTI4CIR checkpoint. Default: the shipped one for the backbone.")
@click.option("--single", default=None, help="Single-token checkpoint. Default: the shipped one for the backbone.")
@click.option("--epochs", type=int, default=60, show_default=True, help="Training epochs of each CLIP head.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Training batch size of each CLIP head.")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for training the heads.")
@click.option("--out", default="runs/study-fine-vs-coarse", show_default=True)
@click.option("--cache-dir", default=None, help="Feature cache root (default: the evaluation cache).")
@click.option("--retrain", is_flag=True, help="Train the heads again even when --out has them.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(world, clip, pretrained, blip2, fti, single, epochs, batch_size, threads, out, cache_dir, retrain, as_json):
    from zscir.backbone import load_backbone
    from zscir.world.shipped import shapes_backbone
    from zscir.evaluation.run import EvalRequest, evaluate

    log = (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    if world is None:
        from zscir.world.build import default_world

        world = default_world()
    world, out = Path(world), Path(out)
    if blip2 is None and SHIPPED_BLIP2.is_dir():
        blip2 = str(SHIPPED_BLIP2)
    backbone = load_backbone(clip, pretrained) if clip else shapes_backbone()
    zero_shot = shipped_zero_shot(backbone)
    zero_shot.update({k: v for k, v in (("fti", fti), ("single", single)) if v})
    missing = [m for m in ("single", "fti") if m not in zero_shot]
    for m in missing:
        log(f"no {m} checkpoint for {backbone.identity_str}: its row stays empty (pass --{m} PATH)")
    if blip2 is None:
        missing.append("blip2")
        log("no BLIP-2 (pass --blip2 FOLDER, or train one with `zscir world train-blip2`): its rows stay empty")

    heads = train_heads(out, world, clip, pretrained, blip2, cache_dir, epochs, batch_size, threads, retrain, log)
    trained = sorted({head for _, head in heads})

    def head_models(names):
        return [heads[(style, head)]["checkpoint"] for style in STYLES for head in names if (style, head) in heads]

    runs = {"eval": (clip, pretrained, ["sum"] + [zero_shot[m] for m in ("single", "fti") if m in zero_shot]
                     + head_models(CLIP_HEADS))}
    if blip2:
        runs["eval-blip2"] = (f"blip2:{blip2}", None, ["image", "text", "sum"] + head_models(BLIP2_HEADS))
    results, by_model = {}, {}
    for name, (bb, weights, models) in runs.items():
        results[name] = evaluate(EvalRequest("shapes", root=world, splits=list(STYLES.values()), models=models,
                                             clip=bb, pretrained=weights, out_dir=out / name, cache_root=cache_dir,
                                             command=" ".join(sys.argv), oracles=name == "eval",
                                             overwrite=True))   # the study's own: a rerun replaces it
        prefix = "blip2:" if name == "eval-blip2" else ""
        for m in results[name]["models"]:
            by_model[prefix + m["model"] if m["model"] in ("image", "text", "sum") else m["model"]] = (name, m["splits"])
    from zscir.benchmarks import load_splits

    splits = {style: load_splits("shapes", world, split)[0] for style, split in STYLES.items()}

    def metrics(model: str | None, style: str):
        if model is None or model not in by_model:
            return None
        run, per_split = by_model[model]
        r = per_split[f"shapes/{STYLES[style]}"]
        return with_top1(r["metrics"], out / run / r["rankings"][0], splits[style])

    def model_of(row: str, trained_on: str):
        if row in CLIP_HEADS + BLIP2_HEADS:
            return heads[(trained_on, row)]["checkpoint"] if (trained_on, row) in heads else None
        return row if row in ("sum", "blip2:image", "blip2:text", "blip2:sum") else zero_shot.get(row)

    table = {row: {style: metrics(model_of(row, style), style) for style in STYLES} for row, _ in ROWS}
    crossed = {f"{head} trained on {a}": metrics(heads[(a, head)]["checkpoint"], b)
               for head in trained for a, b in (("fine", "coarse"), ("coarse", "fine"))}
    training = {f"{style}-{head}": heads[(style, head)]["seconds"]["training"] for style, head in heads}

    lines = [f"Shapes world `{world}`, {results['eval']['splits']}, backbone {backbone.identity_str}"
             + (f", BLIP-2 `{blip2}`" if blip2 else "") + "; heads trained on the world's train triplets with the "
             f"same text style (CLIP heads {epochs} epochs, BLIP-2 heads their recipe's).", "",
             "| method | fine mAP@10 | fine R@1 | coarse mAP@10 | coarse R@1 |", "|---|---:|---:|---:|---:|"]
    for row, title in ROWS:
        f, c = table[row]["fine"], table[row]["coarse"]
        lines.append(f"| {title} | {cell(f, 'mAP@10')} | {cell(f, 'R@1')} | {cell(c, 'mAP@10')} | {cell(c, 'R@1')} |")
    # ceilings (zscir eval's oracle rows, on the world's CLIP): text queries from the world's ground truth, never models
    oracles = {o["kind"]: {style: o["splits"].get(f"shapes/{split}", {}).get("metrics")
                           for style, split in STYLES.items()} for o in results["eval"].get("oracles") or []}
    for kind, per in oracles.items():
        f, c = per["fine"], per["coarse"]
        lines.append(f"| [oracle, CLIP] {kind} | {cell(f, 'mAP@10')} | — | {cell(c, 'mAP@10')} | — |")
    ceiling = (oracles.get("caption") or {}).get("fine")
    if ceiling and table.get("fti", {}).get("fine"):
        lines += ["", f"FTI's fine mAP@10 is {table['fti']['fine']['mAP@10'] / ceiling['mAP@10']:.2f} of the caption "
                      f"oracle's ({table['fti']['fine']['mAP@10']:.2f} / {ceiling['mAP@10']:.2f})."]
    lines += ["", "Heads queried with the other text style:", "", "| head | queried with | mAP@10 | R@1 |",
              "|---|---|---:|---:|"]
    for name, m in crossed.items():
        head, trained_on = name.split(" trained on ")
        other = "coarse" if trained_on == "fine" else "fine"
        lines.append(f"| {head} trained on {trained_on} texts | {other} texts | {cell(m, 'mAP@10')} | "
                     f"{cell(m, 'R@1')} |")
    lines += ["", "Training time per head (s, this machine): " +
              ", ".join(f"{k} {v:.0f}" for k, v in training.items())]
    if missing:
        lines.append(f"Missing: {', '.join(missing)}.")
    markdown = "\n".join(lines) + "\n"
    record = {"world": str(world), "backbone": backbone.identity, "blip2": blip2, "zero_shot": zero_shot,
              "heads": {f"{s}-{h}": r["checkpoint"] for (s, h), r in heads.items()}, "table": table,
              "crossed": crossed, "oracles": oracles, "training_seconds": training, "missing": missing,
              "eval_dirs": [str(out / name) for name in runs], "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "study.json", record)
    atomic_write_text(out / "study.md", markdown)
    click.echo(json.dumps(record, indent=2) if as_json else markdown)


if __name__ == "__main__":
    main()
