"""Multi-turn composed retrieval: each turn's top answer is the next turn's reference (closed loop).

One loop, two back ends: :meth:`zscir.index.retriever.Retriever.refine` runs it over a gallery index
(what a search server calls for a dialog), `zscir eval --split multiturn` over
cached evaluation features, many sessions at once.

    sessions = refine_turns(search, references=[ref_a, ref_b], turns=[["add a red star", "remove it"], ["make it blue"]])
    # sessions[s][k]: session s's ranking at turn k (best first)
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from zscir.errors import ZscirError

Ref = TypeVar("Ref")
Item = TypeVar("Item")


def refine_turns(search: Callable[[list, list], list[list[Item]]], references: Sequence[Ref],
                 turns: Sequence[Sequence], as_reference: Callable[[Item], Ref] = lambda item: item,
                 ) -> list[list[list[Item]]]:
    """Closed-loop retrieval for several sessions, turn by turn, the sessions of one turn in one ``search`` call.

    ``search(refs, texts)``: one ranking (best first) per (reference, text); ``references``: each session's
    first reference; ``turns[s]``: session ``s``'s texts in order; ``as_reference``: a ranked item as the next
    reference (identity: items are references). A turn whose ranking is empty ends its session there.
    """
    if len(references) != len(turns):
        raise ZscirError(f"{len(references)} references but {len(turns)} sessions of turns")
    current = list(references)
    out: list[list[list[Item]]] = [[] for _ in turns]
    for k in range(max((len(t) for t in turns), default=0)):
        live = [s for s, t in enumerate(turns) if k < len(t) and len(out[s]) == k]
        if not live:
            break
        rankings = search([current[s] for s in live], [turns[s][k] for s in live])
        for s, ranking in zip(live, rankings):
            if ranking:
                out[s].append(list(ranking))
                current[s] = as_reference(ranking[0])
    return out
