"""Held-out scores of a BLIP-2 retrieval folder on the shapes world, through the model's own forward.

The folder is loaded as any BLIP-2 retrieval model (``Blip2ForImageTextRetrieval`` and
``Blip2Processor`` ``from_pretrained``); every number comes from the model's ``forward``:

- ITC recall@1/5/10, image -> text and text -> image: ``logits_per_image`` (max over query tokens
  of the cosine similarities) of each held-out image against every held-out canonical caption;
  rank = number of captions scoring strictly higher than the true one
  (:func:`zscir.world.eval_backbone.recall_at`);
- ITM accuracy (``use_image_text_matching_head=True``, argmax of the two logits): on each image
  with its own caption (should say "match"), with the caption of another held-out scene (a
  random one: "no match"), and with its caption with one attribute word changed
  (:func:`zscir.world.eval_backbone.perturbed_caption`, per kind: "no match");
- ITC attribute sensitivity as for the world's CLIP: the share of images whose true caption
  scores above the same caption with one attribute word changed.

Held-out scenes are distinct evaluation-part scenes (never trained on), rendered from their own
seed at the model's image size (:func:`zscir.world.train_captioner.heldout_images`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from zscir.world.captions import canonical_caption
from zscir.world.eval_backbone import HELDOUT_SEED, SENSITIVITY_KINDS, perturbed_caption, recall_at
from zscir.world.train_captioner import heldout_images


def load_folder(folder: str | os.PathLike):
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor  # heavy

    return Blip2ForImageTextRetrieval.from_pretrained(str(folder)).eval(), Blip2Processor.from_pretrained(str(folder))


@torch.no_grad()
def itc_matrix(model, processor, images: list, texts: list[str], batch_size: int = 100) -> torch.Tensor:
    """[images, texts] ITC scores from the model's forward, a chunk of images against all texts at a time."""
    text = processor.tokenizer(texts, padding=True, return_tensors="pt")
    rows = []
    for i in range(0, len(images), batch_size):
        pixels = processor.image_processor(images[i:i + batch_size], return_tensors="pt")["pixel_values"]
        rows.append(model(pixel_values=pixels, input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits_per_image)
    return torch.cat(rows)


@torch.no_grad()
def itc_pairs(model, processor, images: list, texts: list[str], batch_size: int = 100) -> torch.Tensor:
    """[N]: ITC score of image i with text i (the diagonal of each chunk's forward)."""
    out = []
    for i in range(0, len(images), batch_size):
        inputs = processor(images=images[i:i + batch_size], text=texts[i:i + batch_size], padding=True, return_tensors="pt")
        out.append(model(**inputs).logits_per_image.diagonal())
    return torch.cat(out)


@torch.no_grad()
def itm_match(model, processor, images: list, texts: list[str], batch_size: int = 100) -> torch.Tensor:
    """bool [N]: does the ITM head say image i and text i match (logit 1 above logit 0)?"""
    out = []
    for i in range(0, len(images), batch_size):
        inputs = processor(images=images[i:i + batch_size], text=texts[i:i + batch_size], padding=True, return_tensors="pt")
        logits = model(**inputs, use_image_text_matching_head=True).logits_per_image
        out.append(logits[:, 1] > logits[:, 0])
    return torch.cat(out)


def evaluate_blip2(folder: str | os.PathLike, num: int, seed: int = HELDOUT_SEED) -> dict:
    """Recall, ITM accuracy and ITC attribute sensitivity of the folder on ``num`` held-out scenes."""
    torch.manual_seed(0)
    model, processor = load_folder(folder)
    size = int(processor.image_processor.size["height"])
    scenes, images = heldout_images(num, size, seed)
    captions = [canonical_caption(s).text for s in scenes]
    similarity = itc_matrix(model, processor, images, captions)
    rng = np.random.default_rng([seed, 0x4F54484552])
    other = [(i + int(rng.integers(1, num))) % num for i in range(num)] if num > 1 else [0]
    itm = {"matched": itm_match(model, processor, images, captions),
           "other_scene": ~itm_match(model, processor, images, [captions[j] for j in other])}
    sensitivity = {}
    for k, kind in enumerate(SENSITIVITY_KINDS):
        kind_rng = np.random.default_rng([seed, 0x53454E53, k])
        wrong = [perturbed_caption(s, kind, kind_rng) for s in scenes]
        itm[kind] = ~itm_match(model, processor, images, wrong)
        wrong_scores = itc_pairs(model, processor, images, wrong)
        sensitivity[kind] = round(float((similarity.diagonal() > wrong_scores).float().mean()), 4)
    itm_accuracy = {k: round(float(v.float().mean()), 4) for k, v in itm.items()}
    itm_accuracy["matched_vs_other"] = round((itm_accuracy["matched"] + itm_accuracy["other_scene"]) / 2, 4)
    return {"scenes": num, "seed": seed, "image_to_text": recall_at(similarity), "text_to_image": recall_at(similarity.T),
            "itm_accuracy": itm_accuracy, "itc_sensitivity": sensitivity,
            "examples": [{"caption": captions[i], "itc_true": round(float(similarity[i, i]), 4)} for i in range(min(3, num))]}
