"""Captioners on transformers' processor + ``generate``: BLIP-2 and any image-text-to-text model.

- ``blip2:MODEL`` -- ``Blip2ForConditionalGeneration`` with an OPT or Flan-T5 language
  model and its ``Blip2Processor``; the prompt (default none) follows the query tokens.
  Presets (``preset=``, ``--preset``) hold the settings of the methods that caption with it;
  options given explicitly override them.
- ``hf-vlm:MODEL`` -- ``AutoModelForImageTextToText`` with its ``AutoProcessor``: the image
  and the prompt go through the processor's chat template (a model without one is refused).

Both decode greedily by default, batch the images of a call (sampling goes one image per
call with its own seed, see :mod:`zscir.generation.base`), and name model, revision or weight
hash, decoding, prompt hash and precision in their identity.
"""

from __future__ import annotations

from dataclasses import replace

from zscir.errors import ZscirError
from zscir.generation.base import Captioner, Decoding, PromptTemplate
from zscir.generation.hf import group, image_content, load_pretrained, pick_device, pick_dtype, seeded_groups

# Settings of the methods that caption with BLIP-2, as their code runs LAVIS's generate()
# (whose defaults are beam 5, at most 30 new tokens). The prompt is a setting, so it is kept verbatim.
BLIP2_PRESETS: dict[str, dict] = {
    # CIReVL: BLIP-2 Flan-T5-XXL, its detailed-description prompt, LAVIS's default beam search.
    "cirevl": {"model": "Salesforce/blip2-flan-t5-xxl",
               "prompt": "Describe the image in complete detail. You must especially focus on all the objects in the image",
               "decoding": Decoding("beam", num_beams=5, max_new_tokens=30)},
    # LDRE: 15 diverse captions from BLIP-2 OPT-6.7B (COCO) by nucleus sampling ("multi_caption_opt").
    "ldre": {"model": "Salesforce/blip2-opt-6.7b-coco", "prompt": "",
             "decoding": Decoding("sample", n=15, top_p=0.9, max_new_tokens=30)},
    # LDRE's one-caption keys (blip2_caption / blip2_caption_t5): beam search, no prompt.
    "ldre-opt": {"model": "Salesforce/blip2-opt-6.7b-coco", "prompt": "",
                 "decoding": Decoding("beam", num_beams=5, max_new_tokens=30)},
    "ldre-t5": {"model": "Salesforce/blip2-flan-t5-xl-coco", "prompt": "",
                "decoding": Decoding("beam", num_beams=5, max_new_tokens=30)},
}
DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_VLM_PROMPT = "Describe this image in one sentence."


class ProcessorCaptioner(Captioner):
    """A processor + ``generate`` captioner; subclasses say how a batch of images becomes model inputs."""

    def __init__(self, model, processor, model_ref: str, prompt: str = "", decoding: Decoding | None = None,
                 device: str | None = None, half: bool | None = None):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, half)
        self.model = model.to(self.device, self.dtype).eval()
        self.processor, self.model_ref = processor, model_ref
        self.prompt = PromptTemplate(prompt, name=f"{self.name}-prompt")
        decoding = decoding or Decoding()
        if decoding.max_new_tokens is None:
            decoding = replace(decoding, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        self.decoding = decoding
        precision = "fp16" if str(self.dtype) == "torch.float16" else "fp32"
        self.identity = f"{self.name}:{model_ref}|{decoding.tag()}|{self.prompt.tag()}|{precision}"

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_ref, "prompt": self.prompt.describe()}

    about = describe  # recorded in the cache declaration

    def count_tokens(self, text: str) -> int:
        """Tokens of one output by this model's tokenizer (no special tokens)."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def model_inputs(self, images) -> dict:
        raise NotImplementedError

    def caption(self, items, images):
        import torch  # heavy

        d = self.decoding
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        texts: list = [None] * len(images)
        for idx, seed in seeded_groups(d, [image_content(im) for im in images]):
            inputs = self.model_inputs([images[i] for i in idx])
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items() if hasattr(v, "to")}
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(**inputs, **d.hf_kwargs())
            prompt_ids = inputs.get("input_ids")
            if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1] and torch.equal(
                    out[:, :prompt_ids.shape[1]], prompt_ids.repeat_interleave(d.n, dim=0)):
                out = out[:, prompt_ids.shape[1]:]  # a decoder-only model returns the prompt too
            decoded = tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, value in zip(idx, group(decoded, d.n)):
                texts[i] = value
        return texts


def _options(preset: str | None, presets: dict[str, dict], model: str | None, prompt: str | None,
             decoding: Decoding | None, default_model: str | None, default_prompt: str) -> tuple[str, str, Decoding | None]:
    base = {}
    if preset is not None:
        if preset not in presets:
            raise ZscirError(f"--preset {preset}: expected one of {', '.join(presets)}")
        base = presets[preset]
    model = model or base.get("model") or default_model
    if model is None:
        raise ZscirError("--model: expected a Hugging Face id or a save_pretrained() folder (or a --preset)")
    return model, (prompt if prompt is not None else base.get("prompt", default_prompt)), decoding or base.get("decoding")


class Blip2Captioner(ProcessorCaptioner):
    name = "blip2"

    def model_inputs(self, images) -> dict:
        return self.processor(images=list(images), text=[self.prompt.text] * len(images), return_tensors="pt")

    @classmethod
    def from_pretrained(cls, model: str | None = None, preset: str | None = None, prompt: str | None = None,
                        decoding: Decoding | None = None, cache_dir: str | None = None, revision: str | None = None,
                        **kw) -> "Blip2Captioner":
        model, prompt, decoding = _options(preset, BLIP2_PRESETS, model, prompt, decoding, None, "")
        (net, processor), ref = load_pretrained("BLIP-2", model, _load_blip2, cache_dir, revision,
                                                expected="a BLIP-2 model and its Blip2Processor")
        return cls(net, processor, ref, prompt=prompt, decoding=decoding, **kw)


def _load_blip2(source: str, **kw):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor  # heavy

    return Blip2ForConditionalGeneration.from_pretrained(source, **kw), Blip2Processor.from_pretrained(source, **kw)


class VlmCaptioner(ProcessorCaptioner):
    """Any ``AutoModelForImageTextToText`` model: one user turn holding the image and the prompt."""

    name = "hf-vlm"

    def __init__(self, model, processor, model_ref: str, **kw):
        if not getattr(processor, "chat_template", None):
            raise ZscirError(f"--captioner hf-vlm:{model_ref}: its processor has no chat template "
                             "(expected an instruction-tuned image-text-to-text model; BLIP-2 is --captioner blip2)")
        super().__init__(model, processor, model_ref, **kw)

    def model_inputs(self, images) -> dict:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt.text}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.processor(images=list(images), text=[text] * len(images), return_tensors="pt", padding=True)

    @classmethod
    def from_pretrained(cls, model: str | None = None, prompt: str | None = None, decoding: Decoding | None = None,
                        cache_dir: str | None = None, revision: str | None = None, **kw) -> "VlmCaptioner":
        model, prompt, decoding = _options(None, {}, model, prompt, decoding, None, DEFAULT_VLM_PROMPT)
        (net, processor), ref = load_pretrained("image-text-to-text", model, _load_vlm, cache_dir, revision,
                                                expected="an image-text-to-text model and its processor")
        return cls(net, processor, ref, prompt=prompt, decoding=decoding, **kw)


def _load_vlm(source: str, **kw):
    from transformers import AutoModelForImageTextToText, AutoProcessor  # heavy

    return AutoModelForImageTextToText.from_pretrained(source, **kw), AutoProcessor.from_pretrained(source, **kw)
