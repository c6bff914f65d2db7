"""Composed retrieval over a gallery index: (reference image, modification text) -> ranked images.

    r = Retriever(GalleryIndex.open("my_index"), load_query_encoder("checkpoints/shapes_fti.safetensors"))
    hits = r.search("ref.png", "in red with long sleeves", k=10)   # [Hit(rank, score, id, path)]

(:func:`zscir.resolve.load_retriever` picks the model and backbone an index was built for.)

The query encoder (zscir.models.query) turns the reference's features and the
text into one normalised vector; the index ranks the gallery by cosine
similarity. The reference image itself is left out of its own answer when it
is part of the gallery (as CIRR's protocol does): "this one, but red" never
wants "this one" back. "Itself" means the same content (sha256 of the file's
bytes: a copy or a symlink in the gallery is the reference too) or the same
file; ``exclude_ids`` leaves out more by id (e.g. an in-memory reference's own id).

Methods with several query vectors and gallery columns (CVSI, SEIZE, ...: an encoder that overrides
``encode_items``) are answered by :mod:`zscir.index.rescoring`: every row scored by the full rule on an
exact index, candidates from the image column re-scored exactly on an approximate one. They read captions
and edits from ``generations`` (:class:`zscir.resolve.GenerationSources`: the ``--generations`` files, then
the configured captioner and editor through :class:`zscir.models.training_free.backends.ModelGenerations`); the reference is known to them by its gallery id when it
is a gallery image (else its file name) and by its content.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch
from PIL import Image

from zscir.backbone import ImageFeatures
from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex
from zscir.features.sources import safe_name
from zscir.index.queries import ImageInput, check_text, read_reference
from zscir.index.refine import refine_turns
from zscir.index.rescoring import IndexColumns, rank_rows
from zscir.index.rows import Lookup
from zscir.models.composed import COSINE, ImageRef, QueryItem, SplitContext
from zscir.models.itm_rerank import ItmRerank, check_backbone
from zscir.models.query import QueryEncoder


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    path: str | None


@dataclass
class QueryResult:
    ref: str
    text: str
    hits: list[Hit] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ref": self.ref, "text": self.text, "results": [asdict(h) for h in self.hits]}


def _label(image: ImageInput) -> str:
    return "<image>" if isinstance(image, Image.Image) else safe_name(str(image))


def multi_column(encoder) -> bool:
    """Whether ``encoder`` gives its own named query vectors or scores by a rule other than cosine (a BLIP-2
    baseline's max over query tokens): then its rule ranks the index's columns; else one index search."""
    own = getattr(type(encoder), "encode_items", None)
    return (own is not None and own is not QueryEncoder.encode_items) or encoder.rule is not COSINE


class Retriever:
    def __init__(self, index: GalleryIndex, encoder, generations=None, style: str = "structural"):
        index.check_backbone(encoder.backbone, what=f"the query model ({encoder.name})")
        self.index, self.encoder, self.backbone = index, encoder, encoder.backbone
        self.generations, self.style = generations, style
        self.itm_rerank: ItmRerank | None = None   # use_itm_rerank(K): each answer's top K re-ordered by ITM
        self.multi = multi_column(encoder)
        self.columns = IndexColumns(index) if self.multi else None
        if self.multi:
            self.columns.check(encoder.rule.columns)   # before any query: one line naming the missing column
            encoder.prepare(SplitContext(style=style, generations=generations))
        # compact lookups (zscir.index.rows); paths were resolved when the index was built, so none is resolved here
        self._rows_of_path = Lookup(*([index.realpaths] if index.realpaths is not None else []), index.paths)
        self._rows_of_key = Lookup(index.keys if index.keys is not None else [None] * len(index))
        self._rows_of_id = Lookup(index.ids)

    @property
    def identity(self) -> dict:
        return {"model": self.encoder.identity, "index": str(self.index.root), "index_kind": self.index.meta["kind"],
                "index_recall": self.index.meta["recall"],
                **({"itm_rerank": self.itm_rerank.describe()} if self.itm_rerank is not None else {})}

    def over(self, index: GalleryIndex) -> "Retriever":
        """The same model (its encoder, generations, style and ITM re-ranking) over another index, e.g. the next
        generation of the one a server watches."""
        other = Retriever(index, self.encoder, self.generations, self.style)
        other.itm_rerank = self.itm_rerank
        return other

    def use_itm_rerank(self, k: int | None) -> None:
        """Re-order each answer's top ``k`` by the backbone's ITM probability of (image, text)
        (:mod:`zscir.models.itm_rerank`; hits keep their first-stage score); None: the first stage alone."""
        rerank = ItmRerank(k) if k else None
        if rerank is not None:
            check_backbone(self.backbone)
        self.itm_rerank = rerank

    @torch.no_grad()
    def encode_references(self, images: Sequence[Image.Image], batch_size: int = 64) -> ImageFeatures:
        parts = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([self.backbone.preprocess(im) for im in images[start:start + batch_size]])
            x = x.to(self.backbone.device)
            parts.append(self.backbone.encode_image(x, with_tokens=self.encoder.needs_tokens).to("cpu"))
        pooled = torch.cat([p.pooled for p in parts])
        tokens = torch.cat([p.tokens for p in parts]) if self.encoder.needs_tokens else None
        return ImageFeatures(pooled, tokens)

    def search(self, image: ImageInput, text: str, k: int = 10, exclude_reference: bool = True,
               exclude_ids: Iterable[str] | None = None) -> list[Hit]:
        """The top ``k`` gallery images for one query; ``exclude_ids`` are left out as well."""
        return self.search_many([(image, text)], k, exclude_reference,
                                exclude_ids=None if exclude_ids is None else [exclude_ids])[0].hits

    def search_many(self, queries: Sequence[tuple[ImageInput, str]], k: int = 10, exclude_reference: bool = True,
                    batch_size: int = 64, exclude_ids: Sequence[Iterable[str] | None] | None = None,
                    timings: dict[str, float] | None = None) -> list[QueryResult]:
        """Answer many (image, text) queries, ``batch_size`` at a time (images are decoded per batch).

        ``exclude_reference``: leave out gallery images with the reference's content (or file).
        ``exclude_ids``: one collection of gallery ids (or None) per query, left out of its answer;
        an id the index does not hold is an error (a typo would silently exclude nothing).
        ``timings``, when given, gets the seconds spent per stage added to it
        (decode, image_encoder, query_encoder, search), e.g. for a server's metrics.
        """
        if k < 1:
            raise ZscirError(f"-k must be at least 1, got {k}")
        texts = [check_text(t) for _, t in queries]
        excluded_ids = self._excluded_rows_by_id(exclude_ids, len(queries))
        lap = _Laps(timings)
        fetch = k if self.itm_rerank is None else max(k, self.itm_rerank.k)   # the first stage's answers
        results = []
        for start in range(0, len(queries), batch_size):
            chunk = list(queries[start:start + batch_size])
            decoded = [read_reference(im) for im, _ in chunk]
            lap("decode")
            ref = self.encode_references([im for im, _ in decoded], batch_size)
            lap("image_encoder")
            own_rows = [self._own_rows(image, key) for (image, _), (_, key) in zip(chunk, decoded)]
            drop = [excluded_ids[start + n] | (own if exclude_reference else set()) for n, own in enumerate(own_rows)]
            if self.multi:
                ranked = self._multi_column(chunk, decoded, own_rows, ref, texts[start:start + batch_size], fetch,
                                            drop, lap)
            else:
                q = self.encoder.encode_queries(ref, texts[start:start + batch_size]).float().cpu().numpy()
                lap("query_encoder")
                scores, rows = self.index.search(q, fetch + max(map(len, drop), default=0))
                lap("search")
                ranked = [[(float(sc), int(row)) for sc, row in zip(s, r) if row >= 0 and int(row) not in own][:fetch]
                          for s, r, own in zip(scores, rows, drop)]
            ranked = self._reranked(ranked, texts[start:start + batch_size], k, lap)
            for (image, _), text, hits in zip(chunk, texts[start:start + batch_size], ranked):
                results.append(QueryResult(_label(image), text, [
                    Hit(rank, sc, self.index.ids[row], self.index.paths[row]) for rank, (sc, row) in enumerate(hits, 1)]))
        return results

    def _reranked(self, ranked: list[list[tuple[float, int]]], texts: list[str], k: int,
                  lap) -> list[list[tuple[float, int]]]:
        """Each answer's first stage (``(score, row)`` best first) with its top K re-ordered by ITM, cut to ``k``."""
        if self.itm_rerank is None:
            return ranked
        out = []
        for hits, text in zip(ranked, texts):
            probs = self.itm_rerank.probabilities(self.backbone, [text],
                                                  lambda row: (self.index.ids[row], self.index.paths[row]))
            out.append(self.itm_rerank.reorder(hits, lambda top: probs([row for _, row in top]))[:k])
        lap("itm_rerank")
        return out

    def _multi_column(self, chunk, decoded, own_rows, ref, texts, k, drop, lap) -> list[list[tuple[float, int]]]:
        """The encoder's named vectors for the chunk, ranked by its rule over the index's columns."""
        items = []
        for (image, _), (pil, key), own in zip(chunk, decoded, own_rows):
            path = None if isinstance(image, Image.Image) else str(image)
            name = self.index.ids[min(own)] if own else (os.path.basename(path) if path else "<image>")
            reference = ImageRef(name, path)
            if hasattr(self.generations, "register"):
                self.generations.register(reference, pil, key)
            items.append(reference)
        spent = getattr(self.generations, "seconds", 0.0)
        vectors = self.encoder.encode_items(ref, [QueryItem([t], (t,), r) for t, r in zip(texts, items)])
        lap("query_encoder")
        generated = getattr(self.generations, "seconds", 0.0) - spent
        lap.move("query_encoder", "generation", generated)
        ranked = rank_rows(self.encoder.rule, {n: v.float().cpu() for n, v in vectors.items()}, self.columns,
                           self.index, k, drop)
        lap("search")
        return ranked

    def refine(self, image: ImageInput, texts: Sequence[str], k: int = 10,
               exclude_reference: bool = True) -> list[QueryResult]:
        """A multi-turn dialog: one result per text, each turn's top hit the next turn's reference.

        Turn 1 searches with ``image``; every later turn with the previous turn's top hit (its gallery file).
        """
        def search(refs, turn_texts):
            return [r.hits for r in self.search_many(list(zip(refs, turn_texts)), k, exclude_reference)]

        def as_reference(hit):
            if not hit.path:
                raise ZscirError(f"index {str(self.index.root)!r} holds no file for image {hit.id!r}: "
                                 "a multi-turn refinement needs each answer's image")
            return hit.path

        (rankings,) = refine_turns(search, [image], [list(texts)], as_reference)
        refs = [_label(image)] + [hits[0].path for hits in rankings[:-1]]
        return [QueryResult(ref, text, hits) for ref, text, hits in zip(refs, texts, rankings)]

    def _excluded_rows_by_id(self, exclude_ids, n_queries: int) -> list[set[int]]:
        if exclude_ids is None:
            return [set() for _ in range(n_queries)]
        if isinstance(exclude_ids, str) or len(exclude_ids) != n_queries:
            raise ZscirError(f"exclude_ids: expected one collection of ids (or None) per query, {n_queries} in all")
        out = []
        for ids in exclude_ids:
            ids = [] if ids is None else [ids] if isinstance(ids, str) else list(ids)
            rows = [self._rows_of_id.rows(i) for i in ids]
            unknown = [i for i, r in zip(ids, rows) if not r]
            if unknown:
                raise ZscirError(f"exclude_ids: {unknown[0]!r} is not an image id of index {str(self.index.root)!r}")
            out.append({r for rs in rows for r in rs})
        return out

    def _own_rows(self, image: ImageInput, key: str | None) -> set[int]:
        """Gallery rows that are the reference: the same content, or the same file."""
        rows = set(self._rows_of_key.rows(key)) if key else set()
        if not isinstance(image, Image.Image):
            real = safe_name(os.path.realpath(image))
            rows.update(self._rows_of_path.rows(real))
        return rows


class _Laps:
    """``lap(stage)`` adds the seconds since the previous lap to ``timings[stage]`` (nothing when timings is None)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now

    def move(self, source: str, stage: str, seconds: float) -> None:
        """Count ``seconds`` of what ``source`` took as ``stage`` instead (e.g. generation within the query encoder)."""
        if self.timings is not None and seconds > 0:
            self.timings[source] = self.timings.get(source, 0.0) - seconds
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
