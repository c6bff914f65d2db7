"""``zscir backbone``: load a CLIP backbone and describe it (checks that its weights are available)."""

from __future__ import annotations

import json

import click


@click.command("backbone")
@click.option("--clip", "clip_name", required=True, help="open_clip model name (ViT-B-32, ViT-L-14, ...) or hf-hub:ORG/REPO.")
@click.option("--pretrained", default=None, help="open_clip pretrained tag (openai, laion2b_s34b_b79k, ...) or a local weights "
              "file; 'none' for random weights.")
@click.option("--preprocess", type=click.Choice(["targetpad", "clip"]), default="targetpad", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def backbone(clip_name, pretrained, preprocess, device, as_json):
    """Load a backbone and print its identity and dimensions."""
    from zscir.backbone.options import backbone_from_options  # imported here: `zscir backbone --help` loads no torch

    bb = backbone_from_options(clip_name, pretrained, preprocess, device)
    info = {"identity": bb.identity, "preprocess": bb.preprocess_name, "image_size": bb.image_size,
            "embed_dim": bb.embed_dim, "token_dim": bb.token_dim, "vision_width": bb.vision_width,
            "context_length": bb.context_length}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            click.echo(f"{k:15s} {v}")
