"""Which shipped checkpoints a command picks up by default: kind, method and backbone must all match."""

import json

import torch

from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint
from zscir.world.shipped import shipped_checkpoints, shipped_fti_checkpoint


def _save(folder, name, config, backbone):
    torch.manual_seed(0)
    net = create_mapping_network(config, backbone_dims(backbone))
    save_mapping_checkpoint(folder / name, net, get_mapping_config(config), backbone)
    return folder / f"{name}.safetensors"


def test_shipped_checkpoints_filter_by_backbone_kind_and_method(tmp_path, tiny_backbone):
    single = _save(tmp_path, "a_single", "single-tiny", tiny_backbone)
    fti = _save(tmp_path, "b_fti", "fti4cir-tiny", tiny_backbone)
    other = _save(tmp_path, "c_other_backbone", "fti4cir-tiny", tiny_backbone)
    meta = json.loads(other.with_suffix(".json").read_text())
    meta["backbone"] = {"model": "zscir-tiny-test", "pretrained": "sha256:" + "0" * 64}
    other.with_suffix(".json").write_text(json.dumps(meta))
    (tmp_path / "d_not_a_checkpoint.json").write_text('{"hello": 1}')
    (tmp_path / "e_broken.json").write_text("{")
    orphan = _save(tmp_path, "f_orphan", "fti4cir-tiny", tiny_backbone)
    orphan.unlink()  # a sidecar without its weights is not offered

    mine = tiny_backbone.identity
    assert shipped_checkpoints(mine, tmp_path) == [single, fti]
    assert shipped_checkpoints(None, tmp_path) == [single, fti, other]
    assert shipped_checkpoints(mine, tmp_path, method="fti") == [fti]
    assert shipped_checkpoints(mine, tmp_path, kinds=("supervised",)) == []
    assert shipped_fti_checkpoint({"model": "nothing", "pretrained": None}) is None
