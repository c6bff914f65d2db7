"""`zscir index` and `zscir retrieve`: a thin shell over :mod:`zscir.index`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zscir import resolve
from zscir.backbone.options import backbone_options, check_device, itm_rerank_option
from zscir.data.keys import safe_name
from zscir.data.sources import is_shard_folder, open_image_source
from zscir.errors import ZscirError
from zscir.features.distributed import current_ranks, process_device
from zscir.features.precision import check_precision
from zscir.generation.cli import captioner_option, editor_option, generations_option
from zscir.index.autotune import parse_size
from zscir.index.gallery import GalleryIndex, build_index, verify_index
from zscir.index.metadata import import_metadata
from zscir.index.html import write_html
from zscir.index.queries import check_text, load_reference, read_queries
from zscir.index.search_index import EXACT_MAX, KINDS
from zscir.generation.cache import check_cache_file
from zscir.generation.registry import build_captioner
from zscir.utils.options import OUTPUT_FILE

MODEL_CAPTIONERS = ("blip", "blip2", "hf-vlm", "lavis")   # backends that load a model on --device


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def world_model_notice(backbone) -> str:
    """Said whenever images are indexed with the shapes world's CLIP because no --clip/--model was given."""
    return (f"no --clip/--model given: indexing with the shapes world's CLIP ({backbone.identity.get('model')}, "
            f"a {backbone.image_size}-px model trained on coloured shapes, not photos); for real images pass "
            "--clip NAME --pretrained TAG|FILE (e.g. --clip ViT-L-14 --pretrained openai) or --model CHECKPOINT")


def _print_verify(report, as_json) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for problem in report["problems"]:
            _echo_err(problem)
        if report["ok"]:
            click.echo(f"{report['index']}: {report['files_checked']} files checked, all match their manifest")
    if not report["ok"]:
        raise ZscirError(f"index {report['index']!r}: {len(report['problems'])} damaged or missing file(s) "
                         f"of {report['files_checked']} checked: {report['hint']}")


def _import_metadata(out, metadata_file) -> dict:
    index = GalleryIndex.open(out)
    return import_metadata(out, metadata_file, index.ids, index.paths, index.meta.get("images_root"))


