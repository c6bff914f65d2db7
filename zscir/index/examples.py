"""The documented example queries for `zscir retrieve` on a fresh install (the shapes world).

``shapes_examples.json`` (beside this file) lists reference images and fine modification
texts from the default world's val split, each with its true target. They are the first
val queries, in id order, on which the shipped FTI model ranks the true target in the
top 5; the file records how many val queries were scanned to find them and the hit rate
over those, so the selection is visible rather than hidden. Regenerate after shipping a
new checkpoint or world generator:

    python -m zscir.index.examples            # writes zscir/index/shapes_examples.json

Try one:

    zscir retrieve --ref ~/.cache/zscir/worlds/shapes-v3-seed0/<ref> --text "<text>" -k 5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zscir.utils.atomic import atomic_write_json

EXAMPLES_FILE = Path(__file__).with_name("shapes_examples.json")
COUNT = 24
TOP_K = 5


def load_examples(path: Path = EXAMPLES_FILE) -> dict:
    return json.loads(Path(path).read_text())


def examples_jsonl(world: Path, out: Path, path: Path = EXAMPLES_FILE) -> Path:
    """Write the examples as `zscir retrieve --queries` rows with absolute reference paths."""
    rows = [{"ref": str(Path(world) / ex["ref"]), "text": ex["text"]} for ex in load_examples(path)["examples"]]
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(out)


def select_examples(retriever, world: Path, count: int = COUNT, k: int = TOP_K) -> dict:
    """Scan val queries in id order; keep the first ``count`` whose true target is in the top ``k``."""
    from zscir.world.build import GALLERY_DIR, file_name

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
    import argparse

    argparse.ArgumentParser(prog="python -m zscir.index.examples", description=(
        f"Select the shapes world's example queries with the shipped FTI model and write {EXAMPLES_FILE.name}."
    )).parse_args(argv)
    from zscir.index.gallery import GalleryIndex
    from zscir.index.retriever import Retriever
    from zscir.models.query import load_query_encoder
    from zscir.world import shipped
    from zscir.world.build import default_world
    from zscir.world.gallery_index import world_gallery_index

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
