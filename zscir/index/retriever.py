"""Composed retrieval over a gallery index: (reference image, modification text) -> ranked images.

    r = Retriever.load("my_index", "checkpoints/shapes_fti.safetensors")
    hits = r.search("ref.png", "in red with long sleeves", k=10)   # [Hit(rank, score, id, path)]

The query encoder (zscir.models.query) turns the reference's features and the
text into one normalised vector; the index ranks the gallery by cosine
similarity. The reference image itself is left out of its own answer when it
is part of the gallery (as CIRR's protocol does): "this one, but red" never
wants "this one" back.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from PIL import Image

from zscir.backbone import ImageFeatures
from zscir.errors import ZscirError
from zscir.index.gallery import GalleryIndex
from zscir.index.queries import ImageInput, check_text, load_reference


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
    return "<image>" if isinstance(image, Image.Image) else str(image)


class Retriever:
    def __init__(self, index: GalleryIndex, encoder):
        index.check_backbone(encoder.backbone, what=f"the query model ({encoder.name})")
        self.index, self.encoder, self.backbone = index, encoder, encoder.backbone
        self._row_of_path = {os.path.realpath(p): n for n, p in enumerate(index.paths) if p}

    @classmethod
    def load(cls, index_dir: str | os.PathLike | GalleryIndex, model: str | None = None, backbone=None) -> "Retriever":
        """Open ``index_dir`` (or use an opened index) and the query ``model`` (a checkpoint path or a baseline name).

        Without ``model``: the model the index was built for (``zscir index --model``),
        else the shipped FTI checkpoint trained on the index's backbone, else the
        image+text sum baseline. A baseline
        without ``backbone`` uses the backbone recorded in the index.
        """
        from zscir.index.defaults import default_model_for, load_index_backbone
        from zscir.models.query import BASELINES, load_query_encoder

        index = index_dir if isinstance(index_dir, GalleryIndex) else GalleryIndex.open(index_dir)
        if model is None:
            recorded = index.meta.get("model")
            model = recorded if recorded and os.path.exists(recorded) else default_model_for(index.fingerprint["backbone"])
        if model in BASELINES and backbone is None:
            backbone = load_index_backbone(index)
        return cls(index, load_query_encoder(str(model), backbone))

    @property
    def identity(self) -> dict:
        return {"model": self.encoder.identity, "index": str(self.index.root), "index_kind": self.index.meta["kind"],
                "index_recall": self.index.meta["recall"]}

    @torch.no_grad()
    def encode_references(self, images: Sequence[Image.Image], batch_size: int = 64) -> ImageFeatures:
        parts = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([self.backbone.preprocess(im) for im in images[start:start + batch_size]])
            parts.append(self.backbone.encode_image(x, with_tokens=self.encoder.needs_tokens).to("cpu"))
        pooled = torch.cat([p.pooled for p in parts])
        tokens = torch.cat([p.tokens for p in parts]) if self.encoder.needs_tokens else None
        return ImageFeatures(pooled, tokens)

    def search(self, image: ImageInput, text: str, k: int = 10, exclude_reference: bool = True) -> list[Hit]:
        return self.search_many([(image, text)], k, exclude_reference)[0].hits

    def search_many(self, queries: Sequence[tuple[ImageInput, str]], k: int = 10, exclude_reference: bool = True,
                    batch_size: int = 64, timings: dict[str, float] | None = None) -> list[QueryResult]:
        """Answer many (image, text) queries, ``batch_size`` at a time (images are decoded per batch).

        ``timings``, when given, gets the seconds spent per stage added to it
        (decode, image_encoder, query_encoder, search), e.g. for a server's metrics.
        """
        if k < 1:
            raise ZscirError(f"-k must be at least 1, got {k}")
        texts = [check_text(t) for _, t in queries]
        extra = 1 if exclude_reference else 0  # the reference may take one of the k places: ask for one more
        lap = _Laps(timings)
        results = []
        for start in range(0, len(queries), batch_size):
            chunk = list(queries[start:start + batch_size])
            images = [load_reference(im) for im, _ in chunk]
            lap("decode")
            ref = self.encode_references(images, batch_size)
            lap("image_encoder")
            q = self.encoder.encode_queries(ref, texts[start:start + batch_size]).float().cpu().numpy()
            lap("query_encoder")
            scores, rows = self.index.search(q, k + extra)
            lap("search")
            for (image, _), text, s, r in zip(chunk, texts[start:start + batch_size], scores, rows):
                own = self._own_row(image) if exclude_reference else None
                hits = [(float(sc), int(row)) for sc, row in zip(s, r) if row >= 0 and row != own][:k]
                results.append(QueryResult(_label(image), text, [
                    Hit(rank, sc, self.index.ids[row], self.index.paths[row]) for rank, (sc, row) in enumerate(hits, 1)]))
        return results

    def _own_row(self, image: ImageInput) -> int | None:
        if isinstance(image, Image.Image):
            return None
        return self._row_of_path.get(os.path.realpath(image))


class _Laps:
    """``lap(stage)`` adds the seconds since the previous lap to ``timings[stage]`` (nothing when timings is None)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now
