"""Mapping networks built by one factory from named configs (as open_clip builds its models).

A config (``configs/<name>.json``) holds the method and its hyper-parameters;
the widths come from the backbone, so one config serves every backbone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.errors import ZscirError
from zscir.models.methods import METHODS


class _NetworkView(Mapping):
    """method name -> network class, a live view of :data:`zscir.models.methods.METHODS` (register there)."""

    def __getitem__(self, name: str) -> type[nn.Module]:
        return METHODS[name].network

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


CONFIG_DIR = Path(__file__).parent / "configs"
NETWORKS: Mapping[str, type[nn.Module]] = _NetworkView()


def list_mapping_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_mapping_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ZscirError(f"unknown mapping-network config {name!r}: expected one of {', '.join(list_mapping_configs())}")
    return json.loads(path.read_text())


def backbone_dims(backbone) -> dict[str, int]:
    return {"embed_dim": backbone.embed_dim, "token_dim": backbone.token_dim, "vision_width": backbone.vision_width}


def create_mapping_network(config: str | dict[str, Any], dims: dict[str, int], **overrides) -> nn.Module:
    """Build the network named by ``config`` (a config name or dict) for a backbone with ``dims``."""
    cfg = dict(get_mapping_config(config) if isinstance(config, str) else config)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    method = cfg.pop("method")
    if method not in NETWORKS:
        raise ZscirError(f"unknown mapping method {method!r}: expected one of {', '.join(NETWORKS)}")
    return NETWORKS[method](**dims, **cfg)


def save_mapping_checkpoint(path, network: nn.Module, config: dict[str, Any], backbone, extra: dict | None = None):
    meta = {"kind": "mapping", "method": config["method"], "config": config, "dims": backbone_dims(backbone),
            "backbone": backbone.identity, "backbone_source": getattr(backbone, "source", None),
            "preprocess": backbone.preprocess_name, **(extra or {})}
    return save_checkpoint(path, network.state_dict(), meta)


def load_mapping_checkpoint(path, checkpoint: tuple[dict, dict] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The mapping network of checkpoint ``path`` (its ``checkpoint`` (state, meta) when already read), and its meta."""
    state, meta = checkpoint or load_checkpoint(path)
    if meta.get("kind") != "mapping":
        raise ZscirError(f"{path} is a {meta.get('kind')!r} checkpoint, not a mapping network")
    network = create_mapping_network(meta["config"], meta["dims"])
    network.load_state_dict(state)
    return network.eval(), meta
