"""``zscir backbone``: load a CLIP backbone and describe it (checks that its weights are available)."""

from __future__ import annotations

import json

import click

from zscir.backbone.options import backbone_from_options, backbone_options


@click.command("backbone")
@backbone_options(required=True, random_weights=True, preprocess="targetpad")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def backbone(clip, pretrained, preprocess, device, as_json):
    """Load a backbone and print its identity and dimensions."""
    bb = backbone_from_options(clip, pretrained, preprocess, device)
    info = {"identity": bb.identity, "preprocess": bb.preprocess_name, "image_size": bb.image_size,
            "embed_dim": bb.embed_dim, "token_dim": bb.token_dim, "vision_width": bb.vision_width,
            "context_length": bb.context_length}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            click.echo(f"{k:15s} {v}")
