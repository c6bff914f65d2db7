"""What every importer shares: the interface, key checks, and the conversion to a zscir checkpoint.

An :class:`Importer` turns the object read from a released file (by
:func:`zscir.utils.safe_pickle.load_torch_file`, which runs none of its code)
into a network config and a state dict in zscir's names; :func:`import_checkpoint`
does the rest identically for every format: it checks the widths against the
backbone, loads the weights into zscir's network (strict: every key, every
shape), and saves safetensors + a sidecar recording the method's query prompt,
FashionIQ caption rule, preprocessing and backbone, the source file's sha256,
URL and license.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from zscir import __version__
from zscir.backbone.loading import portable_path, register_model_configs, resolve_identity
from zscir.backbone.preprocess import PREPROCESS_NAMES
from zscir.checkpoint import _paths, check_weights_file, save_checkpoint
from zscir.errors import ZscirError
from zscir.importers.registry import IMPORTERS, get_importer
from zscir.models.factory import backbone_dims, create_mapping_network
from zscir.models.methods import get_method
from zscir.utils.finite import require_finite
from zscir.utils.hashing import sha256_file
from zscir.utils.safe_pickle import UnsafePickleError, check_zip_bounds, load_torch_file


@dataclass
class Imported:
    config: dict[str, Any]                 # zscir network config ("method" + hyper-parameters)
    state: dict[str, torch.Tensor]         # zscir key -> tensor (the source tensors, unchanged)
    dims: dict[str, int]                   # embed_dim, token_dim, vision_width the weights imply
    source_keys: dict[str, str]            # zscir key -> key in the source file
    notes: dict[str, Any] = field(default_factory=dict)


class Importer:
    """One release format. Subclasses set the class attributes and implement :meth:`convert`."""

    name: str = ""                 # the --from value
    method: str = ""               # zscir method (zscir.models.methods.METHODS)
    title: str = ""
    url: str = ""                  # where the released weights are published
    license: str = ""
    license_note: str = ""         # said on every load when the license restricts use
    paper: str = ""
    stand_ins: tuple[str, ...] = ()  # class names the file may pickle (become inert stand-ins)
    # (embed_dim, token_dim) -> (open_clip name, pretrained tag) of the backbone the weights were trained on
    backbones: dict[tuple[int, int], tuple[str, str]] = {}
    # other --from values whose release files have this exact format (the file cannot tell them apart)
    same_format_as: tuple[str, ...] = ()

    def convert(self, obj: Any, path: Path) -> Imported:
        raise NotImplementedError

    def default_backbone(self, dims: dict[str, int], path: Path) -> tuple[str, str]:
        key = (dims["embed_dim"], dims["token_dim"])
        if key not in self.backbones:
            known = ", ".join(f"{n}/{t} (width {e})" for (e, _), (n, t) in self.backbones.items())
            raise ZscirError(f"{path}: {self.title} weights of width {dims['embed_dim']} match no released backbone "
                             f"({known}): pass --clip NAME --pretrained TAG")
        return self.backbones[key]


# ------------------------------------------------------------------ helpers for convert()
def strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop a DDP/DataParallel ``module.`` prefix when every key has it."""
    keys = list(state)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def tensor_dict(obj: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise ZscirError(f"{path}: {where} should be a non-empty state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZscirError(f"{path}: {where}: entry {bad[0]!r} is not a tensor")
    return dict(obj)


def container_entry(obj: Any, key: str, path: Path, fmt: str) -> Any:
    if not isinstance(obj, Mapping):
        raise ZscirError(f"{path}: not a {fmt} checkpoint: expected a dict with key {key!r}, "
                         f"got {type(obj).__name__}")
    if key not in obj:
        found = ", ".join(map(repr, list(obj)[:6])) or "none"
        raise ZscirError(f"{path}: not a {fmt} checkpoint: no key {key!r} (found {found})")
    return obj[key]


def require_keys(state: Mapping[str, Any], expected: list[str], path: Path, fmt: str) -> None:
    missing = [k for k in expected if k not in state]
    if missing:
        raise ZscirError(f"{path}: not a {fmt} state dict: key {missing[0]!r} missing "
                         f"({len(missing)} of {len(expected)} expected keys missing)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ZscirError(f"{path}: unexpected key {extra[0]!r} in the {fmt} state dict "
                         f"({len(extra)} unexpected): is this the right --from format?")


def count_indexed(state: Mapping[str, Any], prefix: str) -> int:
    """Number of consecutive ``prefix{i}.`` groups (0, 1, ...)."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in state):
        n += 1
    return n


def exact_ratio(num: int, den: int, what: str, path: Path) -> int:
    if den <= 0 or num % den:
        raise ZscirError(f"{path}: {what} {num} is not a whole multiple of {den}")
    return num // den


# ------------------------------------------------------------------ what the file cannot say
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def check_pretrained_file(pretrained: str) -> None:
    """``--pretrained`` names a tag or a weights file: a path that is not a file, or a file that is not
    plain weights (a pickle needing other objects, a zip bomb), is refused before it is recorded."""
    if not os.path.isfile(pretrained):
        if os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES):
            raise ZscirError(f"--pretrained {pretrained}: weights file not found (a tag, or a local weights file)")
        return
    if zipfile.is_zipfile(pretrained):
        check_zip_bounds(pretrained, "--pretrained")
    check_weights_file(pretrained, "--pretrained")


def format_choice(importer: Importer) -> dict[str, Any]:
    """The sidecar's record of the user's --from choice when another method's files look the same."""
    if not importer.same_format_as:
        return {}
    return {"format_choice": {"from": importer.name, "same_file_format": list(importer.same_format_as),
                              "note": f"the file cannot tell these methods apart: imported as {importer.title} "
                                      f"because --from {importer.name} was given"}}


def other_format_error(error: UnsafePickleError, src: Path, importer: Importer, importers) -> ZscirError | None:
    """A refused class that another release format pickles: say what the file looks like and which --from."""
    owner = next((imp for imp in importers if error.global_name in imp.stand_ins
                  and not error.global_name.startswith("torch.") and imp is not importer), None)
    if owner is None:
        return None
    return ZscirError(f"{src}: this file pickles a {error.global_name} object, as {owner.title} releases do (a whole "
                      f"pickled module), not a {importer.title} checkpoint: pass --from {owner.name}")


# ------------------------------------------------------------------ the shared conversion
def model_config_dims(name: str) -> dict[str, int] | None:
    """embed_dim / token_dim / vision_width of an open_clip model config, without building it."""
    import open_clip  # heavy: only to read a model config

    register_model_configs()
    cfg = open_clip.get_model_config(name)
    if not cfg:
        return None
    return {"embed_dim": int(cfg["embed_dim"]), "token_dim": int(cfg["text_cfg"]["width"]),
            "vision_width": int(cfg["vision_cfg"]["width"])}


def check_dims(imported: dict[str, int], backbone: dict[str, int], what: str, path: Path) -> None:
    for key, value in imported.items():
        if value is not None and backbone.get(key) is not None and backbone[key] != value:
            raise ZscirError(f"{path}: the weights need {key}={value} but {what} has {key}={backbone[key]}: "
                             f"pass the backbone the weights were trained on (--clip/--pretrained)")


def import_checkpoint(src: str | os.PathLike, fmt: str, out: str | os.PathLike, clip: str | None = None,
                      pretrained: str | None = None, backbone=None, overwrite: bool = False) -> dict[str, Any]:
    """Convert the released file ``src`` in format ``fmt`` into the zscir checkpoint ``out``; return its sidecar.

    The backbone is ``backbone`` (a loaded :class:`Backbone`: its identity is recorded), or
    ``clip`` + ``pretrained`` (recorded without loading the weights), or the one the
    release was trained on (chosen from the weights' widths).
    """
    importer = get_importer(fmt)
    src = Path(src)
    try:
        obj = load_torch_file(src, importer.stand_ins)
    except UnsafePickleError as e:
        raise other_format_error(e, src, importer, IMPORTERS.values()) or e from None
    try:
        imported = importer.convert(obj, src)
    except ZscirError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:  # an unexpected structure
        raise ZscirError(f"{src}: not a {importer.title} checkpoint in the released format "
                         f"({type(e).__name__}: {str(e)[:120]})") from None
    require_finite(imported.state, src)
    method = get_method(importer.method)

    if backbone is not None:
        if clip or pretrained:
            raise ZscirError("give either a loaded backbone or --clip/--pretrained, not both")
        check_dims(imported.dims, backbone_dims(backbone), f"backbone {backbone.identity_str}", src)
        identity, source = backbone.identity, getattr(backbone, "source", None)
    else:
        if pretrained and not clip:
            raise ZscirError("--pretrained needs --clip (the open_clip model name the weights belong to)")
        if not clip:
            clip, default_tag = importer.default_backbone(imported.dims, src)
            pretrained = pretrained or default_tag
        if pretrained is None:
            raise ZscirError(f"--clip {clip} needs --pretrained TAG|FILE: an imported checkpoint needs the "
                             f"backbone weights it was trained with")
        check_pretrained_file(pretrained)
        dims = model_config_dims(clip) if not clip.startswith("hf-hub:") else None
        if dims is None and not clip.startswith("hf-hub:"):
            raise ZscirError(f"unknown CLIP model {clip!r} (option --clip): expected an open_clip model name")
        if dims:
            check_dims(imported.dims, dims, f"{clip}", src)
        identity, source = resolve_identity(clip, pretrained), {"name": clip, "pretrained": portable_path(pretrained)}
        trained_on = importer.backbones.get((imported.dims["embed_dim"], imported.dims["token_dim"]))
        if (trained_on and os.path.isfile(pretrained) and "activation" not in identity
                and resolve_identity(*trained_on).get("activation") and clip == trained_on[0]):
            # a weights file does not say how it was trained: the release's backbone uses QuickGELU
            raise ZscirError(f"{importer.title} was trained on {trained_on[0]} / {trained_on[1]}, which uses "
                             f"QuickGELU, but --clip {clip} with a weights file builds GELU: pass --clip "
                             f"{clip}-quickgelu --pretrained {pretrained} (or --pretrained {trained_on[1]})")

    network = create_mapping_network(imported.config, imported.dims)
    own = network.state_dict()
    for key, tensor in imported.state.items():
        if key not in own:
            raise ZscirError(f"{src}: {imported.source_keys.get(key, key)!r} has no place in zscir's "
                             f"{method.name} network (key {key})")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ZscirError(f"{src}: {imported.source_keys.get(key, key)!r} has shape {list(tensor.shape)}, "
                             f"zscir's {method.name} network expects {list(own[key].shape)}")
    missing = [k for k in own if k not in imported.state]
    if missing:
        raise ZscirError(f"{src}: no weights for {missing[0]!r} of zscir's {method.name} network")
    network.load_state_dict({k: v.to(own[k].dtype) for k, v in imported.state.items()})

    weights, sidecar = _paths(out)
    if not overwrite and (weights.exists() or sidecar.exists()):
        raise ZscirError(f"{weights} already exists: choose another --out or pass --overwrite")
    meta = {
        "kind": "mapping", "method": method.name, "config": imported.config, "dims": imported.dims,
        "backbone": identity, "backbone_source": source,
        "preprocess": PREPROCESS_NAMES[method.preprocess],
        "query": {"prompt": method.query_prompt, "fiq_captions": method.fiq_captions},
        "source": {"format": importer.name, "title": importer.title, "file": src.name, **format_choice(importer),
                   "sha256": sha256_file(src), "bytes": src.stat().st_size, "url": importer.url,
                   "license": importer.license, "license_note": importer.license_note, "paper": importer.paper,
                   "notes": imported.notes},
        "imported_by": f"zscir {__version__}",
    }
    save_checkpoint(out, network.state_dict(), meta)
    return {**meta, "weights": str(weights), "sidecar": str(sidecar)}
