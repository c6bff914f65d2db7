"""The card of a trained world captioner or editor: what it is, how it was trained, how well it does held out.

Written as Markdown next to the shipped folder (``checkpoints/<name>.md``) from the run's
record; the record itself goes to ``<name>.json`` beside it.
"""

from __future__ import annotations

from pathlib import Path

from zscir.utils.atomic import atomic_write_text
from zscir.world.model_data import OBJECT_ATTRIBUTES


def _training_lines(record: dict) -> list[str]:
    load = record.get("load_average_start"), record.get("load_average_end")
    return [
        f"- command: `{record.get('command')}`",
        f"- date: {record.get('date')}; CPU: {record.get('cpu')}, {record.get('threads')} torch threads",
        f"- {record['steps']} optimizer steps of {record['config']['batch_size']} "
        f"(stopped by {record['stopped_by']}) in {record['train_seconds']} s of training "
        f"({record['wall_seconds']} s wall with data preparation){'; resumed at step ' + str(record['resumed_at']) if record.get('resumed_at') else ''}",
        f"- machine load (1/5/15-minute load averages) at start {load[0]}, at end {load[1]} on a shared machine: "
        "a quiet machine gives more steps in the same budget",
        f"- loss: {record['first_loss']} (first 20 steps) -> {record['final_loss']} (last 20 steps); "
        f"{record['parameters'] / 1e6:.2f} M parameters",
    ]


def captioner_card(name: str, record: dict) -> str:
    held = record["heldout"]
    rows = ["| metric | held-out |", "|---|---|", f"| exact match | {held['exact']:.3f} |",
            *(f"| {k} | {held[k]:.3f} |" for k in (*OBJECT_ATTRIBUTES, "count", "background")),
            f"| parsed (canonical wording) | {held['parsed']:.3f} |"]
    examples = [f"- truth: {e['truth']}\n  caption: {e['caption']}" for e in held.get("examples", [])]
    return "\n".join([
        f"# {name}: the shapes world's captioner",
        "",
        "A tiny BLIP-2 (`Blip2ForConditionalGeneration`: ViT, Q-Former, OPT) trained from scratch on the world's "
        f"{record['unlabeled_images']} unlabeled images and their captions in canonical wording only "
        "(no split's triplets, galleries or annotations). Load it as any BLIP-2 folder: "
        f"`--captioner blip2:checkpoints/{name}` (N captions: `--decoding sample --n N` or `--decoding beam --n N`).",
        "",
        "## Held-out scenes",
        "",
        f"{held['scenes']} distinct scenes from the evaluation part of the spec space (never trained on), rendered "
        "from their own seed, greedy captions through the `blip2:` spec. Attributes are scored per true object, "
        "objects paired in caption order; count and background per scene (`zscir.world.model_data.caption_scores`).",
        "",
        *rows,
        "",
        "Examples:",
        "",
        *examples,
        "",
        "## Training",
        "",
        *_training_lines(record),
        "",
    ])


def editor_card(name: str, record: dict) -> str:
    held = record["heldout"]
    lines = []
    for style, table in held.items():
        if style == "examples":
            continue
        coarse = style == "coarse"
        lines += [f"### {style} instructions", "",
                  "| edit | n | exact |" + (" valid reading |" if coarse else ""),
                  "|---|---|---|" + ("---|" if coarse else "")]
        lines += [f"| {k} | {v['n']} | {v['exact']:.3f} |" + (f" {v['valid']:.3f} |" if coarse else "")
                  for k, v in table.items()]
        lines.append("")
    examples = [f"- {e['caption']} + \"{e['instruction']}\"\n  truth: {e['truth']}\n  edited: {e['edited']}"
                for e in held.get("examples", [])]
    return "\n".join([
        f"# {name}: the shapes world's editor",
        "",
        "A tiny Llama (`LlamaForCausalLM`, with a chat template) trained from scratch to rewrite a caption as an "
        f"instruction says: {record['examples']} examples whose instructions (fine and coarse) and edited captions the "
        f"world's own generator wrote for its {record['unlabeled_scenes']} unlabeled scenes; edits that would leave "
        "the training part of the spec space were redrawn, so no triplet or reference-target pair of any split was "
        f"seen. Load it as any local language model: `--editor hf-lm:checkpoints/{name}`.",
        "",
        "## Held-out edits",
        "",
        "One fine and one coarse edit of each of the held-out scenes (distinct evaluation-part scenes; the edited "
        "scenes lie in that part too), greedy through the `hf-lm:` spec with zscir's default edit prompt. "
        "`exact`: the edited caption equals the canonical caption of the edited scene. A coarse instruction leaves "
        "values open, so exact match there is against one reading; `valid reading` also counts an answer that "
        "describes any scene the instruction allows. An example counts under each of its edit kinds and under "
        "its number of edits.",
        "",
        *lines,
        "Examples:",
        "",
        *examples,
        "",
        "## Training",
        "",
        *_training_lines(record),
        "",
    ])


