"""Load a BLIP-2 backbone from ``blip2:<Hugging Face id>`` or ``blip2:<local folder>``.

    bb = load_blip2("blip2:Salesforce/blip2-itm-vit-g")      # from the Hugging Face cache (or the hub when online)
    bb = load_blip2("blip2:/models/my-blip2")                 # a folder written by save_pretrained

The folder (or hub snapshot) holds a ``Blip2ForImageTextRetrieval`` (config.json + weights), its image
processor and its tokenizer. A model that is not there is one line naming it and how to supply it; nothing
falls back to random weights. ``--clip blip2:...`` reaches :func:`load_family` through
:data:`zscir.backbone.families.FAMILIES`.

The identity recorded in caches and checkpoints: ``{"family": "blip2", "model": <the spec>, "pretrained":
<hub id> | "sha256:<digest of the folder's config.json and weights files>"}``, so two folders with different
weights never share a cache, and a moved folder keeps its caches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from zscir.backbone.blip2 import Blip2Backbone
from zscir.backbone.preprocess import make_preprocess
from zscir.errors import MissingWeightsError, ZscirError
from zscir.utils.hashing import sha256_file

PREFIX = "blip2:"
MAX_TEXT_LENGTH = 32        # LAVIS's Blip2Qformer max_txt_len for ITC/ITM
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _hf_cache_hint() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface/hub"


def parse_spec(spec: str) -> tuple[str, bool]:
    """``blip2:X`` -> (X, whether X is a local folder); a path that is not a folder is an error."""
    if not str(spec).startswith(PREFIX) or not str(spec)[len(PREFIX):].strip():
        raise ZscirError(f"--clip {spec}: expected blip2:<Hugging Face id> or blip2:<local folder>")
    target = str(spec)[len(PREFIX):].strip()
    if os.path.isdir(os.path.expanduser(target)):
        return os.path.expanduser(target), True
    if target.startswith(("/", ".", "~")) or os.sep + os.sep in target or target.count("/") > 1:
        raise ZscirError(f"--clip {spec}: folder {target} not found (expected a folder written by save_pretrained, "
                         "or a Hugging Face id such as Salesforce/blip2-itm-vit-g)")
    return target, False


def folder_digest(folder: str | os.PathLike) -> str:
    """sha256 over the names and sha256s of a model folder's config.json and weights files."""
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        raise ZscirError(f"--clip {PREFIX}{folder}: the folder holds no weights file (*.safetensors): "
                         "expected a BLIP-2 model written by save_pretrained")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def blip2_identity(spec: str) -> dict:
    target, local = parse_spec(spec)
    pretrained = "sha256:" + folder_digest(target) if local else target
    return {"family": "blip2", "model": "blip2" if local else f"{PREFIX}{target}", "pretrained": pretrained}


def _missing(spec: str, target: str, local: bool, error: Exception) -> ZscirError:
    if local:
        detail = " ".join(str(error).split())[:200]
        return ZscirError(f"--clip {spec}: {target} holds no loadable BLIP-2 retrieval model ({detail}); expected "
                          "the config, weights, image processor and tokenizer written by save_pretrained")
    return MissingWeightsError(
        f"BLIP-2 model {target} (--clip {spec}) is not available offline: put the model in the Hugging Face cache "
        f"({_hf_cache_hint()}) or pass a local folder: --clip blip2:/path/to/folder (written by save_pretrained)")


def _load_parts(spec: str, target: str, local: bool, dtype: torch.dtype, cache_dir: str | None):
    # deferred: transformers is heavy and needed only when a BLIP-2 backbone is loaded
    from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval, Blip2Processor

    try:
        model = Blip2ForImageTextRetrieval.from_pretrained(target, dtype=dtype, cache_dir=cache_dir)
        image_processor = AutoImageProcessor.from_pretrained(target, cache_dir=cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(target, cache_dir=cache_dir)
    except (OSError, ValueError) as e:
        raise _missing(spec, target, local, e) from None
    return model, Blip2Processor(image_processor, tokenizer)


def load_blip2(spec: str, device: str | torch.device = "cpu", preprocess: str = "targetpad",
               precision: str = "fp32", cache_dir: str | None = None) -> Blip2Backbone:
    """A frozen :class:`Blip2Backbone` for ``spec`` (``blip2:<id or folder>``) on ``device``.

    ``preprocess``: zscir's preprocessing (targetpad / clip) at the model's image size, mean and std, used by
    the feature store; :meth:`Blip2Backbone.pixels` of PIL images uses the model's own image processor.
    """
    target, local = parse_spec(spec)
    if precision not in DTYPES:
        raise ZscirError(f"--clip {spec}: precision {precision!r}, expected one of {', '.join(DTYPES)}")
    identity = blip2_identity(spec)   # a folder without weights is one line before transformers runs
    model, processor = _load_parts(spec, target, local, DTYPES[precision], cache_dir)
    if not model.config.qformer_config.use_qformer_text_input:
        raise ZscirError(f"--clip {spec}: its Q-Former has no text layers (qformer_config.use_qformer_text_input is "
                         "false): expected a BLIP-2 retrieval model such as Salesforce/blip2-itm-vit-g")
    model = model.to(device)
    ip = processor.image_processor
    size = int(model.config.vision_config.image_size)
    prep = make_preprocess(preprocess, size, tuple(ip.image_mean), tuple(ip.image_std))
    max_len = min(MAX_TEXT_LENGTH, int(model.config.qformer_config.max_position_embeddings))
    backbone = Blip2Backbone(model, processor, prep, identity, torch.device(device), max_len)
    backbone.source = {"name": f"{PREFIX}{os.path.abspath(target) if local else target}", "pretrained": None}
    return backbone


def load_family(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
                preprocess: str = "targetpad", precision: str = "fp32", cache_dir: str | None = None):
    """The entry of :data:`zscir.backbone.families.FAMILIES`: ``--clip blip2:...`` names its own weights."""
    if pretrained is not None:
        raise ZscirError(f"--clip {name} names its weights (a Hugging Face id or a folder): drop --pretrained")
    return load_blip2(name, device=device, preprocess=preprocess, precision=precision, cache_dir=cache_dir)
