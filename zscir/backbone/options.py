"""The backbone options every command shares (--clip, --pretrained, --device), checked before any work.

- ``--device`` must name a device this machine has: ``cpu``, ``cuda``/``cuda:N`` (with a
  CUDA device there), or ``mps``. Nothing falls back to another device silently.
- ``--clip NAME`` needs ``--pretrained TAG|FILE``; random weights only with an explicit
  ``--pretrained none`` (features of a random model answer nothing, and an index built
  from them can never be queried meaningfully).
- ``--pretrained`` without ``--clip`` is an error (the weights need their model).

:func:`backbone_options` declares these options (and ``--preprocess``) on a command, with one
help text each; a command adds only the sentence that is its own (its default, when it applies).

Kept free of torch at import time: ``torch`` is imported only to check a device, and the
backbone is loaded through the package's lazy names.
"""

from __future__ import annotations

import click

from zscir import backbone as backbone_package
from zscir.backbone.families import family_of
from zscir.errors import ZscirError
from zscir.utils.options import POSITIVE_INT

RANDOM_WEIGHTS = "none"   # --pretrained none: an explicit request for random weights
DEVICE_KINDS = ("cpu", "cuda", "mps")
PREPROCESS_CHOICES = ("targetpad", "clip")

CLIP_HELP = ("open_clip model name of the backbone (ViT-B-32, ViT-L-14, ...) or hf-hub:ORG/REPO; "
             "blip2:ID|FOLDER for a BLIP-2 retrieval model.")
PRETRAINED_HELP = "Its weights: an open_clip pretrained tag (openai, laion2b_s34b_b79k, ...) or a local weights file."
RANDOM_WEIGHTS_HELP = f"'{RANDOM_WEIGHTS}': random weights (tests only)."
PREPROCESS_HELP = "Image preprocessing: targetpad (the padding of SEARLE and FTI4CIR) or clip (CLIP's own)."
DEVICE_HELP = "cpu, cuda, cuda:N or mps."


def _help(*sentences: str | None) -> str:
    return " ".join(s for s in sentences if s)


def device_option(default: str | None = "cpu", note: str | None = None):
    """``--device DEVICE`` (parameter ``device``), with ``note`` after the common help text."""
    return click.option("--device", default=default, show_default=default is not None, metavar="DEVICE",
                        help=_help(DEVICE_HELP, note))


def backbone_options(clip_note: str | None = None, *, required: bool = False, pretrained_note: str | None = None,
                     random_weights: bool = False, preprocess: str | None | bool = False,
                     preprocess_note: str | None = None, device: str | None | bool = "cpu",
                     device_note: str | None = None):
    """Declare ``--clip NAME``, ``--pretrained TAG|FILE``, ``--preprocess`` and ``--device DEVICE``, in that order.

    The parameters are ``clip``, ``pretrained``, ``preprocess`` and ``device``. Each option has one help
    text in every command; a ``*_note`` adds the command's own sentence (what it does without the
    option). ``random_weights``: the command takes ``--pretrained none`` (it goes through
    :func:`resolve_pretrained`). ``preprocess``/``device``: the option's default, or False for no option.
    """
    options = [click.option("--clip", required=required, metavar="NAME", help=_help(CLIP_HELP, clip_note)),
               click.option("--pretrained", metavar="TAG|FILE",
                            help=_help(PRETRAINED_HELP, RANDOM_WEIGHTS_HELP if random_weights else None,
                                       pretrained_note))]
    if preprocess is not False:
        options.append(click.option("--preprocess", type=click.Choice(PREPROCESS_CHOICES), default=preprocess,
                                    show_default=preprocess is not None, help=_help(PREPROCESS_HELP, preprocess_note)))
    if device is not False:
        options.append(device_option(device, device_note))

    def decorate(command):
        for option in reversed(options):  # click lists options in the order their decorators are written
            command = option(command)
        return command

    return decorate


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
    if family_of(clip) is not None:
        if pretrained is not None:
            raise ZscirError(f"--clip {clip} names its weights (a Hugging Face id or a folder): drop --pretrained")
        return None  # a family's spec names its weights
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
    return backbone_package.load_backbone(clip, weights, device=device, preprocess=preprocess or "targetpad")


def itm_rerank_option(recorded: str):
    """``--itm-rerank K`` (:mod:`zscir.models.itm_rerank`), one help text; ``recorded`` says where the command
    records it."""
    return click.option("--itm-rerank", "itm_rerank", type=POSITIVE_INT, metavar="K",
                        help="Re-order each query's top K by the backbone's image-text matching probability of "
                             f"(candidate, modification text); BLIP-2 backbones only. {recorded}")
