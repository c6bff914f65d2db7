"""BLIP captioners: transformers' ``BlipForConditionalGeneration`` (FTI4CIR's settings) and LAVIS's BLIP.

``blip`` defaults to Salesforce/blip-image-captioning-base, beam search 3, length 10-25
tokens (lengths include the prompt's tokens, as in BLIP), prompt "a picture of ", TargetPad
preprocessing -- FTI4CIR's settings; its identity string is the one zscir always wrote, so
existing caption caches stay valid. ``--n K`` returns the K best beams (or K samples with
``--decoding sample``); the identity then names the decoding too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from PIL import Image

from zscir.backbone.preprocess import make_preprocess
from zscir.errors import MissingWeightsError, ZscirError
from zscir.generation.base import Captioner, Decoding
from zscir.generation.hf import group, image_content, load_pretrained, pick_device, pick_dtype, seeded_groups

if TYPE_CHECKING:
    import torch

BLIP_DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
NUM_BEAMS, MIN_LENGTH, MAX_LENGTH = 3, 10, 25
# BLIP's captioning decoder was fine-tuned with this prompt; lengths include its tokens, as in BLIP.
BLIP_PROMPT = "a picture of "


class BlipCaptioner(Captioner):
    """BLIP with beam search (or N beams / N samples), batched, on GPU when there is one."""

    name = "blip"

    def __init__(self, model, tokenizer, image_processor, model_ref: str, device: str | None = None,
                 num_beams: int = NUM_BEAMS, min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH,
                 prompt: str = BLIP_PROMPT, preprocess: str = "targetpad", half: bool | None = None,
                 decoding: Decoding | None = None):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, half)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.num_beams, self.min_length, self.max_length, self.prompt = num_beams, min_length, max_length, prompt
        legacy = Decoding("beam", num_beams=num_beams)
        self.decoding = decoding or legacy
        self._pixels = self._make_preprocess(preprocess)
        precision = "fp16" if str(self.dtype) == "torch.float16" else "fp32"
        self.identity = (f"blip:{model_ref}|beams={num_beams}|len={min_length}-{max_length}"
                         f"|prompt={prompt!r}|pre={preprocess}|{precision}")
        if self.decoding != legacy:  # the legacy identity stays byte for byte; anything else is named
            self.identity += f"|{self.decoding.tag()}"
        self.model_ref = model_ref

    def _make_preprocess(self, name: str) -> Callable[[list[Image.Image]], "torch.Tensor"]:
        import torch  # heavy

        size = self.image_processor.size  # {"height": 384, "width": 384} (a dict or a SizeDict)
        size = int(size["height"]) if hasattr(size, "__getitem__") else int(size)
        if name == "targetpad":
            # FTI4CIR captions TargetPad(1.25) images; BLIP normalises with CLIP's mean/std, taken
            # from the checkpoint's own image processor so a different checkpoint stays right.
            transform = make_preprocess("targetpad", size, self.image_processor.image_mean,
                                        self.image_processor.image_std)
            return lambda images: torch.stack([transform(im) for im in images])
        if name == "blip":  # the checkpoint's processor: squash-resize to size x size
            return lambda images: self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        raise ZscirError(f"BLIP preprocess {name!r}: expected 'targetpad' or 'blip'")

    @classmethod
    def from_pretrained(cls, model: str = BLIP_DEFAULT_MODEL, cache_dir: str | None = None,
                        revision: str | None = None, **kw) -> "BlipCaptioner":
        (net, processor), model_ref = load_pretrained("BLIP", model, _load_blip, cache_dir, revision,
                                                      expected="a BLIP model and its processor (config.json, "
                                                               "weights, tokenizer, preprocessor_config.json)")
        return cls(net, processor.tokenizer, processor.image_processor, model_ref, **kw)

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_ref, "prompt": {"text": self.prompt},
                "lengths": [self.min_length, self.max_length]}

    def caption(self, items, images):
        import torch  # heavy

        d = self.decoding
        kw = {k: v for k, v in d.hf_kwargs().items() if k not in ("max_new_tokens", "min_new_tokens")}
        texts: list = [None] * len(images)
        for idx, seed in seeded_groups(d, [image_content(im) for im in images]):
            pixels = self._pixels([images[i] for i in idx]).to(self.device, self.dtype)
            prompt_ids = self.tokenizer([self.prompt] * len(idx), return_tensors="pt")["input_ids"].to(self.device)
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(pixel_values=pixels, input_ids=prompt_ids, min_length=self.min_length,
                                          max_length=self.max_length, repetition_penalty=1.0, **kw)
            decoded = [_strip_prefix(t, self.prompt) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
            for i, value in zip(idx, group(decoded, d.n)):
                texts[i] = value
        return texts


def _strip_prefix(text: str, prompt: str) -> str:
    text, prompt = text.strip(), prompt.strip()
    return text[len(prompt):].strip() if prompt and text.lower().startswith(prompt.lower()) else text


def _load_blip(source: str, **kw):
    from transformers import BlipForConditionalGeneration, BlipProcessor  # heavy

    return BlipForConditionalGeneration.from_pretrained(source, **kw), BlipProcessor.from_pretrained(source, **kw)


class LavisCaptioner(Captioner):
    """LAVIS's BLIP captioner; an optional backend (salesforce-lavis pins old transformers and timm)."""

    name = "lavis"

    def __init__(self, model: str = "base_coco", device: str | None = None, num_beams: int = NUM_BEAMS,
                 min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH):
        try:
            from lavis.models import load_model_and_preprocess
        except ImportError:
            raise ZscirError("--captioner lavis needs salesforce-lavis, which is not installed: "
                             "pip install 'zscir[lavis]' in a separate environment (it pins old transformers), "
                             "or use --captioner blip (the same model through transformers)") from None
        self.device = pick_device(device)
        try:
            self.model, processors, _ = load_model_and_preprocess(
                name="blip_caption", model_type=model, is_eval=True, device=self.device)
        except Exception as e:  # LAVIS downloads its checkpoint from a URL on first use
            raise MissingWeightsError(f"LAVIS blip_caption/{model} could not be loaded ({str(e).splitlines()[0]}): "
                                      "run it once where there is network so LAVIS caches the checkpoint "
                                      "(torch hub cache), then copy that cache here") from None
        self.transform = processors["eval"]
        self.num_beams, self.min_length, self.max_length = num_beams, min_length, max_length
        self.decoding = Decoding("beam", num_beams=num_beams)
        self.identity = f"lavis:blip_caption/{model}|beams={num_beams}|len={min_length}-{max_length}"

    def caption(self, items, images):
        import torch  # heavy

        batch = torch.stack([self.transform(im) for im in images]).to(self.device)
        with torch.no_grad():
            return list(self.model.generate({"image": batch}, use_nucleus_sampling=False, num_beams=self.num_beams,
                                            max_length=self.max_length, min_length=self.min_length))
