"""`zscir index` and `zscir retrieve`: a thin shell over :mod:`zscir.index`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zscir.errors import ZscirError
from zscir.index.search_index import EXACT_MAX, KINDS


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def load_cli_backbone(clip, pretrained, preprocess, device):
    """--clip/--pretrained -> a backbone, or None when not given."""
    if clip is None:
        if pretrained is not None:
            raise ZscirError("option --pretrained needs --clip NAME (the open_clip model the weights belong to)")
        return None
    from zscir.backbone import load_backbone

    return load_backbone(clip, pretrained, device=device, preprocess=preprocess or "targetpad")


@click.command("index")
@click.option("--images", required=True, type=click.Path(), help="Folder of images (searched recursively).")
@click.option("--out", required=True, type=click.Path(), help="Index directory (created, or updated incrementally).")
@click.option("--clip", help="open_clip model name of the backbone (default: the shapes world's CLIP).")
@click.option("--pretrained", help="pretrained tag (e.g. openai) or a local weights file, with --clip.")
@click.option("--model", help="A zscir checkpoint: index with the backbone it was trained on.")
@click.option("--preprocess", type=click.Choice(["targetpad", "clip"]), default=None,
              help="Image preprocessing with --clip (default: targetpad).")
@click.option("--kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True,
              help="faiss index: exact (flat) inner product, or approximate IVF / HNSW; auto picks by size.")
@click.option("--exact-max", type=int, default=EXACT_MAX, show_default=True,
              help="With --kind auto: largest gallery searched exactly.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=None, help="Image decoding threads (default: up to 4).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def index(images, out, clip, pretrained, model, preprocess, kind, exact_max, batch_size, workers, device, as_json,
          no_progress):
    """Encode a folder of images (only new or changed ones on a rerun) and build a searchable index."""
    from zscir.index.gallery import build_index

    backbone = load_cli_backbone(clip, pretrained, preprocess, device)
    if model is not None:
        from zscir.models.query import BASELINES, load_query_encoder

        if model in BASELINES:
            raise ZscirError(f"--model {model!r} is a baseline, which has no backbone of its own: "
                             "use --clip NAME --pretrained TAG|FILE to choose the backbone")
        backbone = load_query_encoder(model, backbone).backbone
        model = str(Path(model).absolute())
    if backbone is None:
        from zscir.world.shipped import shapes_backbone

        backbone = shapes_backbone()
    if batch_size < 1:
        raise ZscirError(f"--batch-size must be at least 1, got {batch_size}")
    summary = build_index(out, backbone, images=images, kind=kind, batch_size=batch_size, workers=workers,
                          progress=not no_progress, exact_max=exact_max, log=_echo_err, model=model)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    f = summary["features"]
    rate = f" ({f['images_per_s']:.1f} images/s)" if f["encoded"] else ""
    click.echo(f"{summary['index']}: {summary['count']} images, {summary['kind']} index "
               f"(recall@{summary['recall']['k']} vs exact {summary['recall']['value']:.3f}); "
               f"{f['encoded']} encoded, {f['reused']} reused, {f['deleted']} dropped, {f['num_corrupt']} unreadable "
               f"in {summary['seconds']:.1f} s{rate}")


def open_retriever(index_dir, model, clip, pretrained, preprocess, device, progress=True):
    """The retriever for the given options, with the shapes-world defaults for what is missing."""
    from zscir.index.gallery import GalleryIndex
    from zscir.index.queries import checkpoint_fingerprint

    if index_dir is not None:
        index = GalleryIndex.open(index_dir)
        early = checkpoint_fingerprint(model) if model is not None else None
        if early is not None:  # a mismatch is reported before any weights are loaded
            index.check_fingerprint(early[0], what=f"the query model ({early[1]})")
        from zscir.index.retriever import Retriever

        return Retriever.load(index, model, load_cli_backbone(clip, pretrained, preprocess, device))

    from zscir.index import defaults
    from zscir.index.retriever import Retriever
    from zscir.models.query import BASELINES, load_query_encoder
    from zscir.world.shipped import shapes_backbone

    backbone = load_cli_backbone(clip, pretrained, preprocess, device)
    if model is None or model in BASELINES:
        backbone = backbone or shapes_backbone()
        model = model or defaults.default_model_for(backbone.identity)
    encoder = load_query_encoder(model, backbone)
    index_path = defaults.world_gallery_index(encoder.backbone, progress=progress, log=_echo_err)
    return Retriever(GalleryIndex.open(index_path), encoder)


def _table(results) -> str:
    lines = []
    for n, res in enumerate(results, 1):
        lines.append(f"query {n}: {res.ref}  +  \"{res.text}\"")
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
@click.option("--model", help="A zscir checkpoint, or a baseline: image | text | sum "
                              "(default: the shipped FTI checkpoint for the index's backbone, else sum).")
@click.option("--clip", help="open_clip model name, for a baseline --model without --index.")
@click.option("--pretrained", help="pretrained tag or local weights file, with --clip.")
@click.option("--preprocess", type=click.Choice(["targetpad", "clip"]), default=None)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of results per query.")
@click.option("--keep-reference", is_flag=True, help="Allow the reference image itself among the results.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML page here.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars (when an index is built on first use).")
def retrieve(ref, text, queries, index_dir, model, clip, pretrained, preprocess, k, keep_reference, as_json,
             html_path, device, no_progress):
    """Rank the gallery for a reference image plus a modification text."""
    if queries is not None and (ref is not None or text is not None):
        raise ZscirError("give either --queries FILE or --ref IMAGE --text TEXT, not both")
    if queries is None and (ref is None or text is None):
        raise ZscirError("missing query: give --ref IMAGE and --text TEXT (or --queries FILE.jsonl)")
    if k < 1:
        raise ZscirError(f"option -k must be at least 1, got {k}")
    skipped = []
    if queries is not None:
        from zscir.index.queries import read_queries

        query_list, skipped = read_queries(queries)
        for s in skipped:
            _echo_err(f"skipped {queries}:{s['line']}: {s['error']}")
    else:
        from zscir.index.queries import check_text, load_reference

        load_reference(ref, "reference image (option --ref)")
        check_text(text, "modification text (option --text)")
        query_list = [(ref, text)]

    retriever = open_retriever(index_dir, model, clip, pretrained, preprocess, device, progress=not no_progress)
    results = retriever.search_many(query_list, k, exclude_reference=not keep_reference)
    if html_path:
        from zscir.index.html import write_html

        write_html(html_path, results, subtitle=f"model {retriever.encoder.name}, index {retriever.index.root}")
        _echo_err(f"wrote {html_path}")
    if as_json:
        click.echo(json.dumps({**retriever.identity, "k": k, "queries": [r.to_dict() for r in results],
                               "skipped": skipped}, indent=2))
    else:
        click.echo(_table(results))
