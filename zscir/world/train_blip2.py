"""Train the world's BLIP-2 retrieval model on its unlabeled images and their captions (`zscir world train-blip2`).

Data: the world's *unlabeled* images only (``unlabeled/images``, ``unlabeled/captions.jsonl``;
no split's triplets, reference-target pairs, galleries or annotations). Each image has
``captions_per_image`` texts of its own scene: the world's caption from ``captions.jsonl``,
the canonical caption (the wording the held-out evaluation uses) and rewordings
(:func:`zscir.world.captions.random_caption`), as the world's CLIP trains on 4 per scene.
Images are decoded once and normalised as the saved image processor does (checked at the
start). A step draws ``batch_size`` distinct images and one of each image's texts from
(seed, step); the ITM negatives come from a generator seeded the same way, so a resumed run
repeats the uninterrupted one (:func:`zscir.world.model_loop.train_loop`).

Losses: :mod:`zscir.world.train_blip2_losses` (ITC with max over query tokens and a learnable
temperature, ITM with hard negatives). Model and tokenizer: :mod:`zscir.world.train_blip2_model`.
Held-out evaluation: :mod:`zscir.world.train_blip2_eval`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.utils.jsonl import read_jsonl
from zscir.world.build import CAPTIONS
from zscir.world.captions import canonical_caption, random_caption
from zscir.world.model_data import unlabeled_images
from zscir.world.model_loop import train_loop
from zscir.world.train_blip2_losses import Stage1, stage1_loss
from zscir.world.train_blip2_model import Blip2WorldConfig, build_model, train_qformer_tokenizer
from zscir.world.train_captioner import PixelNormaliser, load_images, save_folder


def image_texts(world: str | os.PathLike, images, per_image: int, seed: int) -> list[list[str]]:
    """For each unlabeled image: its caption from captions.jsonl, its canonical caption, then rewordings."""
    if per_image < 2:
        raise ZscirError(f"captions per image {per_image}: expected at least 2 (the world's and the canonical one)")
    given = {int(row["id"]): row["caption"] for _, row in read_jsonl(os.path.join(world, CAPTIONS))}
    rng = np.random.default_rng([seed, 0x42324350])
    return [[given[im.id], canonical_caption(im.scene).text]
            + [random_caption(im.scene, rng).text for _ in range(per_image - 2)] for im in images]


def tokenize_texts(tokenizer, texts: list[list[str]], max_tokens: int) -> torch.Tensor:
    """int64 [N, per_image, L] input ids, padded with the pad id (0) to the longest text."""
    flat = [t for row in texts for t in row]
    ids = tokenizer(flat, padding=True, return_tensors="pt")["input_ids"]
    if ids.shape[1] > max_tokens:
        raise ZscirError(f"a caption has {ids.shape[1]} tokens, more than the Q-Former's {max_tokens} positions")
    return ids.view(len(texts), len(texts[0]), -1)


def step_batch(cfg: Blip2WorldConfig, tokens: torch.Tensor, pad_id: int, step: int):
    """(image indices [B], input ids [B, L], attention mask [B, L], ITM generator) of ``step``."""
    rng = np.random.default_rng([cfg.seed, 0x42544348, step])
    idx = rng.choice(len(tokens), size=cfg.batch_size, replace=False)
    which = rng.integers(tokens.shape[1], size=cfg.batch_size)
    ids = tokens[torch.from_numpy(idx), torch.from_numpy(which)]
    mask = (ids != pad_id).long()
    width = int(mask.sum(dim=1).max())
    generator = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, 0x49544D, step]).integers(2**62)))
    return idx, ids[:, :width], mask[:, :width], generator


def train_blip2(world: str | os.PathLike, out: str | os.PathLike, run_dir: str | os.PathLike,
                cfg: Blip2WorldConfig = Blip2WorldConfig(), log: Callable[[str], None] = print) -> dict:
    """Train on ``world``'s unlabeled images; save model + processor to ``out``; return the run's record."""
    start = time.time()
    torch.set_num_threads(cfg.threads)
    images = unlabeled_images(world)
    if len(images) < cfg.batch_size:
        raise ZscirError(f"--batch-size {cfg.batch_size}: the world has only {len(images)} unlabeled images")
    texts = image_texts(world, images, cfg.captions_per_image, cfg.seed)
    tokenizer = train_qformer_tokenizer(t for row in texts for t in row)
    pixels_u8 = load_images([im.path for im in images])
    blip, processor = build_model(cfg, tokenizer, pixels_u8.shape[1])
    tokens = tokenize_texts(processor.tokenizer, texts, cfg.max_text_tokens)
    normalise = PixelNormaliser(processor.image_processor)
    normalise.check(processor.image_processor, pixels_u8[:4])
    model = Stage1(blip, cfg.init_temp)
    parameters = sum(p.numel() for p in blip.parameters())
    log(f"{len(images)} unlabeled images {tuple(pixels_u8.shape[1:])}, {tokens.shape[1]} texts each of up to "
        f"{tokens.shape[2]} tokens (vocabulary {len(processor.tokenizer)}), model of {parameters / 1e6:.2f} M parameters")
    pad_id = processor.tokenizer.pad_token_id

    def loss_at(step: int):
        idx, ids, mask, generator = step_batch(cfg, tokens, pad_id, step)
        loss, parts = stage1_loss(model, normalise(pixels_u8[idx]), ids, mask, generator, cfg.itm_weight)
        if (step + 1) % 50 == 0:
            log(f"  step {step + 1}: itc {parts['itc']:.3f}, itm {parts['itm']:.3f}, temperature {parts['temp']:.4f}")
        return loss

    data_seconds = time.time() - start
    record = train_loop(model, loss_at, cfg.budget(), run_dir, {"world": str(world), **asdict(cfg)}, log)
    save_folder(blip, processor, out)
    record.update({"config": asdict(cfg), "world": str(world), "unlabeled_images": len(images),
                   "text_tokens_max": int(tokens.shape[2]), "vocabulary": len(processor.tokenizer),
                   "final_temperature": round(float(model.temp.detach()), 4), "data_seconds": round(data_seconds),
                   "parameters": parameters, "wall_seconds": round(time.time() - start)})
    log(f"saved to {out} after {record['steps']} steps (final loss {record['final_loss']})")
    return record
