"""Captioners and editors on any backend, and the one generation cache (layer L3).

    from zscir.generation import build_captioner, build_editor, Decoding, PromptTemplate, EditInput
    captioner = build_captioner("blip2:Salesforce/blip2-opt-2.7b", decoding=Decoding("beam", n=3))
    editor = build_editor("hf-lm:Qwen/Qwen2.5-0.5B-Instruct", template=PromptTemplate("... {caption} ... {instruction}"))
    editor = build_editor("openai:gpt-4o-mini@https://api.openai.com/v1")   # key from $OPENAI_API_KEY

    from zscir.data.caption_cache import caption_images    # an image source -> cached captions (resumable)
    from zscir.generation.edits import edit_pairs           # (id, EditInput) pairs -> cached edits (resumable)
    from zscir.generation.cache import GenerationCache      # content key + identity -> outputs, append-only JSONL

Modules: ``base`` (the interface: Captioner, Editor, Decoding, PromptTemplate, EditInput),
``registry`` (spec string -> backend), ``cache`` (the file format), ``edits`` (the edit
driver), one module per backend family (``blip``, ``hf_captioners``, ``hf_editors``,
``openai_backends`` over ``openai_client``, ``lookup``), and ``cli`` (``zscir edit``).

A method that needs captions or edits asks for them through a spec and a cache path:
what is in the cache is never generated again, and its entries record the generator's
identity (``GenerationCache.identity``; ``Generator.describe()`` for a protocol card).
"""

from zscir.generation.base import (DEFAULT_EDIT_PROMPT, Captioner, Decoding, EditInput, Editor, GenerationUnavailable,
                                   Generator, PromptTemplate)
from zscir.generation.registry import CAPTIONERS, EDITORS, build_captioner, build_editor

__all__ = ["CAPTIONERS", "DEFAULT_EDIT_PROMPT", "EDITORS", "Captioner", "Decoding", "EditInput", "Editor",
           "GenerationUnavailable", "Generator", "PromptTemplate", "build_captioner", "build_editor"]
