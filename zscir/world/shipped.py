"""The shapes world's shipped models: what commands use when given no backbone and no model.

- backbone: the world's tiny CLIP, an open_clip config named ``zscir-shapes-*``
  (registered from ``zscir/backbone/model_configs``) with the weights
  ``checkpoints/shapes_clip.safetensors``;
- query models: every shipped checkpoint in ``checkpoints/`` (FTI, single
  token, supervised heads) whose sidecar names that backbone;
- captioner and editor (:func:`shapes_generators`): the folders ``checkpoints/shapes_captioner/`` (a tiny
  BLIP-2, ``zscir world train-captioner``, loaded as ``blip2:DIR``) and ``checkpoints/shapes_editor/`` (a tiny
  Llama, ``zscir world train-editor``, loaded as ``hf-lm:DIR``), which the language-model methods use on the
  world when no --captioner/--editor is given, the editor asked with the prompt it was trained on (zscir's
  default edit prompt, not the family's CIReVL template; CVSI's "objects likely added" question keeps its own,
  which the editor was not trained on); CVSI's mapping network is the shipped LinCIR checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir.backbone import load_backbone
from zscir.backbone.loading import MODEL_CONFIG_DIR
from zscir.benchmarks.base import BenchmarkGenerators
from zscir.errors import ZscirError
from zscir.generation.base import DEFAULT_EDIT_PROMPT, Decoding
from zscir.utils.paths import repo_checkpoints_dir

SHAPES_CLIP_WEIGHTS = "shapes_clip.safetensors"
SHAPES_CLIP_PREFIX = "zscir-shapes-"
QUERY_CHECKPOINT_KINDS = ("mapping", "supervised")
CAPTIONER_FOLDER, EDITOR_FOLDER = "shapes_captioner", "shapes_editor"
GENERATORS_DIR: Path | None = None   # where the two folders are (None: checkpoints/; tests point elsewhere)
# captions per reference: the captioner's 5 best beams; cirevl reads the first (the best), ldre/seize all 5
WORLD_CAPTIONS = 5


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


def _folder(name: str) -> Path | None:
    folder = Path(GENERATORS_DIR or repo_checkpoints_dir()) / name
    return folder if (folder / "config.json").is_file() else None


def shapes_generators(backbone) -> BenchmarkGenerators:
    """The world's captioner and editor (None where the folder is not there) and the method rows they serve."""
    captioner, editor = _folder(CAPTIONER_FOLDER), _folder(EDITOR_FOLDER)
    lincir = shipped_checkpoints(backbone.identity, kinds=("mapping",), method="lincir")
    rows = ("cirevl", f"ldre:n={WORLD_CAPTIONS}", f"seize:n={WORLD_CAPTIONS}") + ((f"cvsi:{lincir[0]}",) if lincir else ())
    where = Path(GENERATORS_DIR or repo_checkpoints_dir())
    absent = [f"{where / n}/" for n, f in ((CAPTIONER_FOLDER, captioner), (EDITOR_FOLDER, editor)) if f is None]
    missing = (f"the shapes world's captioner/editor is not there (expected {' and '.join(absent)}): train them "
               f"with `zscir world train-captioner --out {where / CAPTIONER_FOLDER}` and `zscir world train-editor "
               f"--out {where / EDITOR_FOLDER}`, or pass --captioner SPEC --editor SPEC") if absent else ""
    return BenchmarkGenerators(f"blip2:{captioner}" if captioner else None, f"hf-lm:{editor}" if editor else None,
                               {"decoding": Decoding("beam", n=WORLD_CAPTIONS)}, rows,
                               edit_prompt=DEFAULT_EDIT_PROMPT, missing=missing)
