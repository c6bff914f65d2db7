"""Write a transformers Llama-architecture causal LM with a byte-level BPE tokenizer as a GGUF file.

For running the same weights in llama.cpp (its server speaks the OpenAI chat API), e.g. to
check that the endpoint editor and the transformers editor agree on one model. Written with
the ``gguf`` package (``pip install 'zscir[llm]'``); tensors stay float32 so the two runtimes
differ only in their arithmetic. The rules, as llama.cpp reads a ``llama`` model:

- hyper-parameters under ``llama.*``; the tokenizer as ``gpt2`` (byte-level BPE: tokens in id
  order, merges, GPT-2 pre-tokenizer ``gpt-2``), special tokens as CONTROL, no BOS added;
- the tokenizer's chat template under ``tokenizer.chat_template``;
- ``q_proj``/``k_proj`` rows are permuted from transformers' rotate-half layout to llama.cpp's
  interleaved RoPE layout (heads x 2 x half -> heads x half x 2).
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir.errors import ZscirError

TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


def _permute(weight, n_heads: int):
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_parts(tokenizer) -> tuple[list[str], list[int], list[str]]:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or spec.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ZscirError("GGUF export: expected a byte-level BPE tokenizer (tokenizers ByteLevel + BPE)")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for token, i in vocab.items():
        tokens[i] = token
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    types = [TOKEN_CONTROL if i in special else TOKEN_NORMAL for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_llama_gguf(model, tokenizer, path: str | Path, name: str = "zscir-tiny") -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and ``tokenizer`` to ``path`` as float32 GGUF."""
    import gguf  # heavy

    config = model.config
    if config.model_type != "llama":
        raise ZscirError(f"GGUF export: expected a llama model, got {config.model_type!r}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = config.hidden_size // heads
    tokens, types, merges = _tokenizer_parts(tokenizer)
    if len(tokens) != config.vocab_size:
        raise ZscirError(f"GGUF export: the tokenizer has {len(tokens)} tokens, the model {config.vocab_size}")

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id)):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    lm_head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(state[p + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(state[p + "self_attn.k_proj.weight"], kv_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", lm_head)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
