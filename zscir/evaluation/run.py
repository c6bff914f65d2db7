"""The evaluation runner: benchmark splits x query encoders -> metrics, rankings, results files.

    from zscir.evaluation.run import EvalRequest, evaluate
    results = evaluate(EvalRequest("cirr", root="~/data/CIRR", models=["sum"], clip="ViT-B-32", pretrained="openai"))

For each model and split: gallery features (cached on disk, see
:mod:`zscir.evaluation.features`), reference features, query features (the
normalised mean over the protocol's query texts), fp32 cosine similarities,
stable top-50 rankings (and CIRR's subset rankings), the benchmark's metrics
when the split has ground truth, and the rankings in submission format.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from zscir import __version__, resolve
from zscir.benchmarks import BenchmarkSpec, get_benchmark, load_splits, resolve_root
from zscir.benchmarks.base import EvalSplit
from zscir.errors import ZscirError
from zscir.evaluation import report
from zscir.evaluation.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, check_pair, compare_rows
from zscir.evaluation.edit_types import EDIT_KINDS_NOTE, by_edit
from zscir.evaluation.families import get_family
from zscir.evaluation.features import (CacheReport, default_cache_root, gallery_features, reference_features,
                                       unreadable_images)
from zscir.evaluation.itm_rerank import first_stage_k, rerank_split
from zscir.evaluation.multiturn import evaluate_multiturn
from zscir.evaluation.oracles import evaluate_oracles
from zscir.evaluation.per_query import per_query_scores
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.ranking import fitted_rule, gallery_columns, query_vectors, rank_split
from zscir.evaluation.scoring import score_split
from zscir.evaluation.submission import check_payloads, ranking_payloads, write_rankings
from zscir.importers.released_generations import load_generations
from zscir.models.composed import COSINE, SplitContext
from zscir.models.itm_rerank import ItmRerank, check_backbone
from zscir.models.training_free.backends import BackendConfig, ModelGenerations
from zscir.models.training_free.generations import Stacked
from zscir.utils.atomic import atomic_write_json, atomic_write_text

BASELINES = resolve.EVAL_BASELINES


@dataclass
class EvalRequest:
    benchmark: str
    root: str | Path | None = None
    splits: Sequence[str] | None = None          # None = the benchmark's default splits
    models: Sequence[str] | None = None          # baseline names or checkpoint paths; None = defaults
    clip: str | None = None                      # backbone for baselines (and to check checkpoints against)
    pretrained: str | None = None
    protocol: Protocol = field(default_factory=Protocol)
    categories: Sequence[str] | None = None      # FashionIQ categories (None = all three)
    out_dir: str | Path | None = None            # None = runs/eval-<benchmark>-<time>
    cache_root: str | Path | None = None         # None = <zscir cache>/features/eval
    device: str = "cpu"
    batch_size: int = 64
    progress: bool = True
    command: str | None = None                   # the command line, recorded in the results
    oracles: bool = True                         # the benchmark's oracle rows (ceilings), when it has any
    generations: Sequence[str] | None = None     # released generation files (LDRE/SEIZE JSON) for LLM methods
    allow_missing_images: bool = False           # evaluate a split with unreadable images (left out) or refuse
    overwrite: bool = False                      # replace the results of an existing run in out_dir
    compare: tuple[str, str] | None = None       # two rows: paired bootstrap interval of their difference
    bootstrap: tuple[int, int] = (DEFAULT_RESAMPLES, DEFAULT_SEED)   # its resamples and seed
    backends: BackendConfig | None = None        # --captioner/--editor: generate what the files lack (cached)
    itm_rerank: int | None = None                # re-order each query's top K by ITM (zscir.models.itm_rerank)


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _say(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# ---------------------------------------------------------------- models and backbones (decided by zscir.resolve)
def load_backbone_for(req: EvalRequest, spec: BenchmarkSpec):
    """The backbone given by --clip/--pretrained, else the benchmark's own (the shapes world's CLIP), else None."""
    return resolve.eval_backbone(spec, req.clip, req.pretrained, req.protocol.preprocess, req.device)


def load_query_encoder_for(model: str, backbone, protocol: Protocol):
    return resolve.eval_query_encoder(model, backbone, protocol.preprocess)


default_models, model_slug = resolve.default_models, resolve.model_slug


def load_sources(req: EvalRequest, backends: BackendConfig | None = None) -> Stacked | None:
    """Where the language-model methods read captions and edits: the imported files in the order given, then
    the generation cache with the backends (--captioner/--editor, else the benchmark's own: ``backends``), which
    generate what is missing."""
    backends = backends if backends is not None else req.backends
    sources = list(load_generations(req.generations).sources) if req.generations else []
    if backends is not None:
        backends.check()
        sources.append(ModelGenerations(backends))
    return Stacked(sources) if sources else None


# ---------------------------------------------------------------- one split
def evaluate_split(qe, split: EvalSplit, protocol: Protocol, req: EvalRequest, cache_root: Path,
                   out_dir: Path, rankings_dir: Path, generations=None) -> dict:
    bb = qe.backbone
    timer = Timer()
    style = get_family(split.kind).generation_style
    qe.prepare(SplitContext(style=style, generations=generations.for_style(style) if generations else None))
    cache = CacheReport()
    with timer("gallery"):
        gallery = gallery_features(bb, split, cache_root, cache, req.batch_size, req.progress)
    with timer("references"):
        refs = reference_features(bb, split, gallery, qe.needs_tokens, cache_root, cache, req.batch_size,
                                  req.progress)
    unreadable = unreadable_images(split, cache)
    if unreadable and not req.allow_missing_images:
        raise ZscirError(f"{unreadable}: leaving them out would change the metrics; replace the files, or pass "
                         "--allow-missing-images to evaluate without them")
    truncated_before = bb.truncated_prompts
    tokens_before, generating_before = getattr(qe, "generated_tokens", None), getattr(generations, "seconds", 0.0)
    with timer("queries"):
        queries, valid = query_vectors(qe, split, refs, protocol, req.batch_size, req.progress)
    truncated = bb.truncated_prompts - truncated_before
    generation = None
    if tokens_before is not None:   # a method that reads generated texts: its cost per query
        generation = generation_cost(timer.seconds["queries"], qe.generated_tokens - tokens_before,
                                     getattr(generations, "seconds", 0.0) - generating_before, int(valid.sum()))
    with timer("ranking"):
        columns = gallery_columns(split, gallery, qe.rule, qe.gallery_column)
        rule = fitted_rule(qe.rule, queries, valid, columns)
        rerank = ItmRerank(req.itm_rerank) if req.itm_rerank else None
        ranked, subset = rank_split(split, queries, valid, gallery, protocol, first_stage_k(rerank, protocol.top_k),
                                    rule, columns)
    if rerank is not None:
        with timer("itm rerank"):
            ranked, subset = rerank_split(rerank, qe, split, protocol, ranked, subset, valid, req.progress)
    with timer("ranking"):
        metrics = score_split(split, ranked, subset)
    turns = None
    if "multiturn" in split.notes and metrics is not None:
        with timer("closed loop"):
            turns = evaluate_multiturn(qe, split, ranked, gallery, protocol, cache_root, req.batch_size, req.progress,
                                       rule, columns)
    with timer("writing"):
        paths = write_rankings(rankings_dir, split, ranked, subset)
        problems = check_payloads(split, ranking_payloads(split, ranked, subset))
    corrupt = {c["id"]: c["reason"] for c in cache.corrupt}
    return {
        "split": split.name, "kind": split.kind, "category": split.category,
        "queries": len(split.queries), "gallery": len(split.gallery),
        "metrics": metrics,
        "per_query": per_query_scores(split, ranked) if metrics is not None else None,
        "skipped_queries": int((~valid).sum()),
        "truncated_prompts": truncated,
        "corrupt_images": [{"id": i, "reason": r} for i, r in corrupt.items()],
        "unreadable": unreadable,
        "rankings": [str(p.relative_to(out_dir)) for p in paths],
        "submission_problems": problems[:20], "num_submission_problems": len(problems),
        "feature_cache": {"encoded": cache.encoded, "reused": cache.reused,
                          "images_per_s": round(cache.images_per_s, 1)},
        "timings_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        **({"generation": generation} if generation is not None else {}),
        **scoring_record(rule, rerank),
        "loader_notes": {k: v for k, v in split.notes.items() if k not in ("multiturn", EDIT_KINDS_NOTE)},
        "sources": split.sources,
        **({"multiturn": turns} if turns is not None else {}),
    }


def scoring_record(rule, rerank: ItmRerank | None) -> dict:
    """The split's ``scoring`` block: the first stage's rule (when not plain cosine) and any ITM re-ranking."""
    scoring = {**(rule.describe() if rule is not COSINE else {}),
               **({"itm_rerank": rerank.describe()} if rerank is not None else {})}
    return {"scoring": scoring} if scoring else {}


def generation_cost(seconds: float, tokens: int, generating: float, queries: int) -> dict:
    """A generation-based row's cost: time per query (the query stage, generation included) and the tokens of
    the generated texts each query reads (captions and language-model answers, by the generator's tokenizer);
    ``generation_s``: of the query stage, the seconds spent generating now (0 when the cache held everything)."""
    n = max(queries, 1)
    return {"queries": queries, "time_per_query_s": round(seconds / n, 6), "generated_tokens": tokens,
            "generated_tokens_per_query": round(tokens / n, 3), "generation_s": round(generating, 3)}


def aggregates(split_results: list[dict]) -> dict[str, dict]:
    """Families that split by category (FashionIQ): the family's mean over the categories of each split."""
    groups: dict[str, dict[str, dict]] = {}
    means = {}
    for r in split_results:
        mean = get_family(r["kind"]).category_mean
        if mean is not None and r["category"] and r["metrics"]:
            name = r["split"].replace(f"/{r['category']}/", "/")
            groups.setdefault(name, {})[r["category"]] = r["metrics"]
            means[name] = mean
    return {name: {"categories": list(per_cat), "metrics": means[name](per_cat)} for name, per_cat in groups.items()}


# ---------------------------------------------------------------- the run
def evaluate(req: EvalRequest) -> dict:
    t_start = time.perf_counter()
    spec = get_benchmark(req.benchmark)
    protocol = req.protocol.resolved(spec)
    out_dir = Path(req.out_dir) if req.out_dir else Path("runs") / f"eval-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out_dir(out_dir, req.overwrite)
    def load_benchmark():
        root = resolve_root(spec, req.root)
        return root, [s for name in list(req.splits or spec.default_splits)
                      for s in load_splits(spec.name, root, name, categories=req.categories, **protocol.loader_options())]

    # a benchmark on disk is read first (its errors are the cheapest); one that is built on first use (the
    # default world) only after the backbone and every --model loaded, so a bad option is one line before it
    builds_root = req.root is None and spec.default_root is not None
    if not builds_root:
        root, splits = load_benchmark()
    backbone = load_backbone_for(req, spec)
    backends = resolve.generation_config(req.backends, resolve.benchmark_generators(spec, backbone), req.progress)
    models = list(req.models or default_models(spec, backbone, backends, _say))
    encoders = [load_query_encoder_for(model, backbone, protocol) for model in models]
    if req.itm_rerank:
        ItmRerank(req.itm_rerank)                    # a bad K, then a backbone without ITM: one line, before any work
        for qe in encoders:
            check_backbone(qe.backbone)
    generations = load_sources(req, backends)
    slugs: set[str] = set()
    check_pair(req.compare, [model_slug(m, slugs) for m in models])   # a bad --compare fails before any work
    if builds_root:
        root, splits = load_benchmark()
    cache_root = Path(req.cache_root) if req.cache_root else default_cache_root()

    results = {
        "zscir_version": __version__, "benchmark": spec.name, "title": spec.title, "root": str(root),
        "splits": [s.name for s in splits], "protocol": None, "models": [], "out_dir": str(out_dir),
        "feature_cache": str(cache_root), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": req.command,
        "allow_missing_images": req.allow_missing_images,
    }
    taken: set[str] = set()
    warned: set[str] = set()
    for model, qe in zip(models, encoders):
        t_model = time.perf_counter()
        slug = model_slug(model, taken)
        _say(f"evaluating {slug} ({qe.backbone.identity_str}, {qe.backbone.preprocess_name}) on "
             f"{', '.join(s.name for s in splits)}")
        split_results = [evaluate_split(qe, s, protocol, req, cache_root, out_dir, out_dir / "rankings" / slug,
                                        generations) for s in splits]
        for r in split_results:
            if r["unreadable"] and r["split"] not in warned:   # accepted (--allow-missing-images): said once a split
                warned.add(r["split"])
                _say(f"warning: {r['unreadable']}: left out (--allow-missing-images)")
        results["models"].append({
            "model": model, "name": slug, "identity": qe.identity,
            "backbone": qe.backbone.identity_str, "preprocess": qe.backbone.preprocess_name,
            "splits": {r["split"]: r for r in split_results},
            "aggregates": aggregates(split_results),
            "fiq_captions": protocol.fiq_rule(getattr(qe, "fiq_captions", None)),
            "truncated_prompts": sum(r["truncated_prompts"] for r in split_results),
            "seconds": round(time.perf_counter() - t_model, 3),
            **({"method_card": qe.protocol()} if qe.protocol() else {}),
            **({"itm_rerank": ItmRerank(req.itm_rerank).describe()} if req.itm_rerank else {}),
        })
    results["by_edit"] = by_edit(results, splits)
    if req.compare:
        results["compare"] = compare_rows(results, req.compare, *req.bootstrap)
    if req.oracles and spec.defaults.oracles is not None:
        _say(f"oracle rows ({', '.join(spec.defaults.oracle_notes) or 'ceilings'}) on {', '.join(s.name for s in splits)}")
        # the pipeline-split rows run the generators: only when a language-model method is evaluated
        reads_generations = any(getattr(qe, "generated_tokens", None) is not None for qe in encoders)
        results["oracles"] = evaluate_oracles(spec, root, splits, backbone, protocol, cache_root, req.batch_size,
                                              req.progress, generations if reads_generations else None)
    galleries = {s.name: {"definition": spec.gallery_definition or s.gallery_name, "size": len(s.gallery),
                          "label": s.gallery_name} for s in splits}
    results["protocol"] = protocol.record(
        spec.name, sorted({m["preprocess"] for m in results["models"]}),
        fiq_rules={m["name"]: m["fiq_captions"] for m in results["models"]},
        truncated_prompts={m["name"]: m["truncated_prompts"] for m in results["models"]}, galleries=galleries)
    if req.itm_rerank:
        results["protocol"]["itm_rerank"] = ItmRerank(req.itm_rerank).describe()
    cards = {m["name"]: m["method_card"] for m in results["models"] if "method_card" in m}
    if cards:
        results["protocol"]["methods"] = cards
    results["seconds"] = round(time.perf_counter() - t_start, 3)
    write_results(out_dir, results)
    return results


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Before any work: an existing run's results are replaced only when asked (as pretrain's --overwrite)."""
    if (out_dir / "results.json").exists() and not overwrite:
        raise ZscirError(f"--out {out_dir} already holds evaluation results (results.json): pass --overwrite to "
                         "replace them, or choose another --out")


def write_results(out_dir: Path, results: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "results.md", report.markdown(results))


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ZscirError(f"no evaluation results in {run_dir}: expected {path}")
    return json.loads(path.read_text())
