"""What a reference image's pseudo-words are closest to: FTI4CIR's "pseudo-to-real" analysis.

    from zscir.models.explain import explain
    report = explain("ref.png", "checkpoints/shapes_fti.safetensors", k=5)

A mapping network turns the image into pseudo-words (FTI4CIR: one subject and
r attribute words; single-token methods: one). Each is a vector in the text
tower's token-embedding space; its nearest real tokens (cosine against the
whole token-embedding table, special tokens and the placeholder left out) say
what it stands for. On the shapes world, the reference's true canonical caption
(with its subject and attribute parts) is printed beside them.

`zscir explain --ref IMG [--model CKPT] [--json]` prints the same report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from zscir.errors import ZscirError


def _word(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id]).strip()


VOCABULARIES = ("all", "world")


def world_vocabulary(backbone) -> list[int]:
    """Token ids of every word the shapes world's captions and texts use (shapes, colours, sizes, ...)."""
    from zscir.world import captions, spec, texts

    phrases = [*spec.SHAPES, *spec.COLORS, *spec.BACKGROUNDS, *spec.PATTERNS,
               *(w for ws in captions.SIZE_WORDS.values() for w in ws),
               *(w for ws in captions.PATTERN_WORDS.values() for w in ws if w),
               *(w for ws in texts.NEW_SIZE_WORDS.values() for w in ws),
               *(w for ws in captions.POSITION_WORDS for w in ws)]
    return sorted({t for p in phrases for t in backbone.tokenizer.encode(p)})


def nearest_words(backbone, pseudo_words: torch.Tensor, k: int = 5, vocabulary: list[int] | None = None,
                  ) -> list[list[dict]]:
    """[n, d_tok] pseudo-words -> per word, the ``k`` nearest tokens as {"word", "token_id", "cosine"}.

    ``vocabulary``: token ids to search (None: the whole token-embedding table).
    """
    table = backbone.model.token_embedding.weight.detach().float()
    sims = F.normalize(pseudo_words.detach().float().to(table.device), dim=-1) @ F.normalize(table, dim=-1).T
    tok = backbone.tokenizer
    skip = {backbone.placeholder_token_id, *getattr(tok, "all_special_ids", [])}
    sims[:, sorted(skip)] = -2.0   # special tokens and the placeholder are no words
    if vocabulary is not None:
        keep = torch.zeros(sims.shape[1], dtype=torch.bool)
        keep[torch.tensor(sorted(set(vocabulary) - skip), dtype=torch.long)] = True
        sims[:, ~keep] = -2.0
    values, ids = sims.topk(min(k, sims.shape[1]), dim=1)
    return [[{"word": _word(tok, int(i)), "token_id": int(i), "cosine": round(float(v), 4)} for v, i in zip(vs, is_)]
            for vs, is_ in zip(values, ids)]


def world_caption(image_path: str | os.PathLike) -> dict | None:
    """The true canonical caption of a shapes-world image (found by its world's scenes.jsonl), else None."""
    path = Path(image_path).resolve()
    try:
        image_id = int(path.stem)
    except ValueError:
        return None
    for folder in path.parents:
        if (folder / "world.json").is_file() and (folder / "scenes.jsonl").is_file():
            from zscir.world.build import read_scenes
            from zscir.world.captions import canonical_caption
            from zscir.world.spec import Scene

            row = read_scenes(folder).get(image_id)
            if row is None:
                return None
            return {"world": str(folder), "image_id": image_id,
                    **canonical_caption(Scene.from_json(row)).to_json()}
    return None


def explain(ref: str, model: str | None = None, k: int = 5, device: str = "cpu", vocabulary: str = "all") -> dict:
    """The report: the model, its query prompt, each pseudo-word's nearest words, the true caption if known."""
    from zscir.resolve import default_backbone, default_model_for
    from zscir.index.queries import read_reference
    from zscir.models.query import PseudoWordQuery, load_query_encoder, training_free

    if k < 1:
        raise ZscirError(f"-k must be at least 1, got {k}")
    if vocabulary not in VOCABULARIES:
        raise ZscirError(f"unknown vocabulary {vocabulary!r} (option --vocab): expected one of {', '.join(VOCABULARIES)}")
    if model is None:
        model = default_model_for(default_backbone(device).identity)
    qe = None if training_free(str(model)) else load_query_encoder(str(model))
    if not isinstance(qe, PseudoWordQuery) or not qe.method.pseudo_words:
        raise ZscirError(f"--model {model!r}: explain needs a pseudo-word model (a mapping checkpoint such as "
                         f"checkpoints/shapes_fti.safetensors), not {getattr(qe, 'name', model)!r}")
    bb = qe.backbone
    image, _ = read_reference(ref)
    with torch.no_grad():
        feats = bb.encode_image(bb.preprocess(image).unsqueeze(0), with_tokens=qe.needs_tokens)
        pw = qe.network(feats.pooled, feats.tokens)
    slots = [("subject", pw.subject[0])] + [(f"attribute {n}", a) for n, a in enumerate(pw.attributes, 1)]
    vocab = world_vocabulary(bb) if vocabulary == "world" else None
    neighbours = nearest_words(bb, torch.stack([v for _, v in slots]), k, vocab)
    return {"ref": str(ref), "model": str(model), "method": qe.name, "backbone": bb.identity_str,
            "query_prompt": qe.method.query_prompt, "k": k, "vocabulary": vocabulary,
            "pseudo_words": [{"slot": s, "norm": round(float(v.norm()), 4), "nearest": n}
                             for (s, v), n in zip(slots, neighbours)],
            "true_caption": world_caption(ref)}


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


@click.command("explain")
@click.option("--ref", required=True, type=click.Path(dir_okay=False), help="Reference image file.")
@click.option("--model", help="Mapping checkpoint (default: the shipped FTI checkpoint of the shapes world).")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Nearest words per pseudo-word.")
@click.option("--vocab", "vocabulary", type=click.Choice(VOCABULARIES), default="all", show_default=True,
              help="Tokens searched: the whole token-embedding table, or only the shapes world's words.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def explain_command(ref, model, k, vocabulary, device, as_json):
    """Nearest vocabulary words of each pseudo-word of REF (FTI4CIR's pseudo-to-real analysis), with the
    reference's true caption when REF is a shapes-world image."""
    from zscir.backbone.options import check_device

    report = explain(ref, model, k, check_device(device), vocabulary)
    click.echo(json.dumps(report, indent=2) if as_json else text_report(report))