def _print_metadata(report: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    more = f" (e.g. {', '.join(map(repr, report['unmatched_examples']))})" if report["unmatched"] else ""
    _echo_err(f"metadata {report['file']}: {report['matched']} of {report['rows']} rows matched an image, "
              f"fields {', '.join(report['fields']) or '(none)'}; {report['unmatched']} matched none{more}")


@click.command("index")
@click.option("--images", type=click.Path(),
              help="Folder of images (searched recursively), or webdataset tar shards ('shards/{00000..00099}.tar', "
                   "a folder of .tar files) or a text file listing image paths. Image files: .jpg .jpeg .png .webp "
                   ".bmp .gif .tif .tiff (any case); dotfiles and hidden folders are skipped. Required unless "
                   "--verify.")
@click.option("--out", required=True, type=click.Path(), help="Index directory (created, or updated incrementally).")
@backbone_options("Default: the shapes world's CLIP.", random_weights=True, preprocess=None,
                  preprocess_note="With --clip; default: targetpad.",
                  device_note="Under torchrun / accelerate launch, cuda = each process's own GPU.")
@click.option("--model", help="A zscir checkpoint: index with the backbone it was trained on.")
@click.option("--kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True,
              help="exact (flat, fp16) search, or approximate: ivf-pqfs / ivf-sq8 / ivf-pq (compressed codes, "
                   "re-ranked exactly), ivf (fp32 lists), hnsw; auto: exact up to --exact-max, else ivf-pqfs "
                   "(4-bit fast-scan PQ, d/4 bytes a vector), or 8-bit PQ where that does not fit "
                   "--max-index-memory; its nprobe tuned by measured recall.")
@click.option("--max-index-memory", default="16GB", show_default=True,
              help="Memory an approximate index may take when fully paged in (codes + centroids), e.g. 16GB; "
                   "decides the code size with --kind auto. The fp16 vectors used for re-ranking stay "
                   "memory-mapped.")
@click.option("--exact-max", type=click.IntRange(min=0), default=EXACT_MAX, show_default=True,
              help="With --kind auto: largest gallery searched exactly.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=None,
              help="Image decoding processes, overlapped with the forward (default: one per core, up to 8, "
                   "shared among the processes of a torchrun / accelerate launch on this machine; "
                   "0: decode in the main process).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Image forward precision: bf16/fp16 autocast where the device has native kernels (refused "
                   "elsewhere). Recorded in the index: features of two precisions never mix.")
@click.option("--decode", type=click.Choice(["draft", "full"]), default="draft", show_default=True,
              help="draft: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the model's "
                   "input (2-4x faster); full: always decode every pixel.")
@click.option("--shard-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Images per feature shard: a killed run keeps every finished shard.")
@captioner_option(note="Also caption the images (through the generation cache: a rerun captions only new ones) and "
                       "store the captions' text features as the index's caption column (CVSI reads it).")
@click.option("--caption-cache", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="--captioner: the generation cache file (default under the zscir cache dir, one per captioner).")
@click.option("--force", is_flag=True, help="Re-encode every image and rebuild every file (repairs a damaged index).")
@click.option("--metadata", "metadata_file", type=click.Path(dir_okay=False),
              help="A CSV (header row) or JSONL file of fields per image, keyed by column 'id' (image id) or 'path' "
                   "(absolute, or relative to --images): stored in the index (metadata.json), returned with "
                   "`zscir serve` hits and filterable there. Without --images: import it into the index --out.")
@click.option("--verify", is_flag=True, help="Check every file of --out against its recorded checksum; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def index(images, out, clip, pretrained, model, preprocess, kind, max_index_memory, exact_max, batch_size, workers,
          precision, decode, shard_size, captioner, caption_cache, device, force, metadata_file, verify, as_json,
          no_progress):
    """Encode a folder of images (only new or changed ones on a rerun) and build a searchable index.

    Rerunning on an index rebuilds a missing or damaged faiss index or index.json from the
    stored features; --force re-encodes everything; --verify only checks.

    Several processes: run the same command under `torchrun --nproc_per_node N -m zscir.cli index ...`
    or `accelerate launch -m zscir.cli index ...`: each process encodes a share of the images into its
    own shards (resumable), the main process merges them and builds the index.
    """
    if verify:
        if force or images is not None or captioner is not None:
            raise ZscirError("--verify only checks an index: give it with --out alone (no --images, no --force)")
        _print_verify(verify_index(out), as_json)
        return
    if images is None and metadata_file is not None:
        _print_metadata(_import_metadata(out, metadata_file), as_json)
        return
    if images is None:
        raise ZscirError("missing option --images DIR: the folder of images to index (or --verify to check --out)")
    if batch_size < 1:
        raise ZscirError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ZscirError(f"--workers must be at least 0, got {workers}")
    max_index_memory = parse_size(max_index_memory)
    device = process_device(check_device(device))
    check_precision(precision, device)  # before any weights are loaded
    chosen = resolve.indexing_backbone(clip, pretrained, preprocess, device, model)
    backbone, model = chosen.backbone, chosen.model
    ranks = current_ranks(device)
    notice = None
    if chosen.benchmark_default:
        notice = world_model_notice(backbone)
        if ranks.is_main:
            _echo_err(f"note: {notice}")
    items, captioner_obj, caption_source = None, None, None
    if captioner is not None:
        if caption_cache:
            check_cache_file(caption_cache)  # before any work: never append to a file zscir did not create
        captioner_obj = build_captioner(captioner, **({"device": str(device)} if _takes_device(captioner) else {}))
        caption_source = open_image_source(images)
    if not Path(images).is_dir() or is_shard_folder(images):  # webdataset shards or a list file
        source = open_image_source(images)
        items = list(source)
        if source.skipped and ranks.is_main:
            _echo_err(source.skipped.summary(max_items=5))
        if not items:
            raise ZscirError(f"--images {images}: no usable images in it")
        images = None
    summary = build_index(out, backbone, images=images, items=items, kind=kind, batch_size=batch_size, workers=workers,
                          progress=not no_progress, exact_max=exact_max, log=_echo_err, model=model, force=force,
                          precision=precision, draft=decode == "draft", shard_size=shard_size,
                          ranks=ranks if ranks.world > 1 else None, max_index_memory=max_index_memory,
                          captioner=captioner_obj, caption_source=caption_source, caption_cache=caption_cache)
    if not ranks.is_main:  # a helper process: the main process reports for all of them
        return
    if metadata_file is not None:
        summary["metadata"] = _import_metadata(out, metadata_file)
    summary["backbone"] = {"identity": backbone.identity, "preprocess": backbone.preprocess_name,
                           "device": str(backbone.device), "shapes_world_model": notice is not None,
                           "notice": notice}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if metadata_file is not None:
        _print_metadata(summary["metadata"], False)
    f = summary["features"]
    rate = f" ({f['images_per_s']:.1f} images/s)" if f["encoded"] else ""
    click.echo(f"{summary['index']}: {summary['count']} images, {summary['kind']} index "
               f"(recall@{summary['recall']['k']} vs exact {summary['recall']['value']:.3f}); "
               f"{f['encoded']} encoded, {f['reused']} reused, {f['deleted']} dropped, {f['num_corrupt']} skipped "
               f"in {summary['seconds']:.1f} s{rate}")
    if "captions" in summary:
        c = summary["captions"]
        click.echo(f"caption column ({c['captioner']}): {c['captioned_now']} captioned now, {c['from_cache']} from "
                   f"the cache, {c['texts_encoded_now']} caption texts encoded, {c['without_caption']} without a caption")


def _takes_device(spec: str) -> bool:
    """Whether the captioner backend of ``spec`` runs a model here (and so takes --device)."""
    return spec.partition(":")[0] in MODEL_CAPTIONERS


def _table(results, retriever) -> str:
    itm = getattr(retriever, "itm_rerank", None)
    rerank = f", top {itm.k} re-ranked by ITM" if itm is not None else ""
    lines = [f"model {retriever.encoder.name}, index {retriever.index.root}{rerank}", ""]  # what ranked
    for n, res in enumerate(results, 1):
        lines.append(f"query {n}: {safe_name(res.ref)}  +  \"{safe_name(res.text)}\"")
        lines.append(f"{'rank':>4}  {'score':>6}  path")
        for h in res.hits:
            lines.append(f"{h.rank:>4}  {h.score:>6.3f}  {h.path or h.id}")
        lines.append("")
    return "\n".join(lines).rstrip()


@click.command("retrieve")
@click.option("--ref", type=click.Path(), help="Reference image.")
@click.option("--text", help="Modification text: what to change in the reference.")
@click.option("--queries", type=click.Path(), help="JSONL file of {\"ref\": IMAGE, \"text\": \"...\"} rows, answered in one batch.")
@click.option("--index", "index_dir", type=click.Path(), help="Index directory (default: the shapes world's gallery).")
@click.option("--model", help="A zscir checkpoint, or a training-free encoder: image | text | sum | searle-xl-oti "
                              "| cirevl | ldre | seize | cvsi:MAPPING (the language-model methods read "
                              "--generations, else --captioner/--editor; cvsi also the index's caption column) "
                              "(default: the shipped FTI checkpoint for the index's backbone, else sum).")
@backbone_options("For a baseline --model without --index.", random_weights=True, preprocess=None,
                  preprocess_note="With --clip; default: targetpad.")
@generations_option
@captioner_option(note="cirevl/ldre/seize/cvsi: caption a reference the --generations lack (cached).")
@editor_option(note="cirevl/ldre/seize/cvsi: edit a caption the --generations lack (cached; prompted with the "
                    "method's template).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results per query.")
@click.option("--keep-reference", is_flag=True, help="Allow the reference image itself among the results.")
@itm_rerank_option("Scores stay the first stage's; --json records it.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML page here.")
@click.option("--no-progress", is_flag=True, help="No progress bars (when an index is built on first use).")
def retrieve(ref, text, queries, index_dir, model, clip, pretrained, preprocess, generations, captioner, editor, k,
             keep_reference, itm_rerank, as_json, html_path, device, no_progress):
    """Rank the gallery for a reference image plus a modification text."""
    if queries is not None and (ref is not None or text is not None):
        raise ZscirError("give either --queries FILE or --ref IMAGE --text TEXT, not both")
    if queries is None and (ref is None or text is None):
        raise ZscirError("missing query: give --ref IMAGE and --text TEXT (or --queries FILE.jsonl)")
    if k < 1:
        raise ZscirError(f"option -k must be at least 1, got {k}")
    skipped = []
    if queries is not None:
        query_list, skipped = read_queries(queries)
        for s in skipped:
            _echo_err(f"skipped {queries}:{s['line']}: {s['error']}")
    else:
        load_reference(ref, "reference image (option --ref)")
        check_text(text, "modification text (option --text)")
        query_list = [(ref, text)]

    sources = None
    if generations or captioner or editor:
        # deferred like the other library imports of a command: --help loads none of it
        from zscir.importers.released_generations import load_generations

        sources = resolve.GenerationSources(load_generations(generations) if generations else None, captioner, editor)
    retriever = resolve.open_retriever(index_dir, model, clip, pretrained, preprocess, device,
                                       progress=not no_progress, log=_echo_err, generations=sources)
    retriever.use_itm_rerank(itm_rerank)
    results = retriever.search_many(query_list, k, exclude_reference=not keep_reference)
    if html_path:
        write_html(html_path, results, subtitle=f"model {retriever.encoder.name}, index {retriever.index.root}")
        _echo_err(f"wrote {html_path}")
    if as_json:
        click.echo(json.dumps({**retriever.identity, "k": k, "queries": [r.to_dict() for r in results],
                               "skipped": skipped}, indent=2))
    else:
        click.echo(_table(results, retriever))
