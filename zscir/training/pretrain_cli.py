"""``zscir pretrain``: train a registered method's network (FTI4CIR, single, SEARLE, LinCIR, Pic2Word, SCOT)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click
from click.core import ParameterSource

from zscir.backbone.options import backbone_options
from zscir.utils.options import (DROPOUT, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, OUTPUT_DIR, POSITIVE_FLOAT,
                                 POSITIVE_INT)

# zscir.training.pretrain_data.FEATURE_CACHE_MODES, spelled out so that `--help` does not import torch (tested)
FEATURE_CACHE_MODES = ("full", "globals", "off")
# zscir.models.methods.trainable_methods(), spelled out for the same reason (tested equal to the registry)
TRAINABLE_METHODS = ("fti", "single", "searle", "lincir", "pic2word", "scot")
# a recipe names the backbone option by its run_pretraining argument
RUN_KEYS = {"clip": "clip_name"}


@click.command("pretrain")
@click.option("--images", default=None, help="Folder, list file, or webdataset shards (cc3m/{00000..00331}.tar). "
              "Default: the shapes world's unlabeled images. Image files: .jpg .jpeg .png .webp .bmp .gif .tif .tiff "
              "(any case); dotfiles and hidden folders are skipped.")
@click.option("--captions", default=None, help="Captions file (JSONL/CSV/JSON id->caption; for lincir also .txt, one a "
              "line). Default: caption with --captioner (cached), or the world's own captions.")
@click.option("--captioner", default="blip", show_default=True, help="Captioner used when no --captions is given.")
@backbone_options("Default: the shapes world's CLIP.", preprocess="targetpad", device=False)
@click.option("--method", type=click.Choice(TRAINABLE_METHODS), default="fti", show_default=True,
              help="A trainable registered method. lincir trains on --captions alone (no images); searle inverts "
              "every image by OTI first (cached), then distils phi; scot trains a Combiner on caption edits.")
@click.option("--network-config", default=None, help="Mapping-network config name (zscir/models/configs). Default per method.")
@click.option("--out", type=OUTPUT_DIR, default="runs/pretrain", show_default=True, help="Run directory (config, log, checkpoints).")
@click.option("--epochs", type=POSITIVE_INT, default=60, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=256, show_default=True, help="Global batch size.")
@click.option("--lr", type=POSITIVE_FLOAT, default=4e-5, show_default=True)
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=0.01, show_default=True)
@click.option("--lr-decay-epoch", type=NON_NEGATIVE_INT, default=10, show_default=True, help="Multiply lr by 0.1 from this epoch on.")
@click.option("--dropout", type=DROPOUT, default=None, help="Override the network config's dropout.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", "save_every_steps", type=NON_NEGATIVE_INT, default=500, show_default=True,
              help="Checkpoint every N steps (and every epoch; 0: every epoch only).")
@click.option("--max-steps", type=POSITIVE_INT, default=None, help="Stop after N steps in total.")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True)
@click.option("--feature-cache", type=click.Choice(FEATURE_CACHE_MODES), default="full", show_default=True,
              help="full: cache global features and tokens; globals: cache global features, recompute tokens; off: recompute all.")
@click.option("--cache-dir", type=OUTPUT_DIR, default=None, help="Feature and caption cache root. Default: ZSCIR_CACHE or ~/.cache/zscir.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out (its config, log and checkpoints).")
@click.option("--json", "as_json", is_flag=True, help="Print the final record as JSON.")
@click.option("--recipe", default=None, help="A reproduction preset (fti4cir-official: the official FTI4CIR run); "
              "options given explicitly override it.")
@click.option("--splitter", default="auto", show_default=True,
              help="Caption splitter: auto | rules | spacy | fti4cir-official.")
@click.option("--vocabulary", type=click.Path(dir_okay=False), default=None,
              help="searle: concept words, one a line. Default on the shapes world: its shape nouns.")
@click.option("--phrases", type=click.Path(dir_okay=False), default=None,
              help="searle: regulariser phrases, one a line, each with one {} slot for a concept word. "
              "Default on the shapes world: phrases of its attribute words.")
@click.option("--oti-steps", type=POSITIVE_INT, default=None, help="searle: OTI steps per image [official: 350].")
@click.option("--oti-batch-size", type=POSITIVE_INT, default=None,
              help="searle: images inverted together by OTI [official: 32].")
@click.option("--oti-top-k", type=POSITIVE_INT, default=None,
              help="searle: concepts per image for OTI's regulariser [official: 15, at most the vocabulary's size].")
@click.option("--oti-images", type=POSITIVE_INT, default=None,
              help="searle: invert a seeded subset of this many training images, and train phi on them "
              "[default: all; the official code inverts all].")
@click.option("--edits", type=click.Path(dir_okay=False), default=None,
              help="scot: caption edits, JSONL {image, caption, modification, edited_caption}. "
              "Default on the shapes world: edits drawn by its generator.")
@click.pass_context
def pretrain(ctx, images, captions, captioner, clip, pretrained, preprocess, method, network_config, out, epochs,
             batch_size, lr, weight_decay, lr_decay_epoch, dropout, seed, save_every_steps, max_steps,
             mixed_precision, feature_cache, cache_dir, resume, overwrite, as_json, recipe, splitter, vocabulary,
             phrases, oti_steps, oti_batch_size, oti_top_k, oti_images, edits):
    """Pretrain a method's network on unlabeled images, or on captions alone for lincir (FTI4CIR by default).

    Multi-GPU / multi-node: run the same command under `accelerate launch` or `torchrun`.
    """
    # deferred: the training library imports torch, which `zscir pretrain --help` must not (tests/test_bad_input.py)
    from zscir.training.pretrain import PretrainConfig, apply_recipe, default_network_config, run_pretraining
    from zscir.training.state import check_run_dir

    cfg = PretrainConfig(out=out, method=method, network_config=network_config, dropout=dropout, epochs=epochs,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_decay_epoch=lr_decay_epoch,
                         seed=seed, save_every_steps=save_every_steps, mixed_precision=mixed_precision,
                         max_steps=max_steps, vocabulary=vocabulary, phrases=phrases, oti_steps=oti_steps,
                         oti_batch_size=oti_batch_size, oti_top_k=oti_top_k, oti_images=oti_images, edits=edits)
    cfg.check_method_options()
    run = dict(captioner=captioner, clip_name=clip, pretrained=pretrained, preprocess=preprocess,
               splitter=splitter)
    if recipe:
        explicit = {RUN_KEYS.get(p, p) for p in ctx.params if ctx.get_parameter_source(p) is ParameterSource.COMMANDLINE}
        cfg, run, record = apply_recipe(recipe, cfg, run, explicit)
        cfg.recipe = record
    if int(os.environ.get("RANK", "0")) == 0:  # once, before any process writes into the run
        # a resume trains on with the run's own settings (but how long and how often it saves): compared, each
        # differing one named by its option
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "data", "recipe")}
        check_run_dir(out, resume, overwrite, "pretrain",
                      expect={"method": method, "network_config": network_config or default_network_config(method)},
                      view=lambda rec: {"method": rec.get("method"), "network_config":
                                        rec.get("network_config") or default_network_config(rec.get("method"))},
                      settings=settings, options={p.name: p.opts[0] for p in ctx.command.params if p.opts})
    for note in cfg.recipe.get("notes", ()):
        click.echo(f"recipe {recipe}: {note}", err=True)
    result = run_pretraining(cfg, images=images, captions=captions, feature_cache=feature_cache,
                             cache_dir=cache_dir, resume=resume, **run)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch the main process reports
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"checkpoint: {result['checkpoint']}")
