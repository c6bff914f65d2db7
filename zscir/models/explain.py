"""What a reference image's pseudo-words are closest to: FTI4CIR's "pseudo-to-real" analysis.

A mapping network turns the image into pseudo-words (FTI4CIR: one subject and
r attribute words; single-token methods: one). Each is a vector in the text
tower's token-embedding space; its nearest real tokens (cosine against the
whole token-embedding table, special tokens, the placeholder and tokens that
decode to no printable text (byte pieces of a UTF-8 character) left out, or
against a registered vocabulary's tokens) say what it stands for. Where a
registered lookup knows the reference's true caption (a shapes-world image:
its canonical caption with its subject and attribute parts), it is reported
beside them.

`zscir explain --ref IMG [--model CKPT] [--json]` (:mod:`zscir.models.explain_cli`) prints the report.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.models.query import PseudoWordQuery
from zscir.utils.registry import Entries


def _word(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id]).strip()


def _is_text(word: str) -> bool:
    """A token that reads as text: not empty, printable, and no broken byte (a BPE piece of a UTF-8 character
    decodes to U+FFFD on its own)."""
    return bool(word) and word.isprintable() and "\ufffd" not in word


@functools.lru_cache(maxsize=4)
def _not_words(tokenizer, size: int) -> tuple[int, ...]:
    """The ids < ``size`` of ``tokenizer`` that decode to no printable text (searched once per tokenizer)."""
    return tuple(i for i in range(size) if not _is_text(_word(tokenizer, i)))


# --vocab NAME -> (backbone) -> the token ids searched, by import path; "all": the whole token-embedding table
VOCABULARIES: Entries = Entries({"world": "zscir.world.plugins_models:world_vocabulary"})
VOCABULARY_CHOICES = ("all", *VOCABULARIES)
# lookups of a reference image's true caption: (image path) -> {"caption", "subject", "attribute", ...} or None
TRUE_CAPTIONS: Entries = Entries({"shapes": "zscir.world.plugins_models:world_caption"})


def check_options(k: int, vocabulary: str) -> None:
    if k < 1:
        raise ZscirError(f"-k must be at least 1, got {k}")
    if vocabulary not in VOCABULARY_CHOICES:
        raise ZscirError(f"unknown vocabulary {vocabulary!r} (option --vocab): expected one of "
                         f"{', '.join(VOCABULARY_CHOICES)}")


def require_pseudo_words(qe, model: str) -> PseudoWordQuery:
    """``qe`` if it is a pseudo-word model, else a one-line error naming ``--model``."""
    if not isinstance(qe, PseudoWordQuery) or not qe.method.pseudo_words:
        raise ZscirError(f"--model {model!r}: explain needs a pseudo-word model (a mapping checkpoint such as "
                         f"checkpoints/shapes_fti.safetensors), not {getattr(qe, 'name', model)!r}")
    return qe


def vocabulary_ids(backbone, vocabulary: str) -> list[int] | None:
    """The token ids the ``--vocab`` choice searches (None: the whole table)."""
    return None if vocabulary == "all" else VOCABULARIES[vocabulary](backbone)


def true_caption(ref) -> dict | None:
    """The first registered lookup's true caption of the image file ``ref``, else None."""
    for lookup in TRUE_CAPTIONS.values():
        found = lookup(ref)
        if found is not None:
            return found
    return None


def nearest_words(backbone, pseudo_words: torch.Tensor, k: int = 5, vocabulary: list[int] | None = None,
                  ) -> list[list[dict]]:
    """[n, d_tok] pseudo-words -> per word, the ``k`` nearest tokens as {"word", "token_id", "cosine"}.

    ``vocabulary``: token ids to search (None: the whole token-embedding table).
    """
    table = backbone.model.token_embedding.weight.detach().float()
    sims = F.normalize(pseudo_words.detach().float().to(table.device), dim=-1) @ F.normalize(table, dim=-1).T
    tok = backbone.tokenizer
    skip = {backbone.placeholder_token_id, *getattr(tok, "all_special_ids", []), *_not_words(tok, table.shape[0])}
    sims[:, sorted(skip)] = -2.0   # special tokens, the placeholder and broken byte pieces are no words
    if vocabulary is not None:
        keep = torch.zeros(sims.shape[1], dtype=torch.bool)
        keep[torch.tensor(sorted(set(vocabulary) - skip), dtype=torch.long)] = True
        sims[:, ~keep] = -2.0
    values, ids = sims.topk(min(k, sims.shape[1]), dim=1)
    return [[{"word": _word(tok, int(i)), "token_id": int(i), "cosine": round(float(v), 4)} for v, i in zip(vs, is_)]
            for vs, is_ in zip(values, ids)]


def pseudo_word_report(qe, image, ref: str, model: str, k: int = 5, vocabulary: str = "all") -> dict:
    """The report of query encoder ``qe`` (a pseudo-word model) on the RGB ``image`` (file ``ref``): the model, its
    query prompt, each pseudo-word's nearest words, the true caption if known."""
    check_options(k, vocabulary)
    require_pseudo_words(qe, model)
    bb = qe.backbone
    with torch.no_grad():
        feats = bb.encode_image(bb.preprocess(image).unsqueeze(0), with_tokens=qe.needs_tokens)
        pw = qe.network(feats.pooled, feats.tokens)
    slots = [("subject", pw.subject[0])] + [(f"attribute {n}", a) for n, a in enumerate(pw.attributes, 1)]
    neighbours = nearest_words(bb, torch.stack([v for _, v in slots]), k, vocabulary_ids(bb, vocabulary))
    return {"ref": str(ref), "model": str(model), "method": qe.name, "backbone": bb.identity_str,
            "query_prompt": qe.method.query_prompt, "k": k, "vocabulary": vocabulary,
            "pseudo_words": [{"slot": s, "norm": round(float(v.norm()), 4), "nearest": n}
                             for (s, v), n in zip(slots, neighbours)],
            "true_caption": true_caption(ref)}


def text_report(report: dict) -> str:
    lines = [f"{report['ref']}: {report['method']} pseudo-words ({Path(report['model']).name}, "
             f"prompt \"{report['query_prompt']}\"), nearest {report['k']} tokens by cosine "
             f"({report['vocabulary']} vocabulary)"]
    width = max(len(p["slot"]) for p in report["pseudo_words"])
    for p in report["pseudo_words"]:
        words = ", ".join(f"{w['word']} {w['cosine']:.2f}" for w in p["nearest"])
        lines.append(f"  {p['slot'].ljust(width)}  {words}")
    cap = report.get("true_caption")
    if cap:
        lines += [f"true caption (world image {cap['image_id']}): {cap['caption']}",
                  f"  subject:   {cap['subject']}", f"  attribute: {cap['attribute']}"]
    return "\n".join(lines)
