"""``zscir caption``: caption an image source once (resumable), optionally split the captions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zscir.data.caption_cache import caption_images, check_cache_file
from zscir.data.images import DEFAULT_MAX_PIXELS
from zscir.data.keys import safe_name
from zscir.data.sources import open_image_source
from zscir.data.splitter import get_splitter
from zscir.backbone.options import check_device, device_option
from zscir.errors import ZscirError
from zscir.features.distributed import current_ranks, process_device
from zscir.generation.cache import json_line
from zscir.generation.cli import captioner_option, captioner_options, decoding_options, generator_kwargs
from zscir.generation.lookup import WORLD_CAPTIONS
from zscir.generation.registry import build_captioner
from zscir.utils.atomic import atomic_path
from zscir.utils.options import OUTPUT_FILE


def _find_world(images: str) -> str | None:
    """The shapes world an image path lives in: the nearest parent holding unlabeled/captions.jsonl."""
    path = Path(images.split("{")[0]).resolve()
    for parent in (path, *path.parents):
        if (parent / WORLD_CAPTIONS).is_file():
            return str(parent)
    return None


@click.command("caption")
@click.option("--images", required=True, metavar="PATH",
              help="A folder of images, a text file listing image paths, or tar shards (e.g. 'cc3m/{00000..00331}.tar'). "
                   "Image files: .jpg .jpeg .png .webp .bmp .gif .tif .tiff (any case); dotfiles and hidden folders "
                   "are skipped.")
@captioner_option(default="blip")
@click.option("--model", default=None, metavar="NAME|DIR",
              help="blip, blip2, hf-vlm: a Hugging Face id or a local save_pretrained() folder "
                   "(blip default Salesforce/blip-image-captioning-base); lavis: the model type (default base_coco).")
@captioner_options
@click.option("--captions", "captions_file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Captions file (JSONL, CSV/TSV or JSON id -> caption); implies --captioner file.")
@click.option("--world", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="shapes-world: the world folder (default: found above --images).")
@click.option("--cache", "cache_path", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="Caption cache (append-only JSONL; default under the zscir cache dir, one per captioner).")
@click.option("--out", "out_path", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="Write one JSON line per image: id, caption, subject, attribute.")
@click.option("--splitter", default="auto", show_default=True, type=click.Choice(["auto", "rules", "spacy", "none"]),
              help="Subject/attribute splitter for --out (none: captions only).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@device_option(None, "Default: cuda when available.")
@click.option("--max-pixels", default=None, type=click.IntRange(min=1), metavar="N",
              help="Refuse images with more pixels than this (decompression bombs); default ~89.5M.")
@decoding_options
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def caption(images, captioner, model, preset, prompt, captions_file, world, cache_path, out_path, splitter, batch_size,
            device, max_pixels, as_json, quiet, **options):
    """Caption every image of --images once; rerun to resume after a kill or to add new images.

    Bad images (corrupt, truncated, empty, too large) are skipped, counted and listed at the end.
    Under `torchrun --nproc_per_node N -m zscir.cli caption ...` or `accelerate launch`, each process
    captions every N-th image into the one cache and the main process reports (and writes --out).
    """
    if cache_path:
        check_cache_file(cache_path)  # before any work: never append to a file zscir did not create
    source = open_image_source(images, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    if source.estimated_len() == 0:  # as `zscir index` refuses it: nothing to caption is no success
        raise ZscirError(f"no images (.jpg, .png, .webp, ...) found under {safe_name(str(images))!r} (option --images)")
    if captions_file:
        captioner = "file"
    kw = generator_kwargs(options)
    base = captioner.partition(":")[0]
    if model is not None:
        kw["model"] = model
    if preset is not None:
        kw["preset"] = preset
    if prompt is not None:
        kw["prompt"] = prompt
    if captions_file:
        kw["path"] = captions_file
    if device is not None:
        kw["device"] = check_device(device)  # "banana", or cuda without a GPU: one line
    if base == "shapes-world" and ":" not in captioner:
        kw["world"] = world or _find_world(images)
        if kw["world"] is None:
            raise ZscirError(f"--captioner shapes-world: no --world given and no world folder "
                             f"(with unlabeled/captions.jsonl) above --images {images}")
    elif world is not None:
        raise ZscirError("--world is only used with --captioner shapes-world")
    ranks = current_ranks(device or "cpu")
    if ranks.world > 1 and device is not None:
        kw["device"] = process_device(device)
    captioner_obj = build_captioner(captioner, **kw)

    result = caption_images(source, captioner_obj, cache_path, batch_size=batch_size, progress=not quiet and ranks.is_main,
                            share=(ranks.rank, ranks.world) if ranks.world > 1 else None)
    if ranks.world > 1:  # every process appended its share to the one cache: the main process reads it all back
        counts = ranks.gather(result.captioned)
        ranks.barrier()
        if not ranks.is_main:
            return
        source = open_image_source(images, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        result = caption_images(source, captioner_obj, result.cache_path, batch_size=batch_size, progress=False)
        result.captioned, result.from_cache = sum(counts), result.from_cache - sum(counts)
    if out_path:
        _write_out(result, out_path, splitter)
    summary = {**result.summary(), "source": source.spec, "source_kind": source.kind, "out": out_path,
               **({"processes": ranks.world} if ranks.world > 1 else {})}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"captioned {len(result)} image(s) with {result.identity}: "
                   f"{result.captioned} now, {result.from_cache} from the cache")
        if result.cache_path:
            click.echo(f"cache: {result.cache_path}")
        if out_path:
            click.echo(f"out: {out_path}")
        click.echo(result.skipped.summary())


def _write_out(result, out_path: str, splitter: str) -> None:

    split = None if splitter == "none" else get_splitter(splitter).split
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        for item_id, text in result.items():
            row = {"id": item_id, "caption": text}
            if split is not None:
                parts = split(text)
                row["subject"], row["attribute"] = parts if parts else (None, None)
            f.write(json_line(row))
