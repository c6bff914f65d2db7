"""`zscir import-checkpoint`: a released checkpoint of another method -> a zscir checkpoint."""

from __future__ import annotations

import json

import click

from zscir.backbone.options import backbone_options
from zscir.importers import IMPORTERS


@click.command("import-checkpoint")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--from", "fmt", required=True, type=click.Choice(list(IMPORTERS)),
              help="The release format (the method whose official code saved SRC).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output checkpoint: OUT.safetensors + OUT.json.")
@backbone_options("Default: the one the release was trained on.", pretrained_note="Default: the release's.",
                  device=False)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
def import_checkpoint_command(src, fmt, out, clip, pretrained, overwrite, as_json):
    """Import a released FTI4CIR, SEARLE, Pic2Word, LinCIR or Context-I2W checkpoint as a zscir checkpoint.

    SRC is read without running any of its code; `zscir eval/index/retrieve --model OUT.safetensors`
    take the result."""
    from zscir.importers import import_checkpoint

    meta = import_checkpoint(src, fmt, out, clip=clip, pretrained=pretrained, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    b = meta["backbone"]
    click.echo(f"imported {meta['source']['title']} ({meta['source']['file']}, sha256 {meta['source']['sha256'][:12]}...) "
               f"-> {meta['weights']}")
    click.echo(f"  method {meta['method']}: prompt {meta['query']['prompt']!r}, FashionIQ captions "
               f"{meta['query']['fiq_captions']!r}, preprocess {meta['preprocess']}")
    click.echo(f"  backbone {b['model']} / {b['pretrained']}" + (f" ({b['activation']})" if "activation" in b else ""))
    click.echo(f"  license: {meta['source']['license']}")
    choice = meta["source"].get("format_choice")
    if choice:
        others = ", ".join(f"--from {name}" for name in choice["same_file_format"])
        click.echo(f"  note: {meta['source']['title']} and {others} files share one format, which the file cannot "
                   f"tell apart: imported with {meta['source']['title']}'s prompt and preprocessing {meta['preprocess']} "
                   f"as --from {choice['from']} asked (recorded in the sidecar)")
