"""Regenerate the shapes world's example queries for `zscir retrieve` (see zscir.index.examples).

    python -m zscir.index.examples_cli        # writes zscir/index/shapes_examples.json

A command module (it reads the shapes world and its shipped model), kept apart from the
examples file's readers so that the index layer does not import the world.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zscir.index.examples import COUNT, EXAMPLES_FILE, TOP_K
from zscir.index.gallery import GalleryIndex
from zscir.index.retriever import Retriever
from zscir.models.query import load_query_encoder
from zscir.utils.atomic import atomic_write_json
from zscir.world import shipped
from zscir.world.build import GALLERY_DIR, default_world, file_name
from zscir.world.gallery_index import world_gallery_index


def select_examples(retriever, world: Path, count: int = COUNT, k: int = TOP_K) -> dict:
    """Scan val queries in id order; keep the first ``count`` whose true target is in the top ``k``."""
    records = sorted(json.loads((Path(world) / "annotations" / "val.json").read_text()), key=lambda r: r["id"])
    examples, scanned, batch = [], 0, 32
    while len(examples) < count and scanned < len(records):
        chunk = records[scanned:scanned + batch]
        scanned += len(chunk)
        refs = [Path(world) / GALLERY_DIR / file_name(r["reference_img_id"]) for r in chunk]
        results = retriever.search_many([(str(p), r["relative_caption"]) for p, r in zip(refs, chunk)], k)
        for rec, res in zip(chunk, results):
            target = file_name(rec["target_img_id"])
            ranks = [h.rank for h in res.hits if Path(h.path or h.id).name == target]
            rec["_rank"] = ranks[0] if ranks else None
            if ranks and len(examples) < count:
                examples.append({"val_id": rec["id"], "ref": str(GALLERY_DIR / file_name(rec["reference_img_id"])),
                                 "text": rec["relative_caption"], "target": str(GALLERY_DIR / target),
                                 "rank": ranks[0]})
    last = examples[-1]["val_id"] if examples else None
    upto = [r for r in records if last is not None and r["id"] <= last]
    hits = sum(1 for r in upto if r.get("_rank"))
    return {"rule": f"the first {count} val queries (by id) of the default shapes world whose true target "
                    f"is in the shipped FTI model's top {k} (reference excluded from the ranking)",
            "model": retriever.encoder.identity, "k": k,
            "val_queries_scanned": len(upto), "hits_among_scanned": hits,
            "hit_rate_among_scanned": hits / max(len(upto), 1), "examples": examples}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m zscir.index.examples_cli", description=(
        f"Select the shapes world's example queries with the shipped FTI model and write {EXAMPLES_FILE.name}."
    )).parse_args(argv)
    backbone = shipped.shapes_backbone()
    ckpt = shipped.shipped_fti_checkpoint(backbone.identity)
    if ckpt is None:
        sys.exit("no shipped FTI checkpoint for the shapes world's backbone in checkpoints/")
    encoder = load_query_encoder(str(ckpt), backbone)
    retriever = Retriever(GalleryIndex.open(world_gallery_index(backbone)), encoder)
    record = select_examples(retriever, default_world())
    atomic_write_json(EXAMPLES_FILE, record)
    print(f"{len(record['examples'])} examples from {record['val_queries_scanned']} val queries scanned "
          f"(top-{record['k']} hit rate {record['hit_rate_among_scanned']:.2f}) -> {EXAMPLES_FILE}")


if __name__ == "__main__":
    main()
