"""Editors on transformers language models: ``hf-lm:MODEL`` (a causal LM or a seq2seq model such as T5).

The prompt template is filled with the caption and the instruction. Where the tokenizer has a
chat template, the filled prompt is the user turn (after the template's system text, if any)
and the model's answer is the edit; otherwise the filled text is the model's input as is. A
causal model continues the prompt (left-padded in a batch, its new tokens decoded); a seq2seq
model (``config.is_encoder_decoder``) decodes the answer from the encoded prompt.
"""

from __future__ import annotations

from dataclasses import replace

from zscir.generation.base import DEFAULT_EDIT_PROMPT, Decoding, Editor, PromptTemplate
from zscir.generation.hf import group, load_pretrained, pick_device, pick_dtype, seeded_groups

DEFAULT_MAX_NEW_TOKENS = 48


class HFEditor(Editor):
    name = "hf-lm"

    def __init__(self, model, tokenizer, model_ref: str, template: PromptTemplate = DEFAULT_EDIT_PROMPT,
                 decoding: Decoding | None = None, device: str | None = None, half: bool | None = None):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, half)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer, self.model_ref, self.template = tokenizer, model_ref, template
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        if not self.seq2seq:
            tokenizer.padding_side = "left"  # a causal model continues the prompt: pad on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        decoding = decoding or Decoding()
        if decoding.max_new_tokens is None:
            decoding = replace(decoding, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        self.decoding = decoding
        precision = "fp16" if str(self.dtype) == "torch.float16" else "fp32"
        self.identity = (f"hf-lm:{model_ref}|{decoding.tag()}|{template.tag()}"
                         f"|{'chat' if self.chat else 'plain'}|{precision}")

    def count_tokens(self, text: str) -> int:
        """Tokens of one output by this model's tokenizer (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @classmethod
    def from_pretrained(cls, model: str, template: PromptTemplate = DEFAULT_EDIT_PROMPT,
                        cache_dir: str | None = None, revision: str | None = None, **kw) -> "HFEditor":
        (net, tokenizer), ref = load_pretrained("language model", model, _load_lm, cache_dir, revision,
                                                expected="a causal or seq2seq language model and its tokenizer")
        return cls(net, tokenizer, ref, template=template, **kw)

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_ref, "prompt": self.template.describe(),
                "chat_template": self.chat, "seq2seq": self.seq2seq}

    about = describe  # recorded in the cache declaration

    def prompt_text(self, caption: str, instruction: str) -> str:
        """The exact text the model reads for one edit (chat template applied where there is one)."""
        filled = self.template.fill(caption, instruction)
        if not self.chat:
            return filled
        messages = ([{"role": "system", "content": self.template.system}] if self.template.system else [])
        messages.append({"role": "user", "content": filled})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def edit(self, pairs):
        import torch  # heavy

        d = self.decoding
        prompts = [self.prompt_text(p.caption, p.instruction) for p in pairs]
        outputs: list = [None] * len(pairs)
        for idx, seed in seeded_groups(d, [p.encode("utf-8") for p in prompts]):
            batch = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                   add_special_tokens=not self.chat).to(self.device)
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(**batch, pad_token_id=self.tokenizer.pad_token_id, **d.hf_kwargs())
            if not self.seq2seq:
                out = out[:, batch["input_ids"].shape[1]:]
            decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, value in zip(idx, group(decoded, d.n)):
                outputs[i] = value
        return outputs


def _load_lm(source: str, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # heavy

    config = AutoConfig.from_pretrained(source, **kw)
    loader = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    return loader.from_pretrained(source, **kw), AutoTokenizer.from_pretrained(source, **kw)
