"""Pic2Word and Context-I2W: ``{'epoch', 'name', 'state_dict', 'state_dict_img2text', 'optimizer'}``.

Both save the training checkpoint of google-research/composed_image_retrieval
(``src/main.py``): ``state_dict`` is the (frozen) CLIP, ``state_dict_img2text``
the mapping network, ``module.``-prefixed when saved from DDP (the official
loader strips it). Pic2Word's network is ``IM2TEXT`` (``layers.{i}.0`` Linear
-> Dropout -> ReLU, ``fc_out``); Context-I2W's is ``IM2TEXT_OWM_Attn``
(Pter61/context-i2w, ``model/model.py``). Only ``state_dict_img2text`` is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir.errors import ZscirError
from zscir.importers.base import (Imported, Importer, container_entry, count_indexed, exact_ratio, require_keys,
                                  strip_prefix, tensor_dict)


def mlp_keys(prefix: str, n: int, out: str) -> list[str]:
    return [f"{prefix}{i}.0.{p}" for i in range(n) for p in ("weight", "bias")] + [f"{out}.weight", f"{out}.bias"]


class Img2TextImporter(Importer):
    container_key = "state_dict_img2text"

    def state(self, obj: Any, path: Path) -> dict:
        state = strip_prefix(tensor_dict(container_entry(obj, self.container_key, path, self.title), path,
                                         f"entry {self.container_key!r}"))
        return state

    def ignored(self, obj) -> dict:
        other = sorted(k for k in obj if k != self.container_key)
        return {"ignored_entries": other, "epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None}


class Pic2WordImporter(Img2TextImporter):
    name = "pic2word"
    method = "pic2word"
    title = "Pic2Word"
    url = ("https://drive.google.com/file/d/1IxRi2Cj81RxMu0ViT4q4nkfyjbSHm1dF/view "
           "(README of google-research/composed_image_retrieval)")
    license = "Apache-2.0 (the repository's license; the README gives no separate license for the weights)"
    paper = "Saito et al., Pic2Word: Mapping Pictures to Words for Zero-shot Composed Image Retrieval, CVPR 2023"
    backbones = {(768, 768): ("ViT-L-14", "openai"), (512, 512): ("ViT-B-32", "openai")}

    def convert(self, obj: Any, path: Path) -> Imported:
        state = self.state(obj, path)
        n = count_indexed(state, "layers.")
        if not n:
            raise ZscirError(f"{path}: not a Pic2Word network: no 'layers.0.0.weight' in {self.container_key!r}")
        keys = mlp_keys("layers.", n, "fc_out")
        require_keys(state, keys, path, "Pic2Word IM2TEXT")
        middle, embed = (int(x) for x in state["layers.0.0.weight"].shape)
        config = {"method": "pic2word", "middle_dim": middle, "n_layer": n, "dropout": 0.1}
        dims = {"embed_dim": embed, "token_dim": int(state["fc_out.weight"].shape[0]), "vision_width": None}
        return Imported(config, {k: state[k] for k in keys}, dims, {k: k for k in keys}, self.ignored(obj))


CONTEXT_FIXED = (["to_c.weight", "W_R.weight_g", "W_R.weight_v", "proj", "proj_local", "local_gate",
                  "VT_Extractor.latents", "VT_Extractor.norm.weight", "VT_Extractor.norm.bias"]
                 + [f"{ln}.{p}" for ln in ("ln_post", "ln_post_local") for p in ("weight", "bias")])
CONTEXT_LAYER = ([f"0.{n}.{p}" for n in ("norm_media", "norm_latents") for p in ("weight", "bias")]
                 + ["0.to_q.weight", "0.to_kv.weight", "0.to_out.weight", "1.0.weight", "1.0.bias", "1.1.weight",
                    "1.3.weight"])
DIM_HEAD = 64   # ContextDependantAttention's default; the weights give only heads * dim_head


class ContextI2WImporter(Img2TextImporter):
    name = "context-i2w"
    method = "context-i2w"
    title = "Context-I2W"
    url = "https://drive.google.com/file/d/1yHv9SgY1-2KrAvd2MmFqH40x4P3gLotQ/view (README of Pter61/context-i2w)"
    license = ("Apache-2.0 (the repository's LICENSE file; its README badge says MIT; no separate license for "
               "the weights)")
    paper = "Tang et al., Context-I2W: Mapping Images to Context-dependent Words for Accurate ZS-CIR, AAAI 2024"
    backbones = {(768, 768): ("ViT-L-14", "openai")}

    def convert(self, obj: Any, path: Path) -> Imported:
        state = self.state(obj, path)
        n = count_indexed(state, "layers.")
        depth = count_indexed(state, "VT_Extractor.layers.")
        if not n or not depth or "to_c.weight" not in state:
            raise ZscirError(f"{path}: not a Context-I2W network: expected 'to_c.weight', 'VT_Extractor.layers.0.*' "
                             f"and 'layers.0.0.*' in {self.container_key!r}")
        keys = (CONTEXT_FIXED + mlp_keys("layers.", n, "fc_out") + mlp_keys("layers_local.", n, "fc_out_local")
                + [f"VT_Extractor.layers.{i}.{k}" for i in range(depth) for k in CONTEXT_LAYER])
        require_keys(state, keys, path, "Context-I2W IM2TEXT_OWM_Attn")
        vision, text = (int(x) for x in state["to_c.weight"].shape)
        inner = int(state["VT_Extractor.layers.0.0.to_q.weight"].shape[0])
        config = {"method": "context-i2w", "text_width": text,
                  "middle_dim": int(state["layers.0.0.weight"].shape[0]), "n_layer": n, "dropout": 0.1,
                  "depth": depth, "heads": exact_ratio(inner, DIM_HEAD, "attention width", path), "dim_head": DIM_HEAD,
                  "num_latents": int(state["VT_Extractor.latents"].shape[0]),
                  "ff_mult": exact_ratio(int(state["VT_Extractor.layers.0.1.1.weight"].shape[0]), vision,
                                         "feed-forward width", path)}
        if config["num_latents"] != 4:
            raise ZscirError(f"{path}: {config['num_latents']} latents; the official pooling (AvgPool2d((4, 1))) "
                             f"is defined for 4")
        dims = {"embed_dim": text, "token_dim": int(state["fc_out.weight"].shape[0]), "vision_width": vision}
        notes = {**self.ignored(obj), "heads": f"{config['heads']} x {DIM_HEAD} (official default head width)"}
        return Imported(config, {k: state[k] for k in keys}, dims, {k: k for k in keys}, notes)


PIC2WORD = Pic2WordImporter()
CONTEXT_I2W = ContextI2WImporter()
