"""Load a backbone by open_clip name + pretrained tag, hf-hub id, or local file.

The identity recorded in checkpoints and caches is the model name plus the
pretrained tag, the hub id, or the sha256 of a local weights file: two files
with the same name but different bytes never share a cache.

The activation is built as the weights were trained: a pretrained tag whose
open_clip config says ``quick_gelu`` (OpenAI's CLIP weights, LAION-400M ...)
builds QuickGELU, and the identity then records ``"activation": "quick_gelu"``.
The field is added only for QuickGELU, so the identities of GELU backbones
(the shipped shapes-world CLIP, every checkpoint saved before) are unchanged;
a checkpoint trained on a GELU build of OpenAI weights no longer matches the
QuickGELU build and is refused by :func:`zscir.models.query.backbone_for`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import open_clip
import torch

from zscir.backbone.clip import Backbone
from zscir.backbone.families import family_loader
from zscir.backbone.preprocess import make_preprocess
from zscir.checkpoint import check_weights_file
from zscir.errors import MissingWeightsError, ZscirError
from zscir.utils.hashing import sha256_file
from zscir.utils.paths import repo_checkpoints_dir

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make zscir's model configs (tiny test models, the shapes-world CLIP) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _hf_cache_hint() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface/hub"


QUICK_GELU = {"activation": "quick_gelu"}


def tag_uses_quick_gelu(name: str, pretrained: Optional[str]) -> bool:
    """Whether open_clip builds ``name`` + ``pretrained`` with QuickGELU (model config or the tag's training config)."""
    register_model_configs()
    if name.startswith("hf-hub:"):
        return False
    cfg = open_clip.get_model_config(name) or {}
    if cfg.get("quick_gelu"):
        return True
    if pretrained is None or os.path.isfile(pretrained):
        return False
    return bool((open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu", False))


def resolve_identity(name: str, pretrained: Optional[str], quick_gelu: Optional[bool] = None) -> dict:
    """The backbone identity; ``quick_gelu=None`` derives the activation from open_clip's configs."""
    if name.startswith("hf-hub:"):
        identity = {"model": name, "pretrained": name}
    elif pretrained is None:
        identity = {"model": name, "pretrained": "random-init"}
    elif os.path.isfile(pretrained):
        identity = {"model": name, "pretrained": "sha256:" + sha256_file(pretrained)}
    else:
        identity = {"model": name, "pretrained": pretrained}
    if quick_gelu is None:
        quick_gelu = tag_uses_quick_gelu(name, pretrained)
    return {**identity, **QUICK_GELU} if quick_gelu else identity


def model_uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs its own errors on the root logger; ours are raised as one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _create_model(name: str, pretrained: Optional[str], device, precision: str, cache_dir: Optional[str]):
    register_model_configs()
    is_hub = name.startswith("hf-hub:")
    if not is_hub and name not in open_clip.list_models():
        raise ZscirError(f"unknown CLIP model {name!r} (option --clip): expected an open_clip model name "
                         f"such as ViT-B-32, ViT-L-14, or an hf-hub:ORG/REPO id")
    if pretrained is not None and not is_hub and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags and (os.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth"))):
            raise ZscirError(f"pretrained weights file not found: {pretrained} (option --pretrained)")
        if pretrained not in tags:
            raise ZscirError(f"unknown pretrained tag {pretrained!r} for {name} (option --pretrained): "
                             f"expected one of {', '.join(tags) or '(none)'} or a local weights file")
    if pretrained is not None and os.path.isfile(pretrained):
        check_weights_file(pretrained, "--pretrained")  # damaged, empty, pickle-in-safetensors: one line, before open_clip
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(name, pretrained=None if is_hub else pretrained, device=device,
                                           precision=precision, cache_dir=cache_dir, weights_only=True,
                                           force_quick_gelu=tag_uses_quick_gelu(name, pretrained))
    except (RuntimeError, OSError, ValueError, AssertionError) as e:  # open_clip asserts on mismatched shapes
        msg = str(e)
        if is_hub or "download" in msg.lower() or "offline" in msg.lower() or "connect" in msg.lower():
            where = name if is_hub else f"{name} / {pretrained}"
            raise MissingWeightsError(
                f"weights for {where} are not available offline: put them in the Hugging Face cache "
                f"({_hf_cache_hint()}) or pass --pretrained /path/to/weights.safetensors") from None
        if "Error(s) in loading state_dict" in msg or isinstance(e, AssertionError):  # another architecture
            detail = next((line.strip() for line in (msg.splitlines()[1:] or msg.splitlines()) if line.strip()), "")[:200]
            raise ZscirError(f"--pretrained {pretrained}: these weights do not fit the {name} architecture "
                             f"(option --clip): {detail}; pass the --clip they were trained for") from None
        raise ZscirError(f"could not build {name} with weights {pretrained}: {msg.splitlines()[0]}") from None
    return model


def load_backbone(name: str, pretrained: Optional[str] = None, device: str | torch.device = "cpu",
                  preprocess: str = "targetpad", precision: str = "fp32",
                  cache_dir: Optional[str] = None) -> Backbone:
    """Build a frozen :class:`Backbone`.

    ``pretrained`` is an open_clip tag, a local state-dict file, or None for a
    random init (tests). ``precision`` is open_clip's ('fp32', 'bf16', 'fp16').
    A name of a registered family (``blip2:...``, :mod:`zscir.backbone.families`) is built by that family.
    """
    load_family = family_loader(name)
    if load_family is not None:
        return load_family(name, pretrained, device=device, preprocess=preprocess, precision=precision,
                           cache_dir=cache_dir)
    model = _create_model(name, pretrained, device, precision, cache_dir)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    prep = make_preprocess(preprocess, int(size), cfg.get("mean", None) or (0.48145466, 0.4578275, 0.40821073),
                           cfg.get("std", None) or (0.26862954, 0.26130258, 0.27577711))
    tokenizer = open_clip.get_tokenizer(name)
    identity = resolve_identity(name, pretrained, quick_gelu=model_uses_quick_gelu(model))
    if pretrained is None and not name.startswith("hf-hub:"):
        # random weights differ run to run: name them by content so that caches never mix two inits
        identity["pretrained"] = "random-init:" + state_dict_digest(model)[:16]
    backbone = Backbone(model, tokenizer, prep, identity, torch.device(device))
    backbone.source = {"name": name, "pretrained": portable_path(pretrained)}
    return backbone


def state_dict_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def portable_path(pretrained: Optional[str]) -> Optional[str]:
    """Record files shipped in the repository's checkpoints/ relative to the repository, others as given."""
    if pretrained is None or not os.path.isfile(pretrained):
        return pretrained
    path = Path(pretrained).resolve()
    root = repo_checkpoints_dir().parent
    return str(path.relative_to(root)) if path.is_relative_to(repo_checkpoints_dir()) else str(path)


def resolve_portable_path(pretrained: Optional[str]) -> Optional[str]:
    """Inverse of :func:`portable_path`: a repository-relative path is resolved against the repository."""
    if pretrained is None or os.path.isfile(pretrained):
        return pretrained
    candidate = repo_checkpoints_dir().parent / pretrained
    return str(candidate) if candidate.is_file() else pretrained
