"""Query latency of the training-free methods (CIReVL, LDRE, SEIZE, CVSI) with generations cached, vs FTI4CIR.

On the shapes world's val split (its shipped CLIP, the shipped FTI and LinCIR checkpoints), with every caption
and edit already at hand (an in-memory table: what a filled generation cache gives; no language model runs),
each method encodes all queries (text features of captions / edits, CVSI's pseudo-word prompt) and ranks the
gallery by its rule; the gallery's image features are encoded once before any timing. CVSI's gallery caption
column (text features of every gallery image's captions) is a per-gallery cost, reported apart.

    python eval/bench_training_free.py [--repeats 3] [--n 15] [--out eval/results/training_free_latency.json]

Prints and saves ms/query per method (best of --repeats) and its ratio to FTI4CIR's, all from one run.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from zscir.benchmarks import get_benchmark, load_splits
from zscir.evaluation.families import get_family
from zscir.evaluation.features import CacheReport, gallery_features, reference_features
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.ranking import fitted_rule, gallery_columns, query_vectors, rank_split
from zscir.models.composed import SplitContext
from zscir.models.training_free.generations import TableGenerations
from zscir.models.training_free.templates import ADDED_OBJECTS, edit_template, instruction_of
from zscir.resolve import eval_query_encoder
from zscir.utils.atomic import atomic_write_json
from zscir.world import shipped
from zscir.world.build import default_world

ROOT = Path(__file__).resolve().parents[1]


def cached_generations(split, n: int) -> TableGenerations:
    """N captions for every image and an answer for every input the methods ask: a filled cache, in memory."""
    table = TableGenerations(provenance=[{"source": "bench table"}])
    style = get_family(split.kind).generation_style
    for image_id in split.images:
        table.add_caption(image_id, [f"a scene {k} with shapes of image {image_id}" for k in range(n)])
    for q in split.queries:
        instruction = instruction_of(q.captions)
        caps = [f"a scene {k} with shapes of image {q.reference}" for k in range(n)]
        for caption in caps + [", ".join(caps[:1]), ", ".join(caps)]:
            table.add_edit(caption, instruction, [f"{edit_template(style).answer_prefix} {caption}, {instruction}"])
            table.add_edit(caption, instruction, [f"{ADDED_OBJECTS.answer_prefix} a red circle"], task="added")
    return table


def time_method(qe, split, gallery, refs, protocol, generations, repeats: int) -> dict:
    style = get_family(split.kind).generation_style
    qe.prepare(SplitContext(style=style, generations=generations))
    t0 = time.perf_counter()
    columns = gallery_columns(split, gallery, qe.rule, qe.gallery_column)
    column_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        queries, valid = query_vectors(qe, split, refs, protocol, 64, False)
        rule = fitted_rule(qe.rule, queries, valid, columns)
        rank_split(split, queries, valid, gallery, protocol, protocol.top_k, rule, columns)
        best = min(best, time.perf_counter() - t0)
    return {"ms_per_query": round(1000 * best / len(split.queries), 3), "gallery_columns_s": round(column_s, 3)}


@click.command()
@click.option("--repeats", default=3, show_default=True)
@click.option("--n", default=15, show_default=True, help="Captions per reference (LDRE/SEIZE/CVSI).")
@click.option("--out", default=str(ROOT / "eval/results/training_free_latency.json"), show_default=True)
def main(repeats: int, n: int, out: str):
    world = default_world(progress=False, log=lambda m: None)
    bb = shipped.shapes_backbone()
    split = load_splits("shapes", world, "val")[0]
    protocol = Protocol().resolved(get_benchmark("shapes"))
    fti = shipped.shipped_fti_checkpoint(bb.identity)
    models = {"fti4cir": str(fti), "cirevl": "cirevl", "ldre": f"ldre:n={n}", "ldre-mean": f"ldre:n={n},ensemble=mean",
              "seize": f"seize:n={n}", "cvsi": f"cvsi:{ROOT / 'checkpoints/shapes_lincir.safetensors'}"}
    generations = cached_generations(split, n)
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        report = CacheReport()
        gallery = gallery_features(bb, split, Path(cache), report, 64, False)
        refs = reference_features(bb, split, gallery, False, Path(cache), report, 64, False)
        for name, model in models.items():
            qe = eval_query_encoder(model, bb, None)
            r = refs if not qe.needs_tokens else reference_features(bb, split, gallery, True, Path(cache), report,
                                                                    64, False)
            results[name] = time_method(qe, split, gallery, r, protocol, generations, repeats)
            print(f"{name:10s} {results[name]['ms_per_query']:8.3f} ms/query", flush=True)
    base = results["fti4cir"]["ms_per_query"]
    for r in results.values():
        r["ratio_to_fti4cir"] = round(r["ms_per_query"] / base, 3)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    record = {"benchmark": "shapes/val", "queries": len(split.queries), "gallery": len(split.gallery), "n": n,
              "repeats": repeats, "methods": results, "cpu": cpu, "torch_threads": torch.get_num_threads(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "note": "generations cached (in memory); per query: text encoding of captions/edits (CVSI: plus the "
                      "pseudo-word prompt) and the rule's scoring; best of repeats; machine shared and loaded"}
    atomic_write_json(Path(out), record)
    print(json.dumps({k: v["ratio_to_fti4cir"] for k, v in results.items()}), cpu, record["date"])


if __name__ == "__main__":
    main()
