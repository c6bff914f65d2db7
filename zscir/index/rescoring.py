"""Multi-column queries over an index: candidates from the image column, exact re-scoring by the method's rule.

A query encoder of the one query interface (:mod:`zscir.models.composed`) gives named query vectors and a
:class:`~zscir.models.composed.Rule` over named gallery columns. Over an index:

- the columns are ``"image"``: the index's stored features (its feature store, rows in the index's order)
  normalised in fp32, as `zscir eval` normalises its gallery features; and ``"caption"``: the caption column
  ``zscir index --captioner`` stored (:mod:`zscir.index.caption_column`);
- an **exact** index scores every gallery row by the full rule (the same scores as `zscir eval`'s scorer on the
  same features); an **approximate** one asks the index for ``max(OVERFETCH * k, MIN_CANDIDATES)`` candidates
  by the rule's image part (:meth:`Rule.candidate_query`) and re-scores them exactly by the full rule;
- ties keep the index's row order (a stable sort), as `zscir eval` keeps its gallery order.
A rule with constants over all queries (LDRE's adaptive ensemble) is fitted on the queries of the call.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.features import FeatureStore
from zscir.index import search_index

OVERFETCH = 10          # candidates per wanted result from an approximate index
MIN_CANDIDATES = 200


class IndexColumns(Mapping):
    """The gallery columns of an opened index, each loaded on first use ([G, D] fp32 tensors, index row order)."""

    def __init__(self, index):
        self.index = index
        self._loaded: dict[str, torch.Tensor] = {}

    def names(self) -> tuple[str, ...]:
        return ("image",) + (("caption",) if "caption_vectors" in self.index.meta["files"] else ())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def check(self, needed) -> None:
        missing = [c for c in needed if c not in self.names()]
        if missing:
            raise ZscirError(f"index {str(self.index.root)!r} has no {missing[0]!r} column, which the query model "
                             f"reads: rebuild it with `zscir index --images DIR --out {self.index.root} "
                             "--captioner SPEC` (e.g. --captioner blip)")

    def _load(self, name: str) -> torch.Tensor:
        root, files = self.index.root, self.index.meta["files"]
        if name == "caption":
            self.check(["caption"])
            return torch.from_numpy(np.load(root / files["caption_vectors"]).astype(np.float32))
        if name != "image":
            self.check([name])
        store = FeatureStore(root / "features")
        ids = list(self.index.ids)
        feats = store.load(None if store.ids() == ids else ids, tokens=False)
        return F.normalize(torch.from_numpy(np.asarray(feats.pooled, dtype=np.float32)), dim=-1)


def rank_rows(rule, vectors: dict, columns: IndexColumns, index, k: int, drop: list[set[int]]) -> list[list]:
    """Per query, its top ``k`` (score, row) by ``rule`` over the index's columns, leaving out the rows of ``drop``."""
    columns.check(rule.columns)
    rule = rule.fit(vectors, columns)
    n = len(index)
    if index.meta["kind"] not in search_index.APPROXIMATE:
        scores = rule.score(vectors, {c: columns[c] for c in rule.columns}).numpy()
        return [_top(scores[i], np.arange(n), k, drop[i]) for i in range(len(scores))]
    want = min(n, max(OVERFETCH * k, MIN_CANDIDATES) + max(map(len, drop), default=0))
    query = F.normalize(rule.candidate_query(vectors).float(), dim=-1).numpy()
    _, candidates = index.search(query, want)
    out = []
    for i, rows in enumerate(candidates):
        rows = np.sort(rows[rows >= 0])   # row order: ties as an exact index breaks them
        one = {name: v[i:i + 1] for name, v in vectors.items()}
        scores = rule.score(one, {c: columns[c][torch.from_numpy(rows)] for c in rule.columns}).numpy()[0]
        out.append(_top(scores, rows, k, drop[i]))
    return out


def _top(scores: np.ndarray, rows: np.ndarray, k: int, drop: set[int]) -> list[tuple[float, int]]:
    order = np.argsort(-scores, kind="stable")
    return [(float(scores[j]), int(rows[j])) for j in order if int(rows[j]) not in drop][:k]
