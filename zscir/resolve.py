"""The one resolver: from what a command was given to the backbone, query model and gallery it uses.

    from zscir.resolve import open_retriever, load_retriever
    r = open_retriever()                                     # the shapes world: its CLIP, FTI model and gallery
    r = open_retriever("my_index", "my_fti.safetensors")      # or load_retriever("my_index", ...) for an index
    hits = r.search("ref.jpg", "in red", k=10)

Every command (`zscir index`, `retrieve`, `eval`, `serve`) and the server decide here, by these rules:

- **backbone**: ``--clip/--pretrained`` (with ``--preprocess``, on ``--device``); else the one the
  ``--model`` checkpoint records (its sidecar's ``backbone_source``); else the one the ``--index``
  records; else the default benchmark's own (:class:`~zscir.benchmarks.base.BenchmarkDefaults`
  ``.backbone``: the shapes world's CLIP).
- **query model**: ``--model`` (a checkpoint, or a training-free name: image, text, sum, ...); else
  the model the index was built for (``zscir index --model``; an error if that file has gone);
  else the benchmark's shipped model for the backbone (``BenchmarkDefaults.query_model``: FTI);
  else the image+text ``sum`` baseline.
- **gallery**: ``--index``; else the benchmark's own gallery indexed with the backbone
  (``BenchmarkDefaults.gallery``: the world's evaluation gallery, indexed into the cache on first use).

A checkpoint is read once (sidecar and weights: :func:`read_model`) and that read serves the index
check, the backbone's source and the query model. The benchmark's defaults are the only source of
world defaults: this module names a benchmark, never the world.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from zscir.backbone import Backbone, load_backbone, make_preprocess
from zscir.backbone.loading import resolve_portable_path
from zscir.backbone.options import backbone_from_options, check_device
from zscir.benchmarks import BenchmarkSpec, get_benchmark
from zscir.benchmarks.base import BenchmarkGenerators
from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex
from zscir.index.retriever import Retriever
from zscir.models.query import BASELINES, QueryEncoder, load_query_encoder, read_query_checkpoint, training_free
from zscir.models.training_free.backends import BackendConfig, ModelGenerations
from zscir.models.training_free.generations import Stacked

DEFAULT_BENCHMARK = "shapes"  # the benchmark whose backbone, model and gallery answer a bare `zscir retrieve`
FALLBACK_BASELINE = "sum"     # the query model when the benchmark ships none for the backbone
EVAL_BASELINES = ("image", "text", "sum")  # the training-free rows of every `zscir eval` table

Log = Callable[[str], None]


# ---------------------------------------------------------------- the benchmark's defaults
def default_backbone(device: str = "cpu", preprocess: str = "targetpad", benchmark: str = DEFAULT_BENCHMARK):
    """The benchmark's own backbone (the shapes world's CLIP)."""
    make = get_benchmark(benchmark).defaults.backbone
    if make is None:
        raise ZscirError(f"benchmark {benchmark!r} has no backbone of its own: pass --clip NAME --pretrained TAG|FILE")
    return make(device, preprocess)


def default_model_for(backbone_identity: dict, benchmark: str = DEFAULT_BENCHMARK) -> str:
    """The benchmark's shipped query model for this backbone, else the sum baseline."""
    pick = get_benchmark(benchmark).defaults.query_model
    return (pick(backbone_identity) if pick else None) or FALLBACK_BASELINE


def default_gallery(backbone: Backbone, progress: bool = True, log: Log | None = None,
                    benchmark: str = DEFAULT_BENCHMARK) -> Path:
    """The benchmark's own gallery indexed with ``backbone`` (built on first use): its index directory."""
    gallery = get_benchmark(benchmark).defaults.gallery
    if gallery is None:
        raise ZscirError(f"benchmark {benchmark!r} has no gallery of its own: pass --index DIR")
    return gallery(backbone, progress=progress, log=log)