def write_card(path: str | Path, text: str) -> None:
    atomic_write_text(path, text)


def blip2_card(name: str, record: dict) -> str:
    held = record["heldout"]
    recall = ["| | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|",
              *(f"| {label} | " + " | ".join(f"{held[key][k]:.3f}" for k in ("R@1", "R@5", "R@10")) + " |"
                for label, key in (("image → text", "image_to_text"), ("text → image", "text_to_image")))]
    itm = held["itm_accuracy"]
    kinds = list(held["itc_sensitivity"])
    matching = ["| pairs | ITM accuracy |", "|---|---:|", f"| image with its own caption (match) | {itm['matched']:.3f} |",
                f"| image with another held-out scene's caption (no match) | {itm['other_scene']:.3f} |",
                f"| both, balanced | {itm['matched_vs_other']:.3f} |",
                *(f"| own caption with one {k} word changed (no match) | {itm[k]:.3f} |" for k in kinds)]
    sensitivity = ["| " + " | ".join(kinds) + " |", "|" + "---:|" * len(kinds),
                   "| " + " | ".join(f"{held['itc_sensitivity'][k]:.3f}" for k in kinds) + " |"]
    cfg = record["config"]
    return "\n".join([
        f"# {name}: the shapes world's BLIP-2 retrieval model",
        "",
        "A tiny `Blip2ForImageTextRetrieval` (ViT "
        f"{cfg['vision_layers']}x{cfg['vision_width']}, {cfg['patch_size']}-px patches, fixed 2-D sin-cos positions; "
        f"Q-Former {cfg['qformer_layers']}x{cfg['qformer_width']} with {cfg['query_tokens']} query tokens; "
        f"{cfg['embed_dim']}-d ITC space; a WordPiece tokenizer of {record['vocabulary']} tokens trained on the captions) "
        f"trained from scratch with BLIP-2's first-stage ITC and ITM losses (no ITG) on the world's "
        f"{record['unlabeled_images']} unlabeled images and their captions only (no triplet, reference-target pair, "
        "gallery or annotation of any split). Load it as any BLIP-2 retrieval folder: "
        f"`Blip2ForImageTextRetrieval.from_pretrained(\"checkpoints/{name}\")` with "
        f"`Blip2Processor.from_pretrained(\"checkpoints/{name}\")`, or `blip2:checkpoints/{name}` where zscir takes a backbone.",
        "",
        "## Held-out scenes",
        "",
        f"{held['scenes']} distinct scenes from the evaluation part of the spec space (never trained on), rendered from "
        "their own seed, canonical captions; every score comes from the loaded folder's forward "
        "(`zscir.world.train_blip2_eval`). Recall ranks by ITC (max over query tokens of the cosine similarities).",
        "",
        *recall,
        "",
        *matching,
        "",
        "ITC attribute sensitivity (share of images whose true caption scores above the same caption with one "
        "attribute word changed; as for the world's CLIP, `checkpoints/shapes_clip.md`):",
        "",
        *sensitivity,
        "",
        "## Training",
        "",
        *_training_lines(record),
        f"- final temperature {record['final_temperature']}; ITM weight {cfg['itm_weight']}; "
        f"{cfg['captions_per_image']} texts per image (the world's caption, the canonical one, rewordings)",
        "",
    ])
