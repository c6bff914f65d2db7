"""Importing untrusted files: crafted tensor records, NaN weights, a zip bomb, a bad --pretrained and the
wrong --from are refused (or stated) in one line, never a traceback or a silently wrong checkpoint."""

from __future__ import annotations

import collections
import json
import os
import pickle
import subprocess
import sys
import types
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.cli import main
from zscir.errors import ZscirError
from zscir.importers import import_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def phi_state(d_in, hidden, d_out):
    torch.manual_seed(1)
    return {"layers.0.weight": torch.randn(hidden, d_in), "layers.0.bias": torch.randn(hidden),
            "layers.3.weight": torch.randn(hidden, hidden), "layers.3.bias": torch.randn(hidden),
            "layers.6.weight": torch.randn(d_out, hidden), "layers.6.bias": torch.randn(d_out)}


@pytest.fixture
def phi(tiny_backbone):
    return phi_state(tiny_backbone.embed_dim, 4 * tiny_backbone.embed_dim, tiny_backbone.token_dim)


def cli_error(args, capsys) -> str:
    """The one stderr line of a failing CLI command (exit 1, no traceback)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert done.value.code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


class OddTensor:
    """Pickles as a tensor record with the given size and stride over a real storage (what a crafted file holds)."""

    def __init__(self, tensor, size, stride):
        self.tensor, self.size, self.stride = tensor, size, stride

    def __reduce__(self):
        with warnings.catch_warnings():  # TypedStorage is deprecated, and what torch.save writes for a tensor
            warnings.simplefilter("ignore")
            storage = self.tensor.storage()
        return (torch._utils._rebuild_tensor_v2, (storage, 0, self.size, self.stride, False, collections.OrderedDict()))


@pytest.mark.parametrize("size_stride", [((-1, None), None), (None, (-1, 1))], ids=["negative-size", "negative-stride"])
def test_a_tensor_with_negative_size_or_stride_is_one_line(tmp_path, tiny_backbone, phi, capsys, size_stride):
    weight = phi["layers.0.weight"]
    size = (-weight.shape[0], weight.shape[1]) if size_stride[0] else tuple(weight.shape)
    stride = (-weight.shape[1], 1) if size_stride[1] else (weight.shape[1], 1)
    torch.save({"Phi": {**phi, "layers.0.weight": OddTensor(weight, size, stride)}}, tmp_path / "odd.pt")
    err = cli_error(["import-checkpoint", tmp_path / "odd.pt", "--from", "searle", "--out", tmp_path / "o",
                     "--clip", "zscir-tiny-test", "--pretrained", "none-tag"], capsys)
    assert str(tmp_path / "odd.pt") in err and "invalid shape" in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_refused_at_import_and_at_load(tmp_path, tiny_backbone, phi, bad):
    weight = phi["layers.3.weight"].clone()
    weight[2, 5] = bad
    torch.save({"Phi": {**phi, "layers.3.weight": weight}}, tmp_path / "nan.pt")
    with pytest.raises(ZscirError, match=r"nan\.pt: tensor 'phi\.layers\.3\.weight' holds") as err:
        import_checkpoint(tmp_path / "nan.pt", "searle", tmp_path / "o", backbone=tiny_backbone)
    assert "\n" not in str(err.value) and not (tmp_path / "o.safetensors").exists()
    # a zscir checkpoint that holds one (saved elsewhere, or its training diverged) is refused when loaded
    save_checkpoint(tmp_path / "ckpt", {"phi.w": weight}, {"kind": "mapping"})
    with pytest.raises(ZscirError, match=r"ckpt\.safetensors: tensor 'phi\.w' holds (1 NaN|0 NaN and 1 infinite)"):
        load_checkpoint(tmp_path / "ckpt")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_pretrained_missing_file_or_a_pickle_refused_in_one_line(tmp_path, phi, capsys):
    torch.save({"Phi": phi}, tmp_path / "searle.pt")
    base = ["import-checkpoint", tmp_path / "searle.pt", "--from", "searle", "--clip", "zscir-tiny-test"]
    err = cli_error(base + ["--out", tmp_path / "a", "--pretrained", tmp_path / "missing.safetensors"], capsys)
    assert "missing.safetensors" in err and "not found" in err
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    err = cli_error(base + ["--out", tmp_path / "b", "--pretrained", tmp_path / "evil.pt"], capsys)
    assert "evil.pt" in err and "--pretrained" in err
    assert not any(tmp_path.glob("[ab].*"))


def write_deflated_bomb(path: Path, declared_mib: int) -> None:
    """A torch-shaped zip whose one storage member deflates ``declared_mib`` MiB of zeros (~1000:1)."""
    torch.save({"Phi": {"w": torch.zeros(4)}}, path.with_suffix(".real"))
    with zipfile.ZipFile(path.with_suffix(".real")) as real, zipfile.ZipFile(path, "w") as out:
        for name in real.namelist():
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith("data/0") else zipfile.ZIP_STORED
            with out.open(info, "w", force_zip64=True) as f:
                if name.endswith("data/0"):
                    zeros = bytes(1 << 20)
                    for _ in range(declared_mib):
                        f.write(zeros)
                else:
                    f.write(real.read(name))


MEASURE = """
import json, resource, sys
from zscir.errors import ZscirError
from zscir.importers import import_checkpoint
import zscir.backbone.loading, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    import_checkpoint(sys.argv[1], "searle", sys.argv[2], clip="zscir-tiny-test", pretrained="none")
    message = None
