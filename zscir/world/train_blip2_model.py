"""The world's BLIP-2 retrieval model: its sizes, its Q-Former tokenizer, and how it is built.

A ``Blip2ForImageTextRetrieval`` (ViT, Q-Former with ITC projections and an ITM head) with a
small config, and a BERT-style WordPiece tokenizer trained on the world's unlabeled captions:
lower-cased, ``[CLS] text [SEP]``, ``[PAD]`` = 0 (the Q-Former's pad id); words it never saw
are split into known pieces, never dropped. The two are saved together with
``save_pretrained`` (safetensors) and a ``Blip2Processor``, so the folder loads like any
BLIP-2 retrieval model (``Blip2ForImageTextRetrieval.from_pretrained`` and
``Blip2Processor.from_pretrained``).

The processor is built without ``num_query_tokens`` and the config without an
``image_token_index``: input ids are the caption's own tokens, with or without images, and
the model reads them as they are (a config with an image token index would cut the first
``num_query_tokens`` ids off every text).

The ViT's position table starts as a 2-D sin-cos table and stays fixed, as the world's CLIP
does (``zscir-shapes-vit``): with a learnable table, a tiny contrastive model on the world
was measured position-blind (``checkpoints/shapes_clip.md``, runs 1-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.world.model_loop import RunConfig

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
HEADS = 4


@dataclass(frozen=True)
class Blip2WorldConfig(RunConfig):
    seconds: float = 1020.0     # 17 minutes of training: with data and the held-out evaluation, 20 on 2 cores
    batch_size: int = 96
    lr: float = 1e-3
    patch_size: int = 12
    vision_width: int = 128
    vision_layers: int = 4
    qformer_width: int = 128
    qformer_layers: int = 2
    query_tokens: int = 8
    embed_dim: int = 128        # the ITC space (config.image_text_hidden_size)
    max_text_tokens: int = 128  # the Q-Former's position table (captions reach about 55 tokens)
    captions_per_image: int = 4  # the world's caption, the canonical one and rewordings of the same scene
    # BLIP-2's learnable temperature (clamped to [0.001, 0.5]) starts at 0.07; here at 0.02, as the world's CLIP starts
    # its logit scale at 50: from scratch every image and text begins with nearly the same features, and the sharper
    # softmax leaves that plateau sooner (tiny preset, measured: about step 35 instead of 55)
    init_temp: float = 0.02
    itm_weight: float = 1.0
    # init std of every weight (transformers' ViT default, 1e-10, is for a pretrained frozen ViT: from scratch it gives
    # every image the same features and no gradient)
    init_std: float = 0.02


PRESETS = {"default": Blip2WorldConfig(),
           "tiny": Blip2WorldConfig(steps=60, seconds=600.0, batch_size=8, lr=5e-3, warmup_steps=5, save_every=10,
                                    vision_width=32, vision_layers=1, qformer_width=32, qformer_layers=1,
                                    query_tokens=4, embed_dim=32, max_text_tokens=96)}


def train_qformer_tokenizer(texts: Iterable[str]):
    """A BERT-style WordPiece tokenizer (transformers fast tokenizer) whose vocabulary is read off ``texts``.

    Every word of the texts is a token of its own and every character they use is a token with and
    without the ``##`` continuation prefix, so any other word spelled with those characters reads as
    pieces. Tokens are numbered in sorted order after the specials: the same texts give the same ids in
    every process (a trained WordPiece vocabulary breaks ties differently from one process to the next).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # heavy
    from transformers import PreTrainedTokenizerFast

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = {c for w in words for c in w}
    tokens = sorted(words | chars | {"##" + c for c in chars})
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate((*SPECIALS, *tokens))}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def sincos_table(grid: int, width: int) -> torch.Tensor:
    """[1 + grid*grid, width]: a zero row for the class token, then 2-D sin-cos rows (half for y, half for x)."""
    if width % 4:
        raise ZscirError(f"vision width {width}: must be a multiple of 4 for a 2-D sin-cos position table")
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]
        parts += [np.sin(angles), np.cos(angles)]
    table = np.concatenate([np.zeros((1, width)), np.concatenate(parts, axis=1)])
    return torch.tensor(table, dtype=torch.float32)


def build_model(cfg: Blip2WorldConfig, tokenizer, image_size: int):
    """A randomly initialised retrieval BLIP-2 and its processor, from ``cfg.seed``."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor, BlipImageProcessor  # heavy

    if image_size % cfg.patch_size:
        raise ZscirError(f"patch size {cfg.patch_size}: must divide the world's image size {image_size}")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tokenizer)  # adds the <image> token to the tokenizer: size the vocab after
    config = Blip2Config(
        vision_config=dict(hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=HEADS, image_size=image_size,
                           patch_size=cfg.patch_size, initializer_range=cfg.init_std),
        qformer_config=dict(hidden_size=cfg.qformer_width, num_hidden_layers=cfg.qformer_layers,
                            num_attention_heads=HEADS, intermediate_size=4 * cfg.qformer_width,
                            encoder_hidden_size=cfg.vision_width, cross_attention_frequency=1,
                            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            max_position_embeddings=cfg.max_text_tokens, use_qformer_text_input=True, initializer_range=cfg.init_std,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        num_query_tokens=cfg.query_tokens, image_text_hidden_size=cfg.embed_dim, image_token_index=None)
    torch.manual_seed(cfg.seed)
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        # the query tokens start as small random vectors, as BLIP-2's (zeros would make every query the same)
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
        position = model.vision_model.embeddings.position_embedding
        position.copy_(sincos_table(image_size // cfg.patch_size, cfg.vision_width).unsqueeze(0))
        position.requires_grad_(False)
    return model, processor
