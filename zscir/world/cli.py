"""`zscir world ...`: generate the shapes world; train and evaluate its tiny CLIP, captioner and editor."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path

import click

from zscir.backbone.options import backbone_options
from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_write_json
from zscir.utils.hashing import sha256_file
from zscir.utils.options import FRACTION, NON_NEGATIVE_INT, OUTPUT_DIR, OUTPUT_FILE, POSITIVE_FLOAT, POSITIVE_INT
from zscir.world.build import WorldConfig, default_world_dir, generate_world
from zscir.world.train_precision import TRAIN_PRECISIONS


@click.group("world")
def world():
    """The shapes world: an offline procedural CIR benchmark with its own tiny CLIP."""


@world.command("generate")
@click.option("--out", type=OUTPUT_DIR, default=None,
              help="World folder (default: the cached default world, built on first use).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same world (annotations and image bytes).")
@click.option("--num-val", type=NON_NEGATIVE_INT, default=None, help="Validation queries [500].")
@click.option("--num-test", type=NON_NEGATIVE_INT, default=None, help="Test queries [500].")
@click.option("--num-train", type=NON_NEGATIVE_INT, default=None, help="Train triplets [3000].")
@click.option("--num-unlabeled", type=NON_NEGATIVE_INT, default=None, help="Unlabeled images with captions [12000].")
@click.option("--image-size", type=click.IntRange(min=24), default=None, help="Rendered image side in pixels [72].")
@click.option("--max-objects", type=POSITIVE_INT, default=None, help="Objects per scene, 1 to this [4].")
@click.option("--num-multiturn", type=NON_NEGATIVE_INT, default=None, help="Multi-turn sequences (2-5 edits each) [200].")
@click.option("--tiny", is_flag=True, help="A world of a few dozen queries (seconds), for trying things out.")
@click.option("--workers", type=POSITIVE_INT, default=2, show_default=True, help="Rendering processes.")
@click.option("--force", is_flag=True, help="Replace whatever is in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print world.json on stdout.")
def generate(out, seed, num_val, num_test, num_train, num_unlabeled, image_size, max_objects, num_multiturn, tiny, workers,
             force, as_json):
    """Generate a shapes world in CIRCO's layout."""
    config = WorldConfig.tiny(seed) if tiny else WorldConfig(seed=seed)
    overrides = {"num_val": num_val, "num_test": num_test, "num_train": num_train, "num_unlabeled": num_unlabeled,
                 "image_size": image_size, "max_objects": max_objects, "num_multiturn": num_multiturn}
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = WorldConfig(**values)
    if out is None:
        if config != WorldConfig(seed=seed):
            raise ZscirError("size options change the world: give --out for a non-default world")
        out = default_world_dir(seed)
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    path = generate_world(out, config, workers=workers, force=force, log=log)
    if as_json:
        click.echo((Path(path) / "world.json").read_text())


@world.command("train-backbone")
@click.option("--out", type=OUTPUT_FILE, default="runs/shapes_clip/shapes_clip.safetensors", show_default=True,
              help="Where to write the fp16 safetensors weights (the shipped checkpoints/ are only written when named here).")
@click.option("--run-dir", type=OUTPUT_DIR, default="runs/shapes_clip", show_default=True,
              help="Resumable training state; a killed run continues from here.")
@click.option("--model", default=None, help="open_clip model name [zscir-shapes-vit].")
@click.option("--seed", type=int, default=None, help="Seed of scenes, renderings, captions, init and batches [0].")
@click.option("--num-scenes", type=POSITIVE_INT, default=None, help="Pre-rendered training scenes [200000].")
@click.option("--steps", type=POSITIVE_INT, default=None, help="Optimizer steps [1600].")
@click.option("--batch-size", type=POSITIVE_INT, default=None, help="Pairs per step [256].")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate [1e-3].")
@click.option("--twin-fraction", type=FRACTION, default=None, help="Share of one-attribute twin pairs [0.8].")
@click.option("--text-lock-steps", type=NON_NEGATIVE_INT, default=None, help="Steps the text tower stays at its random init [150].")
@click.option("--twin-kinds", default=None, help="What twins change, with weights [cell=3,shape=2,pattern=2,size=1,color=0.5,background=0.5].")
@click.option("--text-negatives", default=None,
              help="NegCLIP-style text negatives: comma-separated kinds among color,shape,size,position,pattern,background [none].")