except ZscirError as e:
    message = str(e)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"message": message, "grew_kib": after - before}))
"""


def test_a_zip_bomb_is_refused_from_its_directory_without_reading_it(tmp_path):
    bomb = tmp_path / "bomb.pt"
    write_deflated_bomb(bomb, 512)                # 512 MiB of zeros in well under 1 MiB
    assert bomb.stat().st_size < (1 << 20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(bomb), str(tmp_path / "o")], env=env, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["message"] and "zip bomb" in result["message"] and str(bomb) in result["message"]
    assert "archive/data/0" in result["message"] or "data/0" in result["message"]
    assert result["grew_kib"] < 64 * 1024, result   # nothing near the declared 512 MiB was allocated


def test_searle_and_lincir_files_share_a_format_the_import_says_which_prompt_it_uses(tmp_path, phi, capsys,
                                                                                       tiny_backbone):
    torch.save({"Phi": phi}, tmp_path / "phi.pt")
    for fmt, other, preprocess in (("searle", "lincir", "targetpad-1.25"), ("lincir", "searle", "lincir")):
        with pytest.raises(SystemExit) as done:
            main(["import-checkpoint", str(tmp_path / "phi.pt"), "--from", fmt, "--out", str(tmp_path / fmt),
                  "--clip", "zscir-tiny-test", "--pretrained", "none"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        note = [line for line in out.splitlines() if "note:" in line]
        assert len(note) == 1 and f"--from {other}" in note[0] and f"--from {fmt}" in note[0], out
        assert f"preprocessing {preprocess}" in note[0] and "prompt" in note[0]
        sidecar = json.loads((tmp_path / f"{fmt}.json").read_text())
        assert sidecar["source"]["format_choice"]["from"] == fmt
        assert sidecar["source"]["format_choice"]["same_file_format"] == [other]


def fti4cir_like_file(path: Path) -> None:
    """A whole pickled module as FTI4CIR's release holds one: an i2t_model.IMG2TEXT object."""
    module = types.ModuleType("i2t_model")

    class IMG2TEXT(nn.Module):
        def __init__(self):
            super().__init__()
            self.local_atte_fc = nn.Linear(4, 4)

    IMG2TEXT.__module__, IMG2TEXT.__qualname__ = "i2t_model", "IMG2TEXT"
    module.IMG2TEXT = IMG2TEXT
    sys.modules["i2t_model"] = module
    try:
        torch.save(IMG2TEXT(), path)
    finally:
        del sys.modules["i2t_model"]


@pytest.mark.parametrize("fmt", ["searle", "lincir", "pic2word"])
def test_an_fti4cir_file_with_the_wrong_from_says_what_it_looks_like(tmp_path, capsys, fmt):
    fti4cir_like_file(tmp_path / "fti.pt")
    err = cli_error(["import-checkpoint", tmp_path / "fti.pt", "--from", fmt, "--out", tmp_path / "o",
                     "--clip", "zscir-tiny-test", "--pretrained", "none"], capsys)
    assert "i2t_model.IMG2TEXT" in err and "FTI4CIR" in err and err.rstrip().endswith("pass --from fti4cir")
    assert "allow-list" not in err
