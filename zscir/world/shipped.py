"""The shapes world's shipped models: what commands use when given no backbone and no model.

- backbone: the world's tiny CLIP, an open_clip config named ``zscir-shapes-*``
  (registered from ``zscir/backbone/model_configs``) with the weights
  ``checkpoints/shapes_clip.safetensors``;
- query models: every shipped checkpoint in ``checkpoints/`` (FTI, single
  token, supervised heads) whose sidecar names that backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir.backbone import load_backbone
from zscir.backbone.loading import MODEL_CONFIG_DIR
from zscir.errors import ZscirError
from zscir.utils.paths import repo_checkpoints_dir

SHAPES_CLIP_WEIGHTS = "shapes_clip.safetensors"
SHAPES_CLIP_PREFIX = "zscir-shapes-"
QUERY_CHECKPOINT_KINDS = ("mapping", "supervised")


def shapes_clip_name() -> str:
    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob(f"{SHAPES_CLIP_PREFIX}*.json"))
    if not names:
        raise ZscirError(f"no shapes-world CLIP config ({SHAPES_CLIP_PREFIX}*.json in {MODEL_CONFIG_DIR}): "
                         "pass --clip NAME --pretrained TAG|FILE")
    return names[0]


def shapes_clip_weights() -> Path:
    return repo_checkpoints_dir() / SHAPES_CLIP_WEIGHTS


def shapes_backbone(device: str = "cpu", preprocess: str = "targetpad"):
    weights = shapes_clip_weights()
    if not weights.is_file():
        raise ZscirError(f"the shapes world's CLIP weights are not there: expected {weights} "
                         "(train them with `zscir world train-backbone`), or pass --clip/--pretrained")
    return load_backbone(shapes_clip_name(), str(weights), device=device, preprocess=preprocess)


def shipped_checkpoints(backbone_identity: dict | None, folder: Path | None = None,
                        kinds=QUERY_CHECKPOINT_KINDS, method: str | None = None) -> list[Path]:
    """Query-model checkpoints in ``folder`` (default ``checkpoints/``), by name.

    Only those trained on the backbone with ``backbone_identity`` (None: any), of one of
    ``kinds``, and of ``method`` when given (``fti``, ``single`` ...).
    """
    found = []
    for sidecar in sorted(Path(folder or repo_checkpoints_dir()).glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (isinstance(meta, dict) and meta.get("format") == "zscir-checkpoint"
                and meta.get("kind") in kinds
                and (method is None or meta.get("method") == method)
                and (backbone_identity is None or meta.get("backbone") == backbone_identity)
                and sidecar.with_suffix(".safetensors").is_file()):
            found.append(sidecar.with_suffix(".safetensors"))
    return found


def shipped_fti_checkpoint(backbone_identity: dict) -> Path | None:
    """The shipped FTI checkpoint trained on this backbone, if any (first by name)."""
    found = shipped_checkpoints(backbone_identity, kinds=("mapping",), method="fti")
    return found[0] if found else None