# ---------------------------------------------------------------- models
@dataclass(frozen=True, eq=False)
class Model:
    """A ``--model`` as given, with its checkpoint's (state, meta) read once (None for a training-free name)."""

    spec: str
    checkpoint: tuple[dict, dict] | None = None

    @property
    def meta(self) -> dict | None:
        return self.checkpoint[1] if self.checkpoint else None

    def fingerprint(self) -> tuple[dict, str] | None:
        """(backbone identity + preprocessing, method) as the sidecar records them, to check an index against."""
        meta = self.meta
        if not isinstance(meta, dict) or "backbone" not in meta or "preprocess" not in meta:
            return None
        return {"backbone": meta["backbone"], "preprocess": meta["preprocess"]}, str(meta.get("method", meta.get("kind")))


def read_model(model: str | Model) -> Model:
    """``model`` resolved: a training-free name as it is, a checkpoint read (sidecar and weights) once."""
    if isinstance(model, Model):
        return model
    model = str(model)
    return Model(model) if training_free(model) else Model(model, read_query_checkpoint(model))


def checkpoint_backbone(meta: dict, device: str) -> Backbone | None:
    """The backbone a checkpoint's sidecar records, loaded on ``device`` (None when it does not say)."""
    try:
        source = meta["backbone_source"]
        name, pretrained = source["name"], source["pretrained"]
    except (KeyError, TypeError):
        return None
    return load_backbone(name, resolve_portable_path(pretrained), device=device,
                         preprocess=meta.get("preprocess", "targetpad"))


def index_backbone(index: GalleryIndex, device: str = "cpu") -> Backbone:
    """The backbone an index was built with, from the source it recorded."""
    source = index.meta.get("backbone_source")
    if not source:
        raise ZscirError(f"index {index.root} does not record where its backbone's weights are: "
                         "pass --clip NAME --pretrained TAG|FILE")
    return load_backbone(source["name"], resolve_portable_path(source["pretrained"]), device=device,
                         preprocess=index.meta["preprocess"])


def query_encoder(model: str | Model, backbone: Backbone | None = None, device: str = "cpu") -> QueryEncoder:
    """The query encoder for ``model`` on ``backbone``; without one, a checkpoint's own backbone (on ``device``)."""
    model = read_model(model)
    if backbone is None and model.checkpoint is not None and str(device) != "cpu":
        backbone = checkpoint_backbone(model.meta, device)
    return load_query_encoder(model.spec, backbone, checkpoint=model.checkpoint)


# ---------------------------------------------------------------- retrievers: a query model over a gallery
@dataclass(frozen=True)
class GenerationSources:
    """Where language-model methods read captions and edits in retrieval: ``files`` (the loaded ``--generations``,
    a Generations object), then the ``captioner`` / ``editor`` specs (the captioner built with ``kw``) through the
    one generation cache (``cache``: one file; default one per generator under the zscir cache dir), by the
    one adapter every command uses (:class:`~zscir.models.training_free.backends.ModelGenerations`)."""

    files: object | None = None
    captioner: str | None = None
    editor: str | None = None
    kw: dict | None = None
    cache: str | None = None

    def build(self) -> Stacked | None:
        sources = [self.files] if self.files is not None else []
        if self.captioner is not None or self.editor is not None:
            config = BackendConfig(self.captioner, self.editor, dict(self.kw or {}), cache_path=self.cache)
            config.check()
            sources.append(ModelGenerations(config))
        return Stacked(sources) if sources else None


