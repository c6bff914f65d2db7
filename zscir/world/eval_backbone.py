"""How well a CLIP knows the shapes world: held-out retrieval and attribute sensitivity.

Held-out scenes are distinct specs from the evaluation part of the spec space
(never seen in training), rendered from their own seed and encoded through
the backbone's own preprocessing, exactly as evaluation and retrieval do.

- text -> image R@1/5/10: each scene's canonical caption ranks the held-out images;
- attribute sensitivity, per kind (color, shape, size, position, pattern, and
  background as an extra): the share of images whose true canonical caption
  scores above the same caption with one attribute word of one object changed
  (objects keep their place in the caption). Without it, attribute
  pseudo-words could not matter downstream.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.world.captions import canonical_caption, describe
from zscir.world.render import render_array, render_rng
from zscir.world.spec import ATTRIBUTES, BACKGROUNDS, Scene, choice, distinct, sample_scene

HELDOUT_SEED = 1234
# sensitivity kind -> the scene attribute it changes; targets apply to the first five
SENSITIVITY_KINDS = {"color": "color", "shape": "shape", "size": "size", "position": "cell", "pattern": "pattern",
                     "background": "background"}
TARGET_KINDS = ("color", "shape", "size", "position", "pattern")


def heldout_scenes(num: int, seed: int = HELDOUT_SEED) -> list[Scene]:
    """``num`` distinct evaluation-part scenes (disjoint from every training spec by construction)."""
    rng = np.random.default_rng([seed, 0x484F4C44])
    scenes: list[Scene] = []
    while len(scenes) < num:
        scenes = distinct(scenes + [sample_scene(rng, "eval") for _ in range(num - len(scenes))])
    return scenes


def perturbed_caption(scene: Scene, kind: str, rng: np.random.Generator) -> str:
    """The canonical caption with one attribute word changed (objects stay in caption order)."""
    attribute = SENSITIVITY_KINDS[kind]
    if attribute == "background":
        return describe(scene.objects, choice(rng, [b for b in BACKGROUNDS if b != scene.background])).text
    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]
    values = scene.free_cells() if attribute == "cell" else [v for v in ATTRIBUTES[attribute] if v != getattr(obj, attribute)]
    objects = list(scene.objects)
    objects[k] = obj.with_(**{attribute: choice(rng, values)})
    return describe(objects, scene.background).text


@torch.no_grad()
def encode_images(backbone, arrays: list[np.ndarray], batch_size: int = 256) -> torch.Tensor:
    feats = []
    for i in range(0, len(arrays), batch_size):
        x = torch.stack([backbone.preprocess(Image.fromarray(a)) for a in arrays[i:i + batch_size]])
        feats.append(F.normalize(backbone.encode_image(x).pooled, dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(backbone, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    return torch.cat([F.normalize(backbone.encode_text(texts[i:i + batch_size]), dim=-1)
                      for i in range(0, len(texts), batch_size)])


def recall_at(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Row i's correct column is i; rank = number of columns scoring strictly higher (ties favour the truth)."""
    correct = similarity.diagonal().unsqueeze(1)
    rank = (similarity > correct).sum(dim=1)
    return {f"R@{k}": round(float((rank < k).float().mean()), 4) for k in ks}


def evaluate_backbone(backbone, num_scenes: int = 1000, seed: int = HELDOUT_SEED,
                      kinds: Sequence[str] = tuple(SENSITIVITY_KINDS)) -> dict:
    """Held-out text->image recall and attribute sensitivity (for ``kinds``) of ``backbone`` on the shapes world."""
    size = backbone.image_size
    scenes = heldout_scenes(num_scenes, seed)
    arrays = [render_array(s, render_rng(seed, i), size) for i, s in enumerate(scenes)]
    images = encode_images(backbone, arrays)
    captions = encode_texts(backbone, [canonical_caption(s).text for s in scenes])
    result = {"num_scenes": num_scenes, "seed": seed, "text_to_image": recall_at(captions @ images.T),
              "image_to_text": recall_at(images @ captions.T)}
    true_scores = (images * captions).sum(dim=1)
    sensitivity = {}
    for kind in kinds:
        rng = np.random.default_rng([seed, 0x53454E53, list(SENSITIVITY_KINDS).index(kind)])
        wrong = encode_texts(backbone, [perturbed_caption(s, kind, rng) for s in scenes])
        sensitivity[kind] = round(float((true_scores > (images * wrong).sum(dim=1)).float().mean()), 4)
    result["sensitivity"] = sensitivity
    targets = [sensitivity[k] for k in TARGET_KINDS if k in sensitivity]
    if targets:
        result["sensitivity_mean"] = round(float(np.mean(targets)), 4)
        result["sensitivity_min"] = round(float(min(targets)), 4)
    return result
