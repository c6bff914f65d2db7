import json

import pytest
import torch

from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.errors import ZscirError


def test_roundtrip_and_sidecar(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_checkpoint(tmp_path / "m", state, {"config": {"width": 4}})
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert meta["config"] == {"width": 4} and meta["format_version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left


def test_mismatched_pair_detected(tmp_path):
    from safetensors.torch import save_file

    save_checkpoint(tmp_path / "a", {"w": torch.zeros(2)}, {"name": "a"})
    save_checkpoint(tmp_path / "b", {"w": torch.ones(2)}, {"name": "b"})
    (tmp_path / "b.json").write_text((tmp_path / "a.json").read_text())
    # weights written by zscir carry their own record: the stale sidecar is replaced by it
    tensors, meta = load_checkpoint(tmp_path / "b")
    assert meta["name"] == "b" and torch.equal(tensors["w"], torch.ones(2))
    # weights without that record (older zscir, other tools): the mismatch is an error
    save_file({"w": torch.full((2,), 3.0)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ZscirError, match="sha256 differs"):
        load_checkpoint(tmp_path / "b")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ZscirError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {})
    (tmp_path / "c.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ZscirError, match="not a zscir checkpoint"):
        load_checkpoint(tmp_path / "c")


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp makes 0600 files; an atomically written file must be as readable as one written with open()."""
    from zscir.utils.atomic import atomic_write_text

    atomic_write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_check_weights_file_accepts_good_weights_and_names_bad_ones(tmp_path):
    from zscir.checkpoint import check_weights_file
    from zscir.utils.paths import repo_checkpoints_dir

    check_weights_file(repo_checkpoints_dir() / "shapes_clip.safetensors")  # shipped safetensors: fine
    torch.save({"w": torch.ones(3)}, tmp_path / "sd.pt")
    check_weights_file(tmp_path / "sd.pt")                                   # a plain state dict: fine
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    check_weights_file(tmp_path / "legacy.bin")                              # the pre-zip pickle format too
    (tmp_path / "cut.safetensors").write_bytes((repo_checkpoints_dir() / "shapes_clip.safetensors").read_bytes()[:-100])
    with pytest.raises(ZscirError, match=r"--model .*cut.safetensors: not a readable safetensors file"):
        check_weights_file(tmp_path / "cut.safetensors", "--model")


def test_a_save_cut_between_its_two_renames_loads_the_new_weights_and_heals_the_sidecar(tmp_path):
    path = tmp_path / "state"
    save_checkpoint(path, {"w": torch.zeros(3)}, {"kind": "train-state", "step": 1})
    old_sidecar = (tmp_path / "state.json").read_bytes()
    save_checkpoint(path, {"w": torch.ones(3)}, {"kind": "train-state", "step": 2})
    (tmp_path / "state.json").write_bytes(old_sidecar)  # the kill came after the weights' rename
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 2 and torch.equal(tensors["w"], torch.ones(3))
    healed = json.loads((tmp_path / "state.json").read_text())
    assert healed["step"] == 2 and healed["save_id"] == meta["save_id"]
    tensors, meta = load_checkpoint(path)  # and it stays loadable
    assert meta["step"] == 2


def test_damaged_weights_of_the_same_save_are_still_refused(tmp_path):
    weights = save_checkpoint(tmp_path / "m", {"w": torch.arange(64, dtype=torch.float32)}, {"kind": "mapping"})
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data; the header (and its save_id) is intact
    weights.write_bytes(bytes(data))
    with pytest.raises(ZscirError, match="sha256 differs"):
        load_checkpoint(tmp_path / "m")