def load_retriever(index: str | os.PathLike | GalleryIndex, model: str | Model | None = None,
                   backbone: Backbone | None = None, device: str = "cpu",
                   generations: GenerationSources | None = None) -> Retriever:
    """The retriever for ``index`` (a directory or an opened index) and the query ``model``.

    Without ``model``: the model the index was built for (an error if that file has gone), else
    the benchmark's shipped model for the index's backbone, else the sum baseline. Without
    ``backbone``: the index's own for a baseline or a non-CPU device, else the checkpoint's.
    """
    index = index if isinstance(index, GalleryIndex) else GalleryIndex.open(index)
    if model is None:
        recorded = index.meta.get("model")
        if recorded and not os.path.exists(recorded):
            raise ZscirError(f"index {str(index.root)!r} was built for the query model {recorded!r} "
                             "(zscir index --model), which no longer exists: pass --model FILE (or a baseline: "
                             f"{', '.join(BASELINES)}), or record the new place with "
                             f"`zscir index --images DIR --out {index.root} --model NEW`")
        model = recorded or default_model_for(index.fingerprint["backbone"])
    spec = model.spec if isinstance(model, Model) else str(model)
    if backbone is None and (training_free(spec) or str(device) != "cpu"):
        backbone = index_backbone(index, device)
    return Retriever(index, query_encoder(model, backbone), _generations(generations))


def _generations(sources: GenerationSources | None):
    return sources.build() if sources is not None else None


def open_retriever(index: str | os.PathLike | None = None, model: str | None = None, clip: str | None = None,
                   pretrained: str | None = None, preprocess: str | None = None, device: str = "cpu",
                   progress: bool = True, log: Log | None = None,
                   generations: GenerationSources | None = None) -> Retriever:
    """The retriever for a command's --index/--model/--clip/--pretrained/--preprocess/--device (the rules above).

    With ``index``, a checkpoint trained on another backbone is reported before any backbone is loaded.
    ``generations``: where language-model methods (cirevl, ldre, seize, cvsi) read captions and edits
    (--generations, --captioner, --editor).
    """
    backbone = backbone_from_options(clip, pretrained, preprocess, device)  # validates --device first
    if index is not None:
        index = GalleryIndex.open(index)
        chosen = read_model(model) if model is not None else None
        early = chosen.fingerprint() if chosen is not None else None
        if early is not None:
            index.check_fingerprint(early[0], what=f"the query model ({early[1]})")
        return load_retriever(index, chosen, backbone, device=device, generations=generations)
    if model is None or training_free(model):
        backbone = backbone or default_backbone(device)
        model = model or default_model_for(backbone.identity)
    encoder = query_encoder(model, backbone, device)
    return Retriever(GalleryIndex.open(default_gallery(encoder.backbone, progress=progress, log=log)), encoder,
                     _generations(generations))


def open_retrievers(index: str | os.PathLike | None = None, models: Iterable[str] = (), clip: str | None = None,
                    pretrained: str | None = None, preprocess: str | None = None, device: str = "cpu",
                    progress: bool = True, log: Log | None = None,
                    generations: GenerationSources | None = None) -> list[tuple[str | None, Retriever]]:
    """(model as given, retriever) for each of ``models`` (none: the default one), all over one opened index and
    the first model's backbone, each model read once; language-model methods share one ``generations``."""
    models = list(models)
    first = open_retriever(index, models[0] if models else None, clip, pretrained, preprocess, device, progress, log,
                           generations)
    out: list[tuple[str | None, Retriever]] = [(models[0] if models else None, first)]
    for spec in models[1:]:
        out.append((spec, Retriever(first.index, query_encoder(spec, first.backbone), first.generations)))
    return out


# ---------------------------------------------------------------- indexing
@dataclass(frozen=True)
class IndexingChoice:
    """What `zscir index` encodes with: the backbone, the --model path it records, whether it is the benchmark's."""

    backbone: Backbone
    model: str | None
    benchmark_default: bool


def indexing_backbone(clip: str | None, pretrained: str | None, preprocess: str | None, device: str,
                      model: str | None = None) -> IndexingChoice:
    """--clip/--pretrained, else the --model checkpoint's backbone, else the benchmark's own (``device`` checked)."""
    backbone = backbone_from_options(clip, pretrained, preprocess, device)
    if model is not None:
        if training_free(model):
            raise ZscirError(f"--model {model!r} is a baseline, which has no backbone of its own: "
                             "use --clip NAME --pretrained TAG|FILE to choose the backbone")
        backbone = query_encoder(model, backbone, device).backbone
        model = str(Path(model).absolute())
    if backbone is None:
        return IndexingChoice(default_backbone(device), model, True)
    return IndexingChoice(backbone, model, False)


