"""The backbone options every command shares (--clip, --pretrained, --device), checked before any work.

- ``--device`` must name a device this machine has: ``cpu``, ``cuda``/``cuda:N`` (with a
  CUDA device there), or ``mps``. Nothing falls back to another device silently.
- ``--clip NAME`` needs ``--pretrained TAG|FILE``; random weights only with an explicit
  ``--pretrained none`` (features of a random model answer nothing, and an index built
  from them can never be queried meaningfully).
- ``--pretrained`` without ``--clip`` is an error (the weights need their model).

Kept free of torch at import time: ``torch`` is imported only to check a device.
"""

from __future__ import annotations

from zscir.errors import ZscirError

RANDOM_WEIGHTS = "none"   # --pretrained none: an explicit request for random weights
DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device(device: str | None, option: str = "--device") -> str:
    """``device`` as torch spells it, or a one-line error saying what is expected / missing."""
    import torch

    text = "cpu" if device is None else str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise ZscirError(f"{option} {text}: expected cpu, cuda, cuda:N or mps") from None
    if parsed.type not in DEVICE_KINDS:
        raise ZscirError(f"{option} {text}: expected cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ZscirError(f"{option} {text}: no CUDA device available")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ZscirError(f"{option} {text}: this machine has {count} CUDA device(s) (cuda:0"
                             + (f" .. cuda:{count - 1}" if count > 1 else "") + ")")
    if parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ZscirError(f"{option} {text}: no MPS device available")
    return str(parsed)


def resolve_pretrained(clip: str | None, pretrained: str | None) -> str | None:
    """The weights to load for ``--clip`` (None = random, only when asked with ``--pretrained none``)."""
    if clip is None:
        if pretrained is not None:
            raise ZscirError("option --pretrained needs --clip NAME (the open_clip model the weights belong to)")
        return None
    if pretrained is None:
        if str(clip).startswith("hf-hub:"):
            return None  # an hf-hub id names its weights
        raise ZscirError(f"--clip {clip} needs --pretrained TAG|FILE (an open_clip tag such as openai, or a "
                         f"local weights file); random weights only with an explicit --pretrained {RANDOM_WEIGHTS}")
    if str(pretrained).strip().lower() == RANDOM_WEIGHTS:
        return None
    return pretrained


def backbone_from_options(clip: str | None, pretrained: str | None, preprocess: str | None = None,
                          device: str | None = "cpu"):
    """--clip/--pretrained/--preprocess/--device -> a loaded backbone, or None when no --clip was given."""
    weights = resolve_pretrained(clip, pretrained)
    device = check_device(device)
    if clip is None:
        return None
    from zscir.backbone import load_backbone

    return load_backbone(clip, weights, device=device, preprocess=preprocess or "targetpad")
