"""Tiny random transformers models for the generation tests, built here and saved like real checkpoints.

One byte-level BPE tokenizer trained locally (the ``tokenizers`` package) serves every model;
sizes are tiny and the init range large, so outputs depend visibly on the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CORPUS = [
    "a red circle next to a blue square on a white background",
    "a small green triangle above a large yellow star",
    "make the circle bigger and change the colour to purple",
    "remove the square and add two dogs sitting on the grass",
    "a photo of a cat on a sofa with a striped pillow",
    "the man is wearing a black shirt and holding a cup of coffee",
    "Image description: Requested change: Changed description: user assistant system",
] * 4
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
VLM_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
                     "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
                     "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def byte_symbols() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the others for chr(256 + k)."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + k) for k, b in enumerate(moved)}}


def bpe_tokenizer(chat_template: str | None = None, vocab_size: int = 400, ascii_only: bool = False):
    """A byte-level BPE (GPT-2 style) trained on CORPUS, wrapped as a transformers fast tokenizer.

    ``ascii_only``: the alphabet holds only printable ASCII and newline, so that every token
    sequence decodes to valid text (two runtimes then compare as strings, with no invalid UTF-8).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>" if ascii_only else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    symbols = byte_symbols()
    alphabet = ([symbols[b] for b in (10, *range(32, 127))] if ascii_only
                else pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False, limit_alphabet=len(alphabet))
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _ids(tok) -> dict:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def save_causal_lm(folder: Path, chat: bool = True, seed: int = 0, ascii_only: bool = False, hidden: int = 32,
                   layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer(CHAT_TEMPLATE if chat else None, ascii_only=ascii_only)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3, tie_word_embeddings=False, **_ids(tok))
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_seq2seq_lm(folder: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = bpe_tokenizer()
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=tok.pad_token_id, initializer_factor=3.0, **_ids(tok))
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, initializer_range=0.5)


def save_blip2(folder: Path, language: str = "opt", seed: int = 0) -> Path:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tok = bpe_tokenizer()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                               num_query_tokens=4)  # adds the <image> token to the tokenizer
    ids = {**_ids(tok), "vocab_size": len(tok)}
    text = (dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, word_embed_proj_dim=32, init_std=0.3, **ids)
            if language == "opt" else
            dict(model_type="t5", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, initializer_factor=3.0,
                 decoder_start_token_id=tok.pad_token_id, **ids))
    config = Blip2Config(vision_config=VISION, text_config=text, num_query_tokens=4,
                         qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=37, encoder_hidden_size=32, initializer_range=0.5),
                         image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_vlm(folder: Path, seed: int = 0) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama) with a processor and a chat template: an image-text-to-text model."""
    from tokenizers import AddedToken
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = bpe_tokenizer()
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=VLM_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3,
                **_ids(tok))
    config = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **VISION, projection_dim=32),
                         text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def noise_images(n: int, seed: int = 0, size=(40, 30)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf_path: Path, log_path: Path, threads: int = 1, deadline_s: float = 180.0):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 for ``gguf_path``; (process, base URL).

    Waits (bounded) until /v1/models answers; the caller terminates the process.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "512", "--n_threads", str(threads),
                             "--n_threads_batch", str(threads),
                             # an f32 KV cache (GGML type 0): llama.cpp's default f16 cache moves the logits of
                             # this model by ~4e-2 (f32: ~5e-5), enough to flip near-tied greedy choices
                             "--type_k", "0", "--type_v", "0"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    end = time.time() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited ({proc.returncode}): see {log_path}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return proc, url
        except OSError:
            if time.time() > end:
                proc.kill()
                raise RuntimeError(f"llama.cpp server did not answer within {deadline_s:g} s: see {log_path}")
            time.sleep(0.2)
