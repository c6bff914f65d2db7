"""``zscir backbone``: load a CLIP backbone and describe it (checks that its weights are available)."""

from __future__ import annotations

import json

import click

from zscir.backbone.loading import load_backbone


@click.command("backbone")
@click.option("--clip", "clip_name", required=True, help="open_clip model name (ViT-B-32, ViT-L-14, ...) or hf-hub:ORG/REPO.")
@click.option("--pretrained", default=None, help="open_clip pretrained tag (openai, laion2b_s34b_b79k, ...) or a local weights file.")
@click.option("--preprocess", type=click.Choice(["targetpad", "clip"]), default="targetpad", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def backbone(clip_name, pretrained, preprocess, as_json):
    """Load a backbone and print its identity and dimensions."""
    bb = load_backbone(clip_name, pretrained, preprocess=preprocess)
    info = {"identity": bb.identity, "preprocess": bb.preprocess_name, "image_size": bb.image_size,
            "embed_dim": bb.embed_dim, "token_dim": bb.token_dim, "vision_width": bb.vision_width,
            "context_length": bb.context_length}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            click.echo(f"{k:15s} {v}")
