"""What a benchmark loader returns: one gallery, its queries, and how to score them.

Every loader turns an official layout into :class:`EvalSplit` objects, so the
runner, the metrics and the submission writers never see a benchmark's own
file formats. Image ids are strings everywhere (CIRCO's integer ids included);
``id_type`` says how the official submission files spell them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

from zscir.errors import ZscirError
from zscir.utils.jsonl import read_jsonl as jsonl_rows

# metric families: how a split is scored and how its rankings are written
KINDS = ("circo", "cirr", "fashioniq")


@dataclass(frozen=True)
class BenchmarkGenerators:
    """The captioner and editor a benchmark brings for the language-model methods, and the rows they serve.

    captioner, editor: generator specs (``blip2:DIR``, ``hf-lm:DIR``); None where the benchmark's is not there
    captioner_kw:      the captioner's options (its decoding: as many captions as the rows read)
    models:            the method rows `zscir eval` adds with them (``cirevl``, ``ldre:n=5``, ``cvsi:MAPPING``...)
    edit_prompt:       the prompt the editor was trained on (a ``PromptTemplate``), asked for every edit in place of
                       the family's template (None: the family's template)
    missing:           one line: what is absent and how to get it (said when a row is skipped for it)
    """

    captioner: str | None
    editor: str | None
    captioner_kw: dict = field(default_factory=dict)
    models: tuple[str, ...] = ()
    edit_prompt: Any = None
    missing: str = ""

    @property
    def complete(self) -> bool:
        return self.captioner is not None and self.editor is not None


@dataclass(frozen=True)
class BenchmarkDefaults:
    """What a benchmark brings of its own, so that the evaluation and indexing layers need no word of it.

    backbone:    (device, preprocess) -> the benchmark's own backbone, used when no --clip is given
    models:      backbone -> the query-model checkpoints shipped for it (evaluated besides the baselines)
    query_model: backbone identity -> the one model `zscir retrieve` uses by default (None: none shipped)
    gallery:     (backbone, progress, log) -> the index of the benchmark's own gallery for that backbone
                 (built on first use), which `zscir retrieve` / `zscir serve` search without --index
    oracles:     (root, split) -> {oracle name: one query text per query}: ceilings, reported beside models
    oracle_notes: oracle name -> what its text is
    generators:  backbone -> :class:`BenchmarkGenerators`: the captioner and editor the language-model methods
                 use when no --captioner/--editor is given, and the method rows they add to `zscir eval`
    generation_oracles: (root, split, generations) -> {row name: one query text per query}: rows that split a
                 generation pipeline (a true caption + the editor, the captioner + an exact edit), reported
                 beside the oracles; ``generations`` is the run's (:mod:`zscir.models.training_free.generations`)
    """

    backbone: Callable[[str, str], Any] | None = None
    models: Callable[[Any], list[str]] | None = None
    query_model: Callable[[dict], str | None] | None = None
    gallery: Callable[..., Path] | None = None
    oracles: Callable[[Path, "EvalSplit"], dict[str, list[str]]] | None = None
    oracle_notes: dict[str, str] = field(default_factory=dict)
    generators: Callable[[Any], BenchmarkGenerators] | None = None
    generation_oracles: Callable[[Path, "EvalSplit", Any], dict[str, list[str]]] | None = None


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of the registry (:data:`zscir.benchmarks.BENCHMARKS`): how to load it and its protocol."""

    name: str
    title: str
    family: str                        # metric family of its splits, one of KINDS (zscir.evaluation.families)
    load: Callable[..., list["EvalSplit"]]
    splits: tuple[str, ...]            # splits the official layout has
    default_splits: tuple[str, ...]    # what `zscir eval NAME` runs without --split
    remove_reference: bool             # protocol default: drop the reference from the ranking
    options: tuple[str, ...] = ()      # loader keywords set from the protocol
    default_root: Callable[[], Path] | None = None
    root_hint: str = ""
    defaults: BenchmarkDefaults = BenchmarkDefaults()   # own backbone, shipped models, oracle ceilings
    protocol_choices: tuple[str, ...] = ()   # protocol options that apply to it, recorded with its results
    gallery_definition: str = ""       # what its splits rank against, recorded with each gallery's size


