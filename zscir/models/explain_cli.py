"""`zscir explain`: the nearest vocabulary words of each pseudo-word of a reference image (:mod:`zscir.models.explain`).

    from zscir.models.explain_cli import explain
    report = explain("ref.png", "checkpoints/shapes_fti.safetensors", k=5)
"""

from __future__ import annotations

import json

import click

from zscir.backbone.options import check_device, device_option
from zscir.resolve import default_backbone, default_model_for
from zscir.index.queries import read_reference
from zscir.models.explain import (VOCABULARY_CHOICES, check_options, pseudo_word_report, require_pseudo_words,
                                  text_report)
from zscir.models.query import load_query_encoder, training_free


def explain(ref: str, model: str | None = None, k: int = 5, device: str = "cpu", vocabulary: str = "all") -> dict:
    """The report of ``model`` (default: the default benchmark's shipped model for its own backbone) on image ``ref``."""
    check_options(k, vocabulary)
    if model is None:
        model = default_model_for(default_backbone(device).identity)
    qe = require_pseudo_words(None if training_free(str(model)) else load_query_encoder(str(model)), model)
    image, _ = read_reference(ref)
    return pseudo_word_report(qe, image, ref, model, k, vocabulary)


@click.command("explain")
@click.option("--ref", required=True, type=click.Path(dir_okay=False), help="Reference image file.")
@click.option("--model", help="Mapping checkpoint (default: the shipped FTI checkpoint of the shapes world).")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Nearest words per pseudo-word.")
@click.option("--vocab", "vocabulary", type=click.Choice(VOCABULARY_CHOICES), default="all", show_default=True,
              help="Tokens searched: the whole token-embedding table, or only the shapes world's words.")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def explain_command(ref, model, k, vocabulary, device, as_json):
    """Nearest vocabulary words of each pseudo-word of REF (FTI4CIR's pseudo-to-real analysis), with the
    reference's true caption when REF is a shapes-world image."""
    report = explain(ref, model, k, check_device(device), vocabulary)
    click.echo(json.dumps(report, indent=2) if as_json else text_report(report))
