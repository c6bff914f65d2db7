"""Generators chosen by a spec string: ``"backend"`` or ``"backend:ARG"``.

``build_captioner("blip2:Salesforce/blip2-opt-2.7b", decoding=Decoding("beam", n=3))`` looks the
backend up in :data:`CAPTIONERS` (``build_editor`` in :data:`EDITORS`), puts ``ARG`` into the
backend's main keyword argument and calls its factory. An entry names its factory by import
path, loaded on first use, so that choosing a backend imports only that backend (and a plugin
above this layer, such as the shapes world, registers by path too).

Captioners:
  blip:MODEL          BLIP (FTI4CIR's settings; default Salesforce/blip-image-captioning-base)
  blip2:MODEL         BLIP-2, OPT or Flan-T5 (``preset=`` cirevl, ldre, ldre-opt, ldre-t5)
  hf-vlm:MODEL        any transformers image-text-to-text model with a chat template
  openai:MODEL@URL    an OpenAI-compatible chat endpoint with image input
  lavis:TYPE          LAVIS's BLIP (optional)
  file:PATH           captions from a file;  webdataset-txt;  shapes-world:WORLD
Editors:
  hf-lm:MODEL         a transformers causal LM (chat template where the tokenizer has one) or seq2seq LM
  openai:MODEL@URL    an OpenAI-compatible chat endpoint
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, NamedTuple

from zscir.errors import ZscirError
from zscir.generation.base import Captioner, Editor


class Entry(NamedTuple):
    target: str           # "module:attribute[.attribute]" of the factory
    main_kw: str | None   # the keyword that "name:ARG" fills (None: the backend takes no argument)


CAPTIONERS: dict[str, Entry] = {
    "blip": Entry("zscir.generation.blip:BlipCaptioner.from_pretrained", "model"),
    "lavis": Entry("zscir.generation.blip:LavisCaptioner", "model"),
    "file": Entry("zscir.generation.lookup:FileCaptioner", "path"),
    "webdataset-txt": Entry("zscir.generation.lookup:WebdatasetTextCaptioner", None),
    "shapes-world": Entry("zscir.generation.lookup:ShapesWorldCaptioner", "world"),
    "blip2": Entry("zscir.generation.hf_captioners:Blip2Captioner.from_pretrained", "model"),
    "hf-vlm": Entry("zscir.generation.hf_captioners:VlmCaptioner.from_pretrained", "model"),
    "openai": Entry("zscir.generation.openai_backends:OpenAICaptioner", "target"),
}

EDITORS: dict[str, Entry] = {
    "hf-lm": Entry("zscir.generation.hf_editors:HFEditor.from_pretrained", "model"),
    "openai": Entry("zscir.generation.openai_backends:OpenAIEditor", "target"),
}


def load_target(target: str) -> Callable:
    module, _, attrs = target.partition(":")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def _build(registry: dict[str, Entry], option: str, spec: str, kw: dict):
    base, sep, arg = spec.partition(":")
    if base not in registry:
        raise ZscirError(f"{option} {spec}: expected one of {', '.join(registry)} (optionally name:argument)")
    entry = registry[base]
    if sep:
        if entry.main_kw is None:
            raise ZscirError(f"{option} {spec}: {base!r} takes no argument")
        kw[entry.main_kw] = arg
    factory = load_target(entry.target)
    try:
        inspect.signature(factory).bind(**kw)
    except TypeError as e:
        raise ZscirError(f"{option} {base}: {e} (given options: {', '.join(sorted(kw)) or 'none'})") from None
    return factory(**kw)


def build_captioner(spec: str, **kw) -> Captioner:
    """Build a registered captioner; ``"file:caps.jsonl"`` is ``build_captioner("file", path="caps.jsonl")``."""
    return _build(CAPTIONERS, "--captioner", spec, kw)


def build_editor(spec: str, **kw) -> Editor:
    """Build a registered editor; ``"hf-lm:DIR"`` is ``build_editor("hf-lm", model="DIR")``."""
    return _build(EDITORS, "--editor", spec, kw)
