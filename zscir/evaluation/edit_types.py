"""mAP@10 per edit type: a split's queries grouped by the kinds of edit they ask for.

A benchmark whose queries carry their edits (the shapes world) records each query's
edit kinds in ``EvalSplit.notes[EDIT_KINDS_NOTE]`` (a list of kinds per query, in
order). Two groupings, both reported:

- ``single``: the queries with exactly one edit, grouped by that edit's kind
  (the whole score is that one edit's);
- ``contains``: every query, counted once under each distinct kind it contains
  (a colour + shape query is in "color" and in "shape").

A cell is the mean of the rows' stored per-query AP@10 (:mod:`zscir.evaluation.per_query`) over the group.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zscir.evaluation.per_query import PER_QUERY_METRIC, scores_of

EDIT_KINDS_NOTE = "edit_kinds"


def _single(kinds: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for q, ks in enumerate(kinds):
        if len(ks) == 1:
            groups.setdefault(ks[0], []).append(q)
    return groups


def _contains(kinds: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for q, ks in enumerate(kinds):
        for k in dict.fromkeys(ks):
            groups.setdefault(k, []).append(q)
    return groups


GROUPINGS = {"single": _single, "contains": _contains}
GROUPING_NOTES = {"single": "queries with one edit, by its kind",
                  "contains": "every query under each kind it contains"}


def groups(kinds: Sequence[Sequence[str]], grouping: str) -> dict[str, list[int]]:
    """Edit kind -> indices of its queries (kinds sorted by name)."""
    found = GROUPINGS[grouping](kinds)
    return {k: found[k] for k in sorted(found)}


def split_table(kinds: Sequence[Sequence[str]], rows: dict[str, np.ndarray]) -> dict:
    """``{grouping: {"queries": {kind: n}, "rows": {row: {kind: mAP@10}}}}`` for one split."""
    out = {}
    for grouping in GROUPINGS:
        g = groups(kinds, grouping)
        out[grouping] = {"queries": {k: len(ix) for k, ix in g.items()},
                         "rows": {name: {k: float(ap[ix].mean()) for k, ix in g.items()} for name, ap in rows.items()}}
    return out


def by_edit(results: dict, splits) -> dict:
    """The per-edit-type tables of a run: ``{"metric", "groupings", "splits": {split: split_table}}``."""
    out = {"metric": PER_QUERY_METRIC, "groupings": GROUPING_NOTES, "splits": {}}
    for split in splits:
        kinds = split.notes.get(EDIT_KINDS_NOTE)
        if kinds is None:
            continue
        rows = {m["name"]: scores_of(m["splits"][split.name]) for m in results["models"] if split.name in m["splits"]}
        rows = {name: ap for name, ap in rows.items() if ap is not None}
        if rows:
            out["splits"][split.name] = split_table(kinds, rows)
    return out if out["splits"] else {}
