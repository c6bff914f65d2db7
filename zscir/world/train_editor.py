"""Train the world's editor: a tiny Llama with a chat template, (caption, instruction) -> edited caption.

Examples come from the world's unlabeled scenes and its own edit generator
(:func:`zscir.world.model_data.edit_examples`, fine and coarse instructions); no triplet or
reference-target pair of any split is seen. The model reads exactly what the generic editor
``hf-lm:PATH`` sends it (:meth:`zscir.generation.hf_editors.HFEditor.prompt_text`: zscir's
default edit prompt as the user turn of the chat template) and learns to answer with the
edited caption and ``</s>``; the loss covers the answer only.

The folder (``save_pretrained``: config, safetensors weights, tokenizer with its chat
template) loads through ``hf-lm:PATH`` like any local language model, and, being a Llama,
converts to GGUF for a llama.cpp server (:mod:`zscir.generation.gguf_export`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.generation.base import DEFAULT_EDIT_PROMPT, Decoding, EditInput
from zscir.generation.hf_editors import HFEditor
from zscir.generation.registry import build_editor
from zscir.world.eval_backbone import HELDOUT_SEED, heldout_scenes
from zscir.world.model_data import STYLES, EditExample, edit_examples, edit_scores, unlabeled_images
from zscir.world.model_loop import RunConfig, train_loop
from zscir.world.model_tokenizer import CHAT_TEMPLATE, special_ids, train_tokenizer
from zscir.world.train_captioner import save_folder

EVAL_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class EditorConfig(RunConfig):
    # the answer is mostly a copy of the caption, which needs induction heads: with 4 layers of 8 heads at lr 1e-3
    # the loss was 0.45 after 800 steps of 32, with 3 layers of 4 heads at 3e-3 (24 a step) still 0.84, not copying
    batch_size: int = 32
    lr: float = 1e-3
    width: int = 128
    layers: int = 4
    heads: int = 8
    vocab_size: int = 1024
    per_scene: int = 1          # examples per unlabeled scene and style
    styles: tuple = STYLES


# model size and budget by name: the default aims at 15 minutes on 2 cores, tiny at seconds (tests)
PRESETS = {"default": EditorConfig(),
           "tiny": EditorConfig(steps=40, seconds=600.0, batch_size=8, lr=3e-3, warmup_steps=5, save_every=10,
                                width=32, layers=1, heads=4, vocab_size=400, per_scene=1)}


def build_model(cfg: EditorConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy

    if cfg.width % cfg.heads:
        raise ZscirError(f"--width {cfg.width}: must be a multiple of the {cfg.heads} heads")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=512, tie_word_embeddings=True, **special_ids(tokenizer))
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def encode_examples(editor: HFEditor, examples: Sequence[EditExample]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + </s>) of each example, the prompt as the generic editor builds it."""
    tok = editor.tokenizer
    out = []
    for ex in examples:
        prompt = tok(editor.prompt_text(ex.caption, ex.instruction), add_special_tokens=False)["input_ids"]
        answer = tok(" " + ex.edited, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((prompt, answer))
    return out


def edit_batches(cfg: EditorConfig, encoded: list[tuple[list[int], list[int]]], pad_id: int):
    """``batch(step)`` -> (input_ids, attention_mask, labels), right-padded, drawn from (seed, step)."""

    def batch(step: int):
        idx = np.random.default_rng([cfg.seed, 0x45445453, step]).integers(len(encoded), size=cfg.batch_size)
        rows = [encoded[i] for i in idx]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for r, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            ids[r, :n] = torch.tensor(prompt + answer)
            mask[r, :n] = 1
            labels[r, len(prompt):n] = torch.tensor(answer)
        return ids, mask, labels

    return batch


def train_editor(world: str | os.PathLike, out: str | os.PathLike, run_dir: str | os.PathLike,
                 cfg: EditorConfig = EditorConfig(), log: Callable[[str], None] = print) -> dict:
    """Train on edits of ``world``'s unlabeled scenes; save model + tokenizer to ``out``; return the run's record."""
    start = time.time()
    torch.set_num_threads(cfg.threads)
    scenes = [im.scene for im in unlabeled_images(world)]
    examples = edit_examples(scenes, cfg.seed, cfg.per_scene, cfg.styles)
    if not examples:
        raise ZscirError(f"--world {world}: no edit examples could be drawn from its unlabeled scenes")
    # the tokenizer learns the prompts as the editor fills them, and the answers
    texts = [t for ex in examples for t in (DEFAULT_EDIT_PROMPT.fill(ex.caption, ex.instruction), " " + ex.edited)]
    tokenizer = train_tokenizer(texts, cfg.vocab_size, bos=False, chat_template=CHAT_TEMPLATE)
    model = build_model(cfg, tokenizer)
    editor = HFEditor(model, tokenizer, "training", device="cpu")
    encoded = encode_examples(editor, examples)
    lengths = [len(p) + len(a) for p, a in encoded]
    log(f"{len(examples)} edit examples from {len(scenes)} unlabeled scenes ({', '.join(cfg.styles)}), "
        f"{min(lengths)}-{max(lengths)} tokens, answers up to {max(len(a) for _, a in encoded)}, "
        f"model of {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    batch = edit_batches(cfg, encoded, tokenizer.pad_token_id)

    def loss_at(step: int):
        ids, mask, labels = batch(step)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    data_seconds = time.time() - start
    record = train_loop(model, loss_at, cfg.budget(), run_dir, {"world": str(world), **asdict(cfg)}, log)
    save_folder(model, tokenizer, out)
    record.update({"config": asdict(cfg), "world": str(world), "unlabeled_scenes": len(scenes),
                   "examples": len(examples), "answer_tokens_max": max(len(a) for _, a in encoded),
                   "data_seconds": round(data_seconds), "parameters": sum(p.numel() for p in model.parameters()),
                   "wall_seconds": round(time.time() - start)})
    log(f"saved to {out} after {record['steps']} steps (final loss {record['final_loss']})")
    return record


def heldout_edits(num_scenes: int, styles: Sequence[str] = STYLES, seed: int = HELDOUT_SEED) -> list[EditExample]:
    """One edit per style of each of ``num_scenes`` distinct evaluation-part scenes (targets in that part too)."""
    return edit_examples(heldout_scenes(num_scenes, seed), seed, 1, styles, part="eval")


def evaluate_editor(spec: str, num_scenes: int, styles: Sequence[str] = STYLES, batch_size: int = 50,
                    seed: int = HELDOUT_SEED) -> dict:
    """Greedy edits of held-out captions through the generic editor ``spec``: exact match per style and edit kind."""
    editor = build_editor(spec, decoding=Decoding(max_new_tokens=EVAL_MAX_NEW_TOKENS), device="cpu")
    examples = heldout_edits(num_scenes, styles, seed)
    outputs = []
    for i in range(0, len(examples), batch_size):
        outputs += editor.edit([EditInput(ex.caption, ex.instruction) for ex in examples[i:i + batch_size]])
    scores = edit_scores(examples, outputs)
    scores["examples"] = [{"caption": ex.caption, "instruction": ex.instruction, "truth": ex.edited, "edited": o}
                          for ex, o in zip(examples[:6], outputs[:6])]
    return scores
