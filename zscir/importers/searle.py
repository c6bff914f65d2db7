"""SEARLE and LinCIR: ``{'Phi': state_dict}`` with keys ``layers.{0,3,6}.{weight,bias}``.

SEARLE (miccunifi/SEARLE, ``hubconf.py``) loads ``SEARLE_ViT-B32.pt`` /
``SEARLE_ViT-L14.pt`` as ``torch.load(...)['Phi']`` into ``Phi(input_dim,
4 * input_dim, token_dim, dropout=0.5)``: Linear -> GELU -> Dropout, twice, then
Linear. Its training checkpoints hold more entries (an optimizer, a grad
scaler, a pickled ``pathlib`` path): only ``Phi`` is read, the path becomes an
inert stand-in. LinCIR (navervision/lincir, ``validate.py``) loads
``lincir_large.pt`` etc. the same way (``Phi(projection_dim, 4 * projection_dim,
hidden_size)``). Both compose "a photo of $ that {caption}" from the pseudo-word
of the reference image's (unnormalised) CLIP feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir.importers.base import Imported, Importer, container_entry, exact_ratio, require_keys, strip_prefix, tensor_dict

PHI_KEYS = [f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


class PhiImporter(Importer):
    container_key = "Phi"

    def convert(self, obj: Any, path: Path) -> Imported:
        state = strip_prefix(tensor_dict(container_entry(obj, self.container_key, path, self.title), path,
                                         f"entry {self.container_key!r}"))
        require_keys(state, PHI_KEYS, path, f"{self.title} Phi")
        embed, hidden = (int(x) for x in reversed(state["layers.0.weight"].shape))
        token = int(state["layers.6.weight"].shape[0])
        config = {"method": self.method, "hidden_mult": exact_ratio(hidden, embed, "Phi hidden width", path),
                  "dropout": 0.5}
        source_keys = {f"phi.{k}": k for k in PHI_KEYS}
        other = sorted(k for k in obj if k != self.container_key) if isinstance(obj, dict) else []
        notes = {"ignored_entries": other} if other else {}
        return Imported(config, {z: state[s] for z, s in source_keys.items()},
                        {"embed_dim": embed, "token_dim": token, "vision_width": None}, source_keys, notes)


class SEARLEImporter(PhiImporter):
    name = "searle"
    method = "searle"
    title = "SEARLE"
    url = "https://github.com/miccunifi/SEARLE/releases/download/weights/SEARLE_ViT-L14.pt (or SEARLE_ViT-B32.pt)"
    license = "CC BY-NC 4.0"
    license_note = "SEARLE weights are licensed CC BY-NC 4.0: non-commercial use only"
    paper = "Baldrati et al., Zero-Shot Composed Image Retrieval with Textual Inversion, ICCV 2023"
    backbones = {(512, 512): ("ViT-B-32", "openai"), (768, 768): ("ViT-L-14", "openai")}
    same_format_as = ("lincir",)


class LinCIRImporter(PhiImporter):
    name = "lincir"
    method = "lincir"
    title = "LinCIR"
    url = "https://huggingface.co/navervision/zeroshot-cir-models (lincir_large.pt, lincir_huge.pt, lincir_giga.pt)"
    license = "CC BY-NC 4.0"
    license_note = "LinCIR weights are licensed CC BY-NC 4.0: non-commercial use only"
    paper = "Gu et al., Language-only Training of Zero-shot Composed Image Retrieval, CVPR 2024"
    # large: openai/clip-vit-large-patch14; huge: laion/CLIP-ViT-H-14-laion2B-s32B-b79K; giga: CLIP ViT-bigG-14 LAION-2B
    backbones = {(768, 768): ("ViT-L-14", "openai"), (1024, 1024): ("ViT-H-14", "laion2b_s32b_b79k"),
                 (1280, 1280): ("ViT-bigG-14", "laion2b_s39b_b160k")}
    same_format_as = ("searle",)


SEARLE = SEARLEImporter()
LINCIR = LinCIRImporter()