@click.option("--init", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start from these weights (fine-tuning) instead of a random init.")
@click.option("--precision", type=click.Choice(TRAIN_PRECISIONS), default=None,
              help="The towers' forward: fp32, or bf16 autocast (weights and optimizer stay fp32; on a CPU only "
                   "where it has AVX512-BF16/AMX-BF16, refused elsewhere) [fp32].")
@click.option("--eval-scenes", type=NON_NEGATIVE_INT, default=1000, show_default=True, help="Held-out scenes evaluated at the end (0: skip).")
@click.option("--report", type=OUTPUT_FILE, default=None,
              help="Training record JSON [beside --out, same name, .json].")
def train_backbone_command(out, run_dir, model, seed, num_scenes, steps, batch_size, lr, twin_fraction, text_lock_steps,
                           twin_kinds, text_negatives, init, precision, eval_scenes, report):
    """Train the world's tiny CLIP on rendered scenes and their captions (2 CPU cores: ~40 minutes)."""
    # deferred here and below: these load torch/open_clip; `zscir world --help` must not
    from zscir.world.train_backbone import TrainConfig, train_backbone

    given = {"model": model, "seed": seed, "num_scenes": num_scenes, "steps": steps, "batch_size": batch_size,
             "lr": lr, "twin_fraction": twin_fraction, "text_lock_steps": text_lock_steps, "init": init,
             "precision": precision}
    if text_negatives:
        given["text_negatives"] = tuple(k.strip() for k in text_negatives.split(",") if k.strip())
    if twin_kinds is not None:
        try:
            given["twin_kinds"] = tuple((k.strip(), float(w)) for k, w in (item.split("=") for item in twin_kinds.split(",")))
        except ValueError:
            raise ZscirError(f"--twin-kinds {twin_kinds!r}: expected kind=weight,kind=weight,...") from None
    cfg = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    record = train_backbone(cfg, out, run_dir)
    record["command"] = "zscir world " + " ".join(sys.argv[sys.argv.index("train-backbone"):]) if "train-backbone" in sys.argv else None
    if eval_scenes:
        from zscir.backbone import load_backbone
        from zscir.world.eval_backbone import evaluate_backbone

        start = time.time()
        record["heldout"] = evaluate_backbone(load_backbone(cfg.model, str(out)), eval_scenes)
        record["eval_seconds"] = round(time.time() - start)
        click.echo(json.dumps(record["heldout"], indent=2))
    record["weights_sha256"] = sha256_file(out)
    atomic_write_json(report or Path(out).with_suffix(".json"), record)


@world.command("eval-backbone")
@backbone_options("Default: the shapes world's CLIP (the registered zscir-shapes-* config).",
                  pretrained_note="Default: the shipped checkpoints/shapes_clip.safetensors.", device=False)
@click.option("--scenes", "num_scenes", type=POSITIVE_INT, default=1000, show_default=True, help="Held-out scenes.")
@click.option("--seed", type=int, default=None, help="Seed of the held-out scenes [1234].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def eval_backbone_command(clip, pretrained, num_scenes, seed, as_json):
    """Held-out text->image recall and attribute sensitivity of a CLIP on the shapes world."""
    import torch

    from zscir.backbone import load_backbone
    from zscir.backbone.options import resolve_pretrained
    from zscir.world.eval_backbone import HELDOUT_SEED, TARGET_KINDS, evaluate_backbone

    torch.set_num_threads(2)
    from zscir.world.shipped import shapes_clip_name, shapes_clip_weights

    # the world's own CLIP unless --clip names another (whose weights --pretrained must then name)
    pretrained = resolve_pretrained(clip, pretrained) if clip else str(shapes_clip_weights())
    model = clip or shapes_clip_name()
    result = evaluate_backbone(load_backbone(model, pretrained), num_scenes, HELDOUT_SEED if seed is None else seed)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{model} @ {pretrained}, {num_scenes} held-out scenes")
    click.echo("text->image  " + "  ".join(f"{k} {v:.3f}" for k, v in result["text_to_image"].items()))
    click.echo("image->text  " + "  ".join(f"{k} {v:.3f}" for k, v in result["image_to_text"].items()))
    click.echo("sensitivity  " + "  ".join(f"{k} {v:.3f}" for k, v in result["sensitivity"].items()))
    click.echo(f"sensitivity over {', '.join(TARGET_KINDS)}: mean {result['sensitivity_mean']:.3f}, "
               f"min {result['sensitivity_min']:.3f} (targets: mean >= 0.90, each >= 0.80)")


def _model_training_options(default_name: str):
    """Options shared by train-captioner and train-editor."""
    def wrap(f):
        for option in reversed([
            click.option("--world", "world_dir", type=click.Path(file_okay=False, exists=True), default=None,
                          help="World whose unlabeled images/captions are used [the default world, seed 0]."),
            click.option("--out", type=OUTPUT_DIR, default=f"runs/{default_name}/{default_name}", show_default=True,
                         help="save_pretrained() folder; the card and record go beside it (OUT.md, OUT.json)."),
            click.option("--run-dir", type=OUTPUT_DIR, default=f"runs/{default_name}/state", show_default=True,
                         help="Resumable training state; a killed run continues from here."),
            click.option("--preset", type=click.Choice(["default", "tiny"]), default="default", show_default=True,
                         help="Model size and budget (tiny: seconds, for tests)."),
            click.option("--steps", type=POSITIVE_INT, default=None, help="At most this many steps [preset]."),
            click.option("--seconds", type=POSITIVE_FLOAT, default=None, help="At most this many training seconds [preset]."),
            click.option("--batch-size", type=POSITIVE_INT, default=None, help="Examples per step [preset]."),
            click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate [preset]."),
            click.option("--seed", type=int, default=None, help="Seed of init, batches and examples [0]."),
            click.option("--heldout", type=NON_NEGATIVE_INT, default=500, show_default=True,
                         help="Held-out scenes evaluated at the end (0: skip, and no card)."),
        ]):
            f = option(f)
        return f
    return wrap


def _run_training(command: str, world_dir, out, preset_cfg, given: dict, train, evaluate, card, heldout,
                  as_json: bool = False):
    from zscir.world.build import default_world
    from zscir.utils.cpu import cpu_name
    from zscir.world.model_card import write_card

    cfg = replace(preset_cfg, **{k: v for k, v in given.items() if v is not None})
    world_dir = world_dir or str(default_world(0))
    record = train(world_dir, out, cfg)
    record.update({"command": "zscir world " + " ".join(sys.argv[sys.argv.index(command):]) if command in sys.argv
                   else f"zscir world {command}", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   "cpu": cpu_name()})
    out = Path(out)
    if heldout:
        start = time.time()
        record["heldout"] = evaluate(out, heldout)
        record["eval_seconds"] = round(time.time() - start)
        summary = {k: v for k, v in record["heldout"].items() if k != "examples"}
        click.echo(json.dumps(summary, indent=2), err=as_json)
        write_card(out.with_name(out.name + ".md"), card(out.name, record))
    atomic_write_json(out.with_name(out.name + ".json"), record)
    if as_json:
        click.echo(json.dumps(record, indent=2))


@world.command("train-captioner")
@_model_training_options("shapes_captioner")
def train_captioner_command(world_dir, out, run_dir, preset, steps, seconds, batch_size, lr, seed, heldout):
    """Train the world's captioner (a tiny BLIP-2) on its unlabeled images; load it with --captioner blip2:OUT."""
    # deferred: these load torch/transformers; `zscir world --help` must not
    from zscir.world.model_card import captioner_card
    from zscir.world.train_captioner import PRESETS, evaluate_captioner, train_captioner

    _run_training("train-captioner", world_dir, out, PRESETS[preset],
                  {"steps": steps, "seconds": seconds, "batch_size": batch_size, "lr": lr, "seed": seed},
                  lambda w, o, cfg: train_captioner(w, o, run_dir, cfg, log=click.echo),
                  lambda folder, n: evaluate_captioner(f"blip2:{folder}", n), captioner_card, heldout)


@world.command("train-editor")
@_model_training_options("shapes_editor")
def train_editor_command(world_dir, out, run_dir, preset, steps, seconds, batch_size, lr, seed, heldout):
    """Train the world's editor (a tiny Llama) on edits of its unlabeled captions; load it with --editor hf-lm:OUT."""
    from zscir.world.model_card import editor_card
    from zscir.world.train_editor import PRESETS, evaluate_editor, train_editor

    _run_training("train-editor", world_dir, out, PRESETS[preset],
                  {"steps": steps, "seconds": seconds, "batch_size": batch_size, "lr": lr, "seed": seed},
                  lambda w, o, cfg: train_editor(w, o, run_dir, cfg, log=click.echo),
                  lambda folder, n: evaluate_editor(f"hf-lm:{folder}", n), editor_card, heldout)


@world.command("train-blip2")
@_model_training_options("shapes_blip2")
@click.option("--json", "as_json", is_flag=True, help="Print the run's record as JSON on stdout (progress goes to stderr).")
def train_blip2_command(world_dir, out, run_dir, preset, steps, seconds, batch_size, lr, seed, heldout, as_json):
    """Train the world's BLIP-2 retrieval model (ITC + ITM) on its unlabeled images and captions; load OUT with
    Blip2ForImageTextRetrieval.from_pretrained."""
    from zscir.world.model_card import blip2_card
    from zscir.world.train_blip2 import train_blip2
    from zscir.world.train_blip2_eval import evaluate_blip2
    from zscir.world.train_blip2_model import PRESETS

    _run_training("train-blip2", world_dir, out, PRESETS[preset],
                  {"steps": steps, "seconds": seconds, "batch_size": batch_size, "lr": lr, "seed": seed},
                  lambda w, o, cfg: train_blip2(w, o, run_dir, cfg, log=lambda m: click.echo(m, err=as_json)),
                  evaluate_blip2, blip2_card, heldout, as_json=as_json)
