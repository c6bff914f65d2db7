"""FTI4CIR (Lin et al., SIGIR 2024): ``FTI4CIR_model.pth``, a ``torch.save`` of the whole ``IMG2TEXT`` module.

The official repository (ZiChao111/FTI4CIR, ``src/train.py``) saves the module
itself; its classes live in ``i2t_model`` (``IMG2TEXT``, ``Phi``) and
``MHTransformer`` (``Transformer``, ``TransformerLayer``, ``MultiHeadAttention``,
``MlpTransformer``), imported as top-level modules or as ``src.i2t_model`` /
``src.MHTransformer``. The file is read with inert stand-ins for those names
(nothing of it runs); a plain state dict with the same keys is accepted too.

Official -> zscir names (``FTINetwork``)::

    templates [1, n, W]                                  -> queries
    transformer.layers.i.norm1 / norm2                   -> blocks.i.norm1 / norm2
    transformer.layers.i.attn.to_queries (no bias)       -> blocks.i.attn.to_q
    transformer.layers.i.attn.to_keys_values (no bias)   -> blocks.i.attn.to_kv   (keys first, values second)
    transformer.layers.i.attn.project                    -> blocks.i.attn.out
    transformer.layers.i.mlp.fc1 / fc2 (ReLU between)    -> blocks.i.mlp.0 / mlp.2
    local_atte_fc.0 (Linear + Sigmoid)                   -> to_latent.0
    phi_s.layers.{0,3,6}, phi_a.layers.{0,3,6}           -> the same names

and the attributes ``num_k``, ``topk``, ``epsilon`` become the config's
``num_queries``, ``topk``, ``epsilon``; the heads come from
``transformer.layers.0.attn.num_heads``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir.errors import ZscirError
from zscir.importers.base import Imported, Importer, count_indexed, exact_ratio, require_keys, strip_prefix, tensor_dict
from zscir.utils.safe_pickle import StandIn, module_state_dict, stand_in_name

MODULE_NAMES = ("i2t_model", "src.i2t_model")
TRANSFORMER_MODULES = ("MHTransformer", "src.MHTransformer")
CLASSES = ([f"{m}.{c}" for m in MODULE_NAMES for c in ("IMG2TEXT", "Phi")]
           + [f"{m}.{c}" for m in TRANSFORMER_MODULES
              for c in ("Transformer", "TransformerLayer", "MultiHeadAttention", "MlpTransformer")]
           + ["torch.nn.functional.relu"])

LAYER_KEYS = {  # official suffix -> zscir suffix, per transformer layer
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attn.to_queries.weight": "attn.to_q.weight", "attn.to_keys_values.weight": "attn.to_kv.weight",
    "attn.project.weight": "attn.out.weight", "attn.project.bias": "attn.out.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
    "mlp.fc2.weight": "mlp.2.weight", "mlp.fc2.bias": "mlp.2.bias",
}
FIXED_KEYS = {"templates": "queries", "local_atte_fc.0.weight": "to_latent.0.weight",
              "local_atte_fc.0.bias": "to_latent.0.bias",
              **{f"{phi}.layers.{i}.{p}": f"{phi}.layers.{i}.{p}"
                 for phi in ("phi_s", "phi_a") for i in (0, 3, 6) for p in ("weight", "bias")}}
DEFAULTS = {"num_k": 24, "topk": 12, "epsilon": 0.05, "num_heads": 1}   # train.py's defaults


def _attr(obj: Any, dotted: str):
    for part in dotted.split("."):
        d = getattr(obj, "__dict__", {})
        obj = d.get(part) if part in d else (d.get("_modules") or {}).get(part)
        if obj is None:
            return None
    return obj


class FTI4CIRImporter(Importer):
    name = "fti4cir"
    method = "fti"
    title = "FTI4CIR"
    url = "https://drive.google.com/file/d/1WYeBONqZX78IbJ8Jd4qtzZ1zy_ekX-i2/view (README of ZiChao111/FTI4CIR)"
    license = "none stated (the repository has no LICENSE file): ask the authors before redistributing"
    paper = "Lin et al., Fine-grained Textual Inversion Network for Zero-Shot Composed Image Retrieval, SIGIR 2024"
    stand_ins = tuple(CLASSES)
    backbones = {(768, 768): ("ViT-L-14", "openai"), (512, 512): ("ViT-B-32", "openai")}

    def convert(self, obj: Any, path: Path) -> Imported:
        notes: dict[str, Any] = {}
        if isinstance(obj, StandIn):
            cls = stand_in_name(obj)
            if cls.rsplit(".", 1)[-1] != "IMG2TEXT":
                raise ZscirError(f"{path}: not an FTI4CIR model: the file holds a {cls}, expected i2t_model.IMG2TEXT")
            state = module_state_dict(obj)
            attrs = {k: obj.__dict__.get(k) for k in ("num_k", "topk", "epsilon")}
            heads = _attr(obj, "transformer.layers.0.attn")
            attrs["num_heads"] = getattr(heads, "__dict__", {}).get("num_heads")
            act = _attr(obj, "transformer.layers.0.mlp.act")
            if act is not None and getattr(act, "stand_in_for", "torch.nn.functional.relu") != "torch.nn.functional.relu":
                raise ZscirError(f"{path}: the transformer MLP uses {act.stand_in_for}, zscir's FTI network uses ReLU")
            if getattr(_attr(obj, "transformer"), "__dict__", {}).get("enc_dec"):
                notes["enc_dec"] = "true (its layers still attend over the same sequence: no difference)"
            notes["saved_class"] = cls
        else:
            state = tensor_dict(obj.get("state_dict", obj) if isinstance(obj, dict) else obj, path, "FTI4CIR file")
            attrs = {}
            notes["saved_class"] = "state dict (num_k from templates; topk, epsilon, heads: official defaults)"
        state = strip_prefix(state)
        missing = [k for k, v in attrs.items() if v is None]
        for k in missing:
            attrs[k] = DEFAULTS[k]
        if missing:
            notes["defaults_used"] = missing
        layers = count_indexed(state, "transformer.layers.")
        expected = list(FIXED_KEYS) + [f"transformer.layers.{i}.{k}" for i in range(layers) for k in LAYER_KEYS]
        if not layers:
            raise ZscirError(f"{path}: not an FTI4CIR model: no 'transformer.layers.0.*' weights")
        require_keys(state, expected, path, "FTI4CIR")
        source_keys = {FIXED_KEYS[k]: k for k in FIXED_KEYS}
        for i in range(layers):
            for k, z in LAYER_KEYS.items():
                source_keys[f"blocks.{i}.{z}"] = f"transformer.layers.{i}.{k}"
        zstate = {z: state[s] for z, s in source_keys.items()}
        templates = state["templates"]
        if templates.dim() != 3 or templates.shape[0] != 1:
            raise ZscirError(f"{path}: 'templates' should have shape [1, num_k, width], got {list(templates.shape)}")
        num_k, width = int(templates.shape[1]), int(templates.shape[2])
        if attrs["num_k"] != num_k:
            raise ZscirError(f"{path}: attribute num_k={attrs['num_k']} but 'templates' holds {num_k} queries")
        embed = int(state["phi_s.layers.0.weight"].shape[1])
        token = int(state["phi_s.layers.6.weight"].shape[0])
        hidden = int(state["phi_s.layers.0.weight"].shape[0])
        mlp_hidden = int(state["transformer.layers.0.mlp.fc1.weight"].shape[0])
        config = {"method": "fti", "num_queries": num_k, "layers": layers, "heads": int(attrs["num_heads"]),
                  "mlp_ratio": exact_ratio(mlp_hidden, width, "transformer MLP width", path),
                  "topk": int(attrs["topk"]), "epsilon": float(attrs["epsilon"]),
                  "hidden_mult": exact_ratio(hidden, embed, "phi hidden width", path), "dropout": 0.5}
        if width % config["heads"]:
            raise ZscirError(f"{path}: width {width} is not divisible by num_heads {config['heads']}")
        dims = {"embed_dim": embed, "token_dim": token, "vision_width": width}
        return Imported(config, zstate, dims, source_keys, notes)


IMPORTER = FTI4CIRImporter()
