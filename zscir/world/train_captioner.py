"""Train the world's captioner: a tiny BLIP-2 (ViT, Q-Former, OPT) on the world's unlabeled images.

The model is transformers' ``Blip2ForConditionalGeneration`` with a small config and a
byte-level BPE tokenizer trained on the world's captions (:mod:`zscir.world.model_tokenizer`),
saved with ``save_pretrained`` together with its ``Blip2Processor``: the folder loads
through the generic ``blip2:PATH`` captioner spec like any BLIP-2 (greedy, beam or
N sampled captions through :class:`zscir.generation.base.Decoding`).

Training sees exactly what the captioner sees at inference: the processor's input ids for
the empty prompt (the query-token placeholders, then ``<s>``), followed by the caption's
tokens and ``</s>``; the loss covers the caption and ``</s>``. Images are decoded once and
normalised as the saved image processor does (checked at the start of a run).

Held-out scores (:func:`evaluate_captioner`) caption distinct evaluation-part scenes
rendered from their own seed through the loaded spec, and compare with
:func:`zscir.world.model_data.caption_scores`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from zscir.errors import ZscirError
from zscir.generation.base import Decoding
from zscir.generation.registry import build_captioner
from zscir.world.captions import canonical_caption, random_caption
from zscir.world.eval_backbone import HELDOUT_SEED, heldout_scenes
from zscir.world.model_data import caption_scores, unlabeled_images
from zscir.world.model_loop import RunConfig, train_loop
from zscir.world.model_tokenizer import special_ids, train_tokenizer
from zscir.world.render import render_image

HELDOUT_RENDER_SEED = 9_000_001  # renderings of held-out scenes: apart from every world's seeds
EVAL_MAX_NEW_TOKENS = 64
INIT_STD = 0.02


@dataclass(frozen=True)
class CaptionerConfig(RunConfig):
    batch_size: int = 32
    # the Q-Former is post-LN BERT: at 2e-3 the held-out count was still at chance (0.23) after 2000 steps, at
    # 5e-4 it was 0.89 after 500 and 1.0 after 1000 (the first thing the image must say beyond the background)
    lr: float = 5e-4
    # one patch per cell of the world's 3 x 3 grid (72 px images): a token per object; 9 query tokens
    patch_size: int = 24
    vision_width: int = 96
    vision_layers: int = 2
    qformer_width: int = 64
    qformer_layers: int = 2
    query_tokens: int = 9
    text_width: int = 96
    text_layers: int = 2
    vocab_size: int = 1024


# model size and budget by name: the default aims at 15 minutes on 2 cores, tiny at seconds (tests)
PRESETS = {"default": CaptionerConfig(),
           "tiny": CaptionerConfig(steps=40, seconds=600.0, batch_size=8, lr=3e-3, warmup_steps=5, save_every=10,
                                   vision_width=32, vision_layers=1, qformer_width=32, qformer_layers=1,
                                   query_tokens=4, text_width=32, text_layers=1, vocab_size=400)}


def build_model(cfg: CaptionerConfig, tokenizer, image_size: int):
    """A randomly initialised tiny BLIP-2 and its processor (the processor adds the ``<image>`` token).

    transformers' BLIP-2 is made to be loaded, not trained from scratch: its vision config's default
    ``initializer_range`` is 1e-10 (a vision tower of zeros, through which the image barely reaches the
    captions) and its query tokens start at zero (identical queries; the Q-Former's LayerNorm of a zero
    vector has gradients of ~1e17). Here the vision tower starts at the usual std 0.02 and the query
    tokens at N(0, 0.02), as BLIP-2 itself initialises them; dropout is off (a small model, one pass).
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor  # heavy

    if image_size % cfg.patch_size:
        raise ZscirError(f"--patch-size {cfg.patch_size}: must divide the world's image size {image_size}")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tokenizer, num_query_tokens=cfg.query_tokens)
    ids = {**special_ids(tokenizer), "vocab_size": len(tokenizer)}
    heads = 4
    config = Blip2Config(
        vision_config=dict(hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=heads, image_size=image_size,
                           patch_size=cfg.patch_size, initializer_range=INIT_STD),
        qformer_config=dict(hidden_size=cfg.qformer_width, num_hidden_layers=cfg.qformer_layers,
                            num_attention_heads=heads, intermediate_size=4 * cfg.qformer_width,
                            encoder_hidden_size=cfg.vision_width, cross_attention_frequency=1,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=dict(model_type="opt", hidden_size=cfg.text_width, ffn_dim=4 * cfg.text_width,
                         num_hidden_layers=cfg.text_layers, num_attention_heads=heads, max_position_embeddings=256,
                         word_embed_proj_dim=cfg.text_width, dropout=0.0, **ids),
        num_query_tokens=cfg.query_tokens, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(cfg.seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, INIT_STD)
    return model, processor


def load_images(paths: list[Path]) -> np.ndarray:
    """uint8 [N, H, W, 3] of the images (all of one size)."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if len({a.shape for a in arrays}) != 1:
        raise ZscirError(f"the world's unlabeled images differ in size: {sorted({a.shape for a in arrays})}")
    return np.stack(arrays)


class PixelNormaliser:
    """uint8 images -> the saved image processor's ``pixel_values`` (same size: rescale and normalise)."""

    def __init__(self, image_processor):
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def __call__(self, images_u8: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def check(self, image_processor, images_u8: np.ndarray) -> None:
        want = image_processor(images=[Image.fromarray(a) for a in images_u8], return_tensors="pt")["pixel_values"]
        diff = float((want - self(images_u8)).abs().max())
        if diff > 1e-4:
            raise ZscirError(f"training pixels differ from the image processor's by {diff:g}")


def caption_batches(cfg: CaptionerConfig, prefix: list[int], captions: list[list[int]], pad_id: int):
    """``batch(step)`` -> (indices, input_ids, attention_mask, labels) of a step, drawn from (seed, step)."""

    def batch(step: int):
        idx = np.random.default_rng([cfg.seed, 0x43415053, step]).integers(len(captions), size=cfg.batch_size)
        rows = [prefix + captions[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            labels[r, len(prefix):len(row)] = torch.tensor(row[len(prefix):])
        return idx, ids, mask, labels

    return batch


def train_captioner(world: str | os.PathLike, out: str | os.PathLike, run_dir: str | os.PathLike,
                    cfg: CaptionerConfig = CaptionerConfig(), log: Callable[[str], None] = print) -> dict:
    """Train on ``world``'s unlabeled images; save model + processor to ``out``; return the run's record."""
    start = time.time()
    torch.set_num_threads(cfg.threads)
    images = unlabeled_images(world)
    targets = [canonical_caption(im.scene).text for im in images]
    # the tokenizer also sees the world's varied wording, as a captioner's text side would
    rng = np.random.default_rng([cfg.seed, 0x544F4B])
    tokenizer = train_tokenizer(targets + [random_caption(im.scene, rng).text for im in images], cfg.vocab_size)
    pixels_u8 = load_images([im.path for im in images])
    model, processor = build_model(cfg, tokenizer, pixels_u8.shape[1])
    normalise = PixelNormaliser(processor.image_processor)
    normalise.check(processor.image_processor, pixels_u8[:4])
    prefix = processor(images=[Image.fromarray(pixels_u8[0])], text=[""])["input_ids"][0]
    captions = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    log(f"{len(images)} unlabeled images {tuple(pixels_u8.shape[1:])}, captions of {min(map(len, captions))}-"
        f"{max(map(len, captions))} tokens, model of {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    batch = caption_batches(cfg, list(prefix), captions, tokenizer.pad_token_id)

    def loss_at(step: int):
        idx, ids, mask, labels = batch(step)
        return model(pixel_values=normalise(pixels_u8[idx]), input_ids=ids, attention_mask=mask, labels=labels).loss

    data_seconds = time.time() - start
    record = train_loop(model, loss_at, cfg.budget(), run_dir, {"world": str(world), **asdict(cfg)}, log)
    save_folder(model, processor, out)
    record.update({"config": asdict(cfg), "world": str(world), "unlabeled_images": len(images),
                   "caption_tokens_max": max(map(len, captions)), "data_seconds": round(data_seconds),
                   "parameters": sum(p.numel() for p in model.parameters()), "wall_seconds": round(time.time() - start)})
    log(f"saved to {out} after {record['steps']} steps (final loss {record['final_loss']})")
    return record


def save_folder(model, processor_or_tokenizer, out: str | os.PathLike) -> Path:
    """``save_pretrained`` of both into ``out`` (safetensors), written beside and then renamed into place."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        for p in tmp.iterdir():
            p.unlink()
    model.save_pretrained(tmp, safe_serialization=True)
    processor_or_tokenizer.save_pretrained(tmp)
    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        tmp.rename(out)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(out)
    return out


def heldout_images(num: int, size: int, seed: int = HELDOUT_SEED):
    """(scenes, images): ``num`` distinct evaluation-part scenes, rendered from their own seed."""
    scenes = heldout_scenes(num, seed)
    return scenes, [render_image(s, HELDOUT_RENDER_SEED, i, size) for i, s in enumerate(scenes)]


def evaluate_captioner(spec: str, num: int, batch_size: int = 50, seed: int = HELDOUT_SEED) -> dict:
    """Greedy captions of held-out scenes through the generic captioner ``spec``: exact match, per attribute.

    Scenes are rendered at the size of the model's image processor (the world's image size).
    """
    captioner = build_captioner(spec, decoding=Decoding(max_new_tokens=EVAL_MAX_NEW_TOKENS), device="cpu")
    size = int(captioner.processor.image_processor.size["height"])
    scenes, images = heldout_images(num, size, seed)
    texts = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        texts += captioner.caption(list(range(i, i + len(chunk))), chunk)
    scores = caption_scores(scenes, texts)
    scores["examples"] = [{"truth": canonical_caption(s).text, "caption": t} for s, t in zip(scenes[:5], texts[:5])]
    return scores
