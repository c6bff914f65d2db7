"""What `zscir eval shapes` uses when given no --clip and no --model: the world's shipped models.

- backbone: the world's tiny CLIP, an open_clip config named ``zscir-shapes-*``
  (registered from ``zscir/backbone/model_configs``) with the weights
  ``checkpoints/shapes_clip.safetensors``;
- models: the training-free baselines plus every shipped checkpoint in
  ``checkpoints/`` that was trained on that backbone (FTI, single token, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir.errors import ZscirError
from zscir.utils.paths import repo_checkpoints_dir

SHAPES_CLIP_WEIGHTS = "shapes_clip.safetensors"
SHAPES_CLIP_PREFIX = "zscir-shapes-"
QUERY_CHECKPOINT_KINDS = ("mapping", "supervised")


def shapes_clip_name() -> str:
    from zscir.backbone.loading import MODEL_CONFIG_DIR

    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob(f"{SHAPES_CLIP_PREFIX}*.json"))
    if not names:
        raise ZscirError(f"no shapes-world CLIP config ({SHAPES_CLIP_PREFIX}*.json in {MODEL_CONFIG_DIR}): "
                         "pass --clip NAME --pretrained TAG|FILE")
    return names[0]


def shapes_backbone(device: str = "cpu", preprocess: str = "targetpad"):
    from zscir.backbone import load_backbone

    weights = repo_checkpoints_dir() / SHAPES_CLIP_WEIGHTS
    if not weights.is_file():
        raise ZscirError(f"the shapes world's CLIP weights are not there: expected {weights} "
                         "(train them with `zscir world train-backbone`), or pass --clip/--pretrained")
    return load_backbone(shapes_clip_name(), str(weights), device=device, preprocess=preprocess)


def shipped_checkpoints(backbone, folder: Path | None = None) -> list[Path]:
    """Query-model checkpoints in ``folder`` (default ``checkpoints/``) trained on ``backbone``, by name."""
    folder = folder or repo_checkpoints_dir()
    found = []
    for sidecar in sorted(Path(folder).glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (isinstance(meta, dict) and meta.get("format") == "zscir-checkpoint"
                and meta.get("kind") in QUERY_CHECKPOINT_KINDS
                and (backbone is None or meta.get("backbone") == backbone.identity)
                and sidecar.with_suffix(".safetensors").is_file()):
            found.append(sidecar.with_suffix(".safetensors"))
    return found