@dataclass(frozen=True)
class Query:
    """One composed query.

    qid:       the key of this query in submission files (CIRCO ``id``, CIRR ``pairid``,
               FashionIQ's position in the caption file).
    reference: image id of the reference image.
    captions:  the modification text(s) as annotated (FashionIQ: two; others: one).
    targets:   ground-truth image ids, the annotated target first; empty on test splits.
    subset:    CIRR's ``img_set`` members (the reference included, as annotated).
    """

    qid: str
    reference: str
    captions: tuple[str, ...]
    targets: tuple[str, ...] = ()
    subset: tuple[str, ...] = ()


@dataclass
class EvalSplit:
    """A gallery and the queries ranked against it."""

    benchmark: str                 # registry name, e.g. "circo"
    split: str                     # e.g. "val", "test1", "val_coarse"
    kind: str                      # metric family, one of KINDS
    gallery: list[str]             # image ids in gallery order (the tie-break order)
    images: dict[str, Path]        # every image id used (gallery and references) -> file
    queries: list[Query]
    category: str | None = None    # FashionIQ category
    id_type: Callable[[str], Any] = str   # how submission files spell image ids (int for CIRCO)
    sources: list[str] = field(default_factory=list)   # annotation files read
    notes: dict[str, Any] = field(default_factory=dict)  # loader facts worth recording (counts, quirks)
    gallery_label: str = ""        # names the gallery's feature cache; splits with one gallery share it

    @property
    def name(self) -> str:
        parts = [self.benchmark, self.category, self.split]
        return "/".join(p for p in parts if p)

    @property
    def gallery_name(self) -> str:
        return self.gallery_label or self.name.replace("/", "-")

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.queries) and all(q.targets for q in self.queries)

    @cached_property
    def gallery_index(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.gallery)}

    def check(self) -> "EvalSplit":
        """Fail fast on an inconsistent split: unknown kind, duplicate or missing ids, missing files."""
        if self.kind not in KINDS:
            raise ZscirError(f"{self.name}: unknown metric kind {self.kind!r}, expected one of {KINDS}")
        if len(self.gallery_index) != len(self.gallery):
            dup = next(g for i, g in enumerate(self.gallery) if self.gallery_index[g] != i)
            raise ZscirError(f"{self.name}: image id {dup!r} appears twice in the gallery list ({self.sources[-1]})")
        for q in self.queries:
            if q.reference not in self.images:
                raise ZscirError(f"{self.name}: query {q.qid}: reference image {q.reference!r} is not in the image list")
            for t in q.targets:
                if t not in self.gallery_index:
                    raise ZscirError(f"{self.name}: query {q.qid}: ground-truth image {t!r} is not in the gallery")
            for m in q.subset:
                if m not in self.gallery_index:
                    raise ZscirError(f"{self.name}: query {q.qid}: img_set member {m!r} is not in the gallery")
        require_files(self.images.values(), what=f"{self.name} image")
        return self


def require_files(paths: Iterable[Path], what: str) -> None:
    """Raise naming the first expected file that is missing, with a count of all missing ones."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} files missing in all)" if len(missing) > 1 else ""
        raise ZscirError(f"{what} missing: expected {missing[0]}{more}")


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ZscirError(f"{what} not found: expected {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ZscirError(f"{what} {path} is not valid JSON: {e}") from None


def read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise ZscirError(f"{what} not found: expected {path}")
    return [row for _, row in jsonl_rows(path, lambda n: f"{what} {path}, line {n}", "not valid JSON: {error}")]


def field_of(record: dict, name: str, path: Path, where: str) -> Any:
    """``record[name]`` or an error naming the file, the record and the field."""
    try:
        return record[name]
    except (KeyError, TypeError):
        raise ZscirError(f"{path}: {where} has no field {name!r}") from None
