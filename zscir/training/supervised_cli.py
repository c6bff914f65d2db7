"""``zscir train-supervised``: train a Combiner or FineCIR-style head on a benchmark's train triplets."""

from __future__ import annotations

import json

import click

from zscir.backbone.options import backbone_options
from zscir.utils.options import DROPOUT, NON_NEGATIVE_FLOAT, OUTPUT_DIR, POSITIVE_FLOAT, POSITIVE_INT

# the keys of zscir.training.supervised.DATASETS, spelled out so that `--help` does not import torch (tested)
DATASETS = ("fashioniq", "cirr", "fine-fashioniq", "fine-cirr", "shapes")


@click.command("train-supervised")
@click.option("--dataset", type=click.Choice(DATASETS), default="shapes", show_default=True,
              help="Train triplets: FashionIQ, CIRR, FineCIR's Fine-FashionIQ / Fine-CIRR, or the shapes world.")
@click.option("--root", default=None, help="The dataset folder (as for `zscir eval`). Default for shapes: the default world.")
@click.option("--texts", type=click.Choice(["fine", "coarse"]), default="fine", show_default=True,
              help="shapes only: train on the fine or the coarse modification texts.")
@click.option("--head", type=click.Choice(["combiner", "finecir"]), default="finecir", show_default=True)
@backbone_options("Default for shapes: the world's CLIP.", preprocess="targetpad")
@click.option("--out", type=OUTPUT_DIR, default=None, help="Run directory (config, log, train state, model.safetensors). "
              "Default: runs/supervised-<dataset>-<texts>-<head>.")
@click.option("--epochs", type=POSITIVE_INT, default=60, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=256, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=2e-4, show_default=True)
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=0.05, show_default=True)
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
def train_supervised(dataset, root, texts, head, clip, pretrained, preprocess, device, out, epochs, batch_size, lr,
                     weight_decay, temperature, learn_temperature, dropout, max_entities, parser, seed, max_steps,
                     threads, cache_dir, resume, overwrite, as_json):
    """Train a supervised composition head on frozen CLIP features (cached), for comparison with zero-shot models.

    The checkpoint (OUT/model.safetensors) is evaluated with `zscir eval ... --model OUT/model.safetensors`.
    """
    # deferred: the training library imports torch, which `zscir train-supervised --help` must not (tests/test_bad_input.py)
    from zscir.training.state import check_run_dir
    from zscir.training.supervised import SupervisedConfig, run_supervised_training

    out = out or f"runs/supervised-{dataset}-{texts}-{head}"
    check_run_dir(out, resume, overwrite, "supervised", expect={"head": head, "dataset": dataset, "texts": texts})
    cfg = SupervisedConfig(out=out, dataset=dataset, texts=texts,
                           head=head, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                           temperature=temperature, learn_temperature=learn_temperature, parser=parser,
                           head_options={"dropout": dropout, "max_entities": max_entities}, seed=seed,
                           max_steps=max_steps, threads=threads)
    log = (lambda m: click.echo(m, err=True))
    result = run_supervised_training(cfg, root=root, clip_name=clip, pretrained=pretrained,
                                     preprocess=preprocess, cache_dir=cache_dir, device=device, resume=resume,
                                     progress=not as_json, log=log)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"checkpoint: {result['checkpoint']} ({result['triplets']} triplets, "
                   f"training {result['seconds']['training']:.1f} s)")
