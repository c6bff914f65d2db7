"""``zscir train-supervised``: train a supervised head on a benchmark's train triplets.

Heads on frozen CLIP features: ``combiner`` (CLIP4Cir) and ``finecir-clip`` (FineCIR-style).
Heads on a BLIP-2 (``--backbone blip2:<folder>``): ``finecir`` (FineCIR as published) and
``fashionblip2`` (FACap's FashionBLIP-2); their defaults come from their recipes
(zscir/models/blip2_heads/recipes/).
"""

from __future__ import annotations

import json

import click

from zscir.backbone.options import backbone_options
from zscir.errors import ZscirError
from zscir.utils.options import DROPOUT, NON_NEGATIVE_FLOAT, OUTPUT_DIR, POSITIVE_FLOAT, POSITIVE_INT

# the keys of zscir.training.supervised.DATASETS, spelled out so that `--help` does not import torch (tested)
DATASETS = ("fashioniq", "cirr", "fine-fashioniq", "fine-cirr", "shapes")
# head -> backbone family (zscir.models.supervised.HEADS: clip; zscir.models.blip2_heads.BLIP2_HEADS: blip2)
HEAD_FAMILY = {"combiner": "clip", "finecir-clip": "clip", "finecir": "blip2", "fashionblip2": "blip2"}
CLIP_DEFAULTS = {"epochs": 60, "batch_size": 256, "lr": 2e-4, "weight_decay": 0.05}


@click.command("train-supervised")
@click.option("--dataset", type=click.Choice(DATASETS), default="shapes", show_default=True,
              help="Train triplets: FashionIQ, CIRR, FineCIR's Fine-FashionIQ / Fine-CIRR, or the shapes world.")
@click.option("--root", default=None, help="The dataset folder (as for `zscir eval`). Default for shapes: the default world.")
@click.option("--texts", type=click.Choice(["fine", "coarse"]), default="fine", show_default=True,
              help="shapes only: train on the fine or the coarse modification texts.")
@click.option("--head", type=click.Choice(list(HEAD_FAMILY)), default="finecir-clip", show_default=True,
              help="combiner, finecir-clip (FineCIR-style, on CLIP); finecir (FineCIR as published), fashionblip2 "
              "(FashionBLIP-2): on BLIP-2, with --backbone blip2:FOLDER.")
@click.option("--backbone", metavar="SPEC", default=None,
              help="blip2:<folder> (a BLIP-2 for the finecir and fashionblip2 heads), or an open_clip name (as --clip).")
@backbone_options("Default for shapes: the world's CLIP.", preprocess="targetpad")
@click.option("--out", type=OUTPUT_DIR, default=None, help="Run directory (config, log, train state, model.safetensors). "
              "Default: runs/supervised-<dataset>-<texts>-<head>.")
@click.option("--epochs", type=POSITIVE_INT, default=None, help="Default: 60; BLIP-2 heads: their recipe's.")
@click.option("--batch-size", type=POSITIVE_INT, default=None, help="Default: 256; BLIP-2 heads: their recipe's.")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Default: 2e-4; BLIP-2 heads: their recipe's.")
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=None, help="Default: 0.05; BLIP-2 heads: their recipe's.")
@click.option("--temperature", type=POSITIVE_FLOAT, default=0.01, show_default=True, help="Softmax temperature (initial value if learned).")
@click.option("--learn-temperature", is_flag=True, help="Learn the temperature.")
@click.option("--dropout", type=DROPOUT, default=None, help="Head dropout (default 0.5, as CLIP4Cir).")
@click.option("--max-entities", type=POSITIVE_INT, default=None, help="Entities per text for the FineCIR-style head (default 6).")
@click.option("--parser", default="auto", show_default=True, help="Text parser: auto (SceneGraphParser if installed, else rules), rules, sng.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=POSITIVE_INT, default=None, help="Stop after N steps in total.")
@click.option("--threads", type=POSITIVE_INT, default=None, help="CPU threads for the training loop (default: torch's). "
              "The heads are small: on a busy 2-core machine --threads 1 trained 3x faster than 2.")
@click.option("--cache-dir", type=OUTPUT_DIR, default=None, help="Feature cache root. Default: the evaluation cache (<zscir cache>/features/eval).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out (its config, log and checkpoints).")
@click.option("--json", "as_json", is_flag=True, help="Print the final record as JSON.")
def train_supervised(dataset, root, texts, head, backbone, clip, pretrained, preprocess, device, out, epochs, batch_size, lr,
                     weight_decay, temperature, learn_temperature, dropout, max_entities, parser, seed, max_steps,
                     threads, cache_dir, resume, overwrite, as_json):
    """Train a supervised composition head on frozen CLIP features (cached), for comparison with zero-shot models.

    The BLIP-2 heads (finecir, fashionblip2) train on the BLIP-2 named by --backbone blip2:FOLDER.

    The checkpoint (OUT/model.safetensors) is evaluated with `zscir eval ... --model OUT/model.safetensors`.
    """
    # deferred: the training library imports torch, which `zscir train-supervised --help` must not (tests/test_bad_input.py)
    from zscir.training.state import check_run_dir
    from zscir.training.supervised import SupervisedConfig, run_supervised_training

    blip2 = backbone is not None and backbone.startswith("blip2:")
    if HEAD_FAMILY[head] == "blip2" and not blip2:
        raise ZscirError(f"--head {head} runs on a BLIP-2: pass --backbone blip2:FOLDER "
                         "(the FineCIR-style head on CLIP is --head finecir-clip)")
    if HEAD_FAMILY[head] == "clip" and blip2:
        raise ZscirError(f"--head {head} runs on frozen CLIP features, not on {backbone}: "
                         "the BLIP-2 heads are finecir and fashionblip2")
    if backbone is not None and not blip2:
        if clip is not None and clip != backbone:
            raise ZscirError(f"--backbone {backbone} and --clip {clip} name two backbones: give one")
        clip = backbone
    out = out or f"runs/supervised-{dataset}-{texts}-{head}"
    check_run_dir(out, resume, overwrite, "supervised", expect={"head": head, "dataset": dataset, "texts": texts})
    if blip2:
        from zscir.models.blip2_heads.registry import recipe
        defaults = recipe(head)["training"]
        head_options = {"max_entities": max_entities} if head == "finecir" else {}
    else:
        defaults, head_options = CLIP_DEFAULTS, {"dropout": dropout, "max_entities": max_entities}
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay}
    cfg = SupervisedConfig(out=out, dataset=dataset, texts=texts, head=head,
                           **{k: defaults[k] if v is None else v for k, v in given.items()},
                           temperature=temperature, learn_temperature=learn_temperature, parser=parser,
                           head_options=head_options, seed=seed, max_steps=max_steps, threads=threads)
    log = (lambda m: click.echo(m, err=True))
    if blip2:
        from zscir.training.supervised_blip2 import run_blip2_training
        result = run_blip2_training(cfg, backbone, root=root, device=device, resume=resume, log=log)
    else:
        result = run_supervised_training(cfg, root=root, clip_name=clip, pretrained=pretrained,
                                         preprocess=preprocess, cache_dir=cache_dir, device=device, resume=resume,
                                         progress=not as_json, log=log)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"checkpoint: {result['checkpoint']} ({result['triplets']} triplets, "
                   f"training {result['seconds']['training']:.1f} s)")