# ---------------------------------------------------------------- evaluation
def eval_backbone(spec: BenchmarkSpec, clip: str | None, pretrained: str | None, preprocess: str | None,
                  device: str) -> Backbone | None:
    """The backbone given by --clip/--pretrained, else the benchmark's own (the shapes world's CLIP), else None."""
    check_device(device)  # "cuda" without one, or "banana": one line, before any work
    preprocess = preprocess or "targetpad"
    if clip:
        return load_backbone(clip, pretrained, device=device, preprocess=preprocess)  # the CLI resolved --pretrained
    if pretrained:
        raise ZscirError("--pretrained needs --clip (the open_clip model name the weights belong to)")
    if spec.defaults.backbone is not None:
        return spec.defaults.backbone(device, preprocess)
    return None


def benchmark_generators(spec: BenchmarkSpec, backbone: Backbone | None) -> BenchmarkGenerators | None:
    """The captioner and editor the benchmark brings for ``backbone`` (None: it brings none)."""
    make = spec.defaults.generators
    return make(backbone) if make is not None and backbone is not None else None


def generation_config(given: BackendConfig | None, own: BenchmarkGenerators | None,
                      progress: bool = False) -> BackendConfig | None:
    """--captioner/--editor as given; each one not given is the benchmark's own, where it has one (the captioner
    with the benchmark's options, e.g. its decoding; a given captioner keeps the options given with it)."""
    if own is None or (own.captioner is None and own.editor is None):
        return given
    config = given or BackendConfig(progress=progress)
    if config.captioner is None and own.captioner is not None:
        config = replace(config, captioner=own.captioner, captioner_kw={**own.captioner_kw, **config.captioner_kw})
    if config.editor is None and own.editor is not None:
        config = replace(config, editor=own.editor, edit_prompt=own.edit_prompt)
    return config


def default_models(spec: BenchmarkSpec, backbone: Backbone | None, backends: BackendConfig | None = None,
                   say: Log | None = None) -> list[str]:
    """What `zscir eval` runs without --model: the baselines, the benchmark's shipped models for the backbone, and
    its language-model rows when a captioner and an editor are there (``backends``, default the benchmark's
    own); else those rows are left out and ``say`` is told in one line how to get them."""
    if spec.defaults.models is not None and backbone is not None:
        own = benchmark_generators(spec, backbone)
        rows = list(own.models) if own is not None else []
        backends = backends if backends is not None else generation_config(None, own)
        if rows and (backends is None or backends.captioner is None or backends.editor is None):
            if say is not None:
                say(f"skipped {', '.join(r.partition(':')[0] for r in rows)}: {own.missing}")
            rows = []
        return list(EVAL_BASELINES) + list(spec.defaults.models(backbone)) + rows
    if backbone is None:
        raise ZscirError(f"nothing to evaluate: pass --model (a checkpoint, or {', '.join(EVAL_BASELINES)} "
                         "with --clip/--pretrained)")
    return list(EVAL_BASELINES)


def model_slug(model: str, taken: set[str]) -> str:
    """A short unique name for ``model`` in results and file names (added to ``taken``)."""
    base = training_free(model) or Path(model).name.removesuffix(".safetensors").removesuffix(".json")
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def eval_query_encoder(model: str, backbone: Backbone | None, preprocess: str | None) -> QueryEncoder:
    """The query encoder for ``model``; the protocol's ``preprocess`` overrides a checkpoint's own."""
    qe = query_encoder(model, backbone)
    if preprocess and not qe.backbone.preprocess_name.startswith(preprocess):
        p = qe.backbone.preprocess
        qe.backbone.preprocess = make_preprocess(preprocess, p.size, p.mean, p.std)
    return qe
