"""The fine-vs-coarse modification-text study on the shapes world.

How much does a fine-grained modification text help, and how far are the
zero-shot methods from heads trained on triplets? On the world's val
triplets, with its fine texts ("make the large red circle blue") and their
coarse twins ("change the circle's color"), for

    image+text sum            (training-free)
    single-token ZS           (a pretrained single pseudo-word network, checkpoint)
    FTI ZS                    (a pretrained FTI4CIR network, checkpoint)
    Combiner                  (CLIP4Cir head trained on the world's train triplets, same text style)
    FineCIR-style on CLIP     (entity-guided head, finecir-clip, trained likewise)

it prints mAP@10 and R@1 (the annotated target), and the training time of
each head. Heads are trained with `zscir train-supervised` defaults (one run
per head and text style, reused when already in --out unless --retrain).
A second table crosses styles: heads trained on fine texts, queried with
coarse ones, and the reverse.

    python eval/study_fine_vs_coarse.py                        # default world, shipped CLIP and checkpoints
    python eval/study_fine_vs_coarse.py --fti F --single S     # other zero-shot checkpoints
    python eval/study_fine_vs_coarse.py --world DIR --clip NAME --pretrained FILE

Results: OUT/study.json and OUT/study.md (the tables), OUT/eval/ (the full
evaluation run: rankings, protocol, timings).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from zscir.utils.atomic import atomic_write_json, atomic_write_text

ROWS = [("sum", "image+text sum"), ("single", "single-token ZS"), ("fti", "FTI ZS"),
        ("combiner", "Combiner (supervised)"), ("finecir-clip", "FineCIR-style on CLIP (supervised)")]
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


def train_heads(out: Path, world: Path, clip, pretrained, cache_dir, epochs: int, batch_size: int, threads,
                retrain: bool, log) -> dict:
    from zscir.training.supervised import SupervisedConfig, run_supervised_training

    heads = {}
    for style in STYLES:
        for head in ("combiner", "finecir-clip"):
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
@click.option("--fti", default=None, help="FTI4CIR checkpoint. Default: the shipped one for the backbone.")
@click.option("--single", default=None, help="Single-token checkpoint. Default: the shipped one for the backbone.")
@click.option("--epochs", type=int, default=60, show_default=True, help="Training epochs of each head.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Training batch size of each head.")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for training the heads.")
@click.option("--out", default="runs/study-fine-vs-coarse", show_default=True)
@click.option("--cache-dir", default=None, help="Feature cache root (default: the evaluation cache).")
@click.option("--retrain", is_flag=True, help="Train the heads again even when --out has them.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(world, clip, pretrained, fti, single, epochs, batch_size, threads, out, cache_dir, retrain, as_json):
    from zscir.backbone import load_backbone
    from zscir.world.shipped import shapes_backbone
    from zscir.evaluation.run import EvalRequest, evaluate

    log = (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    if world is None:
        from zscir.world.build import default_world

        world = default_world()
    world, out = Path(world), Path(out)
    backbone = load_backbone(clip, pretrained) if clip else shapes_backbone()
    zero_shot = shipped_zero_shot(backbone)
    zero_shot.update({k: v for k, v in (("fti", fti), ("single", single)) if v})
    missing = [m for m in ("single", "fti") if m not in zero_shot]
    for m in missing:
        log(f"no {m} checkpoint for {backbone.identity_str}: its row stays empty (pass --{m} PATH)")

    heads = train_heads(out, world, clip, pretrained, cache_dir, epochs, batch_size, threads, retrain, log)
    models = ["sum"] + [zero_shot[m] for m in ("single", "fti") if m in zero_shot]
    models += [heads[(style, head)]["checkpoint"] for style in STYLES for head in ("combiner", "finecir-clip")]
    results = evaluate(EvalRequest("shapes", root=world, splits=list(STYLES.values()), models=models, clip=clip,
                                   pretrained=pretrained, out_dir=out / "eval", cache_root=cache_dir,
                                   command=" ".join(sys.argv), overwrite=True))   # the study's own: a rerun replaces it
    from zscir.benchmarks import load_splits

    splits = {style: load_splits("shapes", world, split)[0] for style, split in STYLES.items()}
    by_model = {m["model"]: m["splits"] for m in results["models"]}

    def metrics(model: str | None, style: str):
        if model is None:
            return None
        r = by_model[model][f"shapes/{STYLES[style]}"]
        return with_top1(r["metrics"], out / "eval" / r["rankings"][0], splits[style])

    def model_of(row: str, trained_on: str | None):
        if row in ("combiner", "finecir-clip"):
            return heads[(trained_on, row)]["checkpoint"]
        return "sum" if row == "sum" else zero_shot.get(row)

    table = {}
    for row, title in ROWS:
        table[row] = {style: metrics(model_of(row, style), style) for style in STYLES}
    crossed = {f"{head} trained on {a}": metrics(heads[(a, head)]["checkpoint"], b)
               for head in ("combiner", "finecir-clip") for a, b in (("fine", "coarse"), ("coarse", "fine"))}
    training = {f"{style}-{head}": heads[(style, head)]["seconds"]["training"] for style, head in heads}

    lines = [f"Shapes world `{world}`, {results['splits']}, backbone {backbone.identity_str}; "
             f"heads trained {epochs} epochs on the world's train triplets with the same text style.", "",
             "| method | fine mAP@10 | fine R@1 | coarse mAP@10 | coarse R@1 |", "|---|---:|---:|---:|---:|"]
    for row, title in ROWS:
        f, c = table[row]["fine"], table[row]["coarse"]
        lines.append(f"| {title} | {cell(f, 'mAP@10')} | {cell(f, 'R@1')} | {cell(c, 'mAP@10')} | {cell(c, 'R@1')} |")
    # ceilings (zscir eval's oracle rows): text queries from the world's ground truth, never models
    oracles = {o["kind"]: {style: o["splits"].get(f"shapes/{split}", {}).get("metrics")
                           for style, split in STYLES.items()} for o in results.get("oracles") or []}
    for kind, per in oracles.items():
        f, c = per["fine"], per["coarse"]
        lines.append(f"| [oracle] {kind} | {cell(f, 'mAP@10')} | — | {cell(c, 'mAP@10')} | — |")
    ceiling = (oracles.get("caption") or {}).get("fine")
    if ceiling and table.get("fti", {}).get("fine"):
        lines += ["", f"FTI's fine mAP@10 is {table['fti']['fine']['mAP@10'] / ceiling['mAP@10']:.2f} of the caption "
                      f"oracle's ({table['fti']['fine']['mAP@10']:.2f} / {ceiling['mAP@10']:.2f})."]
    lines += ["", "Heads queried with the other text style:", "", "| head | queried with | mAP@10 | R@1 |",
              "|---|---|---:|---:|"]
    for name, m in crossed.items():
        head, trained = name.split(" trained on ")
        other = "coarse" if trained == "fine" else "fine"
        lines.append(f"| {head} trained on {trained} texts | {other} texts | {cell(m, 'mAP@10')} | {cell(m, 'R@1')} |")
    lines += ["", "Training time per head (s, this machine): " +
              ", ".join(f"{k} {v:.0f}" for k, v in training.items())]
    if missing:
        lines.append(f"Missing zero-shot checkpoints: {', '.join(missing)}.")
    markdown = "\n".join(lines) + "\n"
    record = {"world": str(world), "backbone": backbone.identity, "zero_shot": zero_shot, "heads":
              {f"{s}-{h}": r["checkpoint"] for (s, h), r in heads.items()}, "table": table, "crossed": crossed,
              "oracles": oracles, "training_seconds": training, "missing": missing, "eval_dir": str(out / "eval"),
              "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "study.json", record)
    atomic_write_text(out / "study.md", markdown)
    click.echo(json.dumps(record, indent=2) if as_json else markdown)


if __name__ == "__main__":
    main()
