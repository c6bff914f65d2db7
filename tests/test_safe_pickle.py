"""The allow-list unpickler: tensors and containers come back, known class names as inert stand-ins,
everything else is refused by name before anything runs."""

import collections
import fractions
import io
import pickle

import pytest
import torch
from torch import nn

from zscir.errors import ZscirError
from zscir.utils.safe_pickle import StandIn, UnsafePickleError, load_torch_file, module_state_dict


def test_state_dict_and_module_tree_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4))
    model.register_buffer("kept", torch.arange(3.0))
    model.register_buffer("dropped", torch.ones(2), persistent=False)
    half = torch.randn(2, 3).half()
    path = tmp_path / "m.pt"
    torch.save({"model": model, "half": half, "strided": torch.randn(4, 6)[:, ::2], "n": 3,
                "od": collections.OrderedDict(a=1), "s": {1, 2}}, path)
    obj = load_torch_file(path)
    assert isinstance(obj["model"], StandIn) and obj["model"].stand_in_for == "torch.nn.modules.container.Sequential"
    got, want = module_state_dict(obj["model"]), model.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype
    assert torch.equal(obj["half"], half) and obj["half"].dtype == torch.float16
    assert obj["n"] == 3 and obj["od"] == {"a": 1} and obj["s"] == {1, 2}
    assert not hasattr(obj["model"], "forward")     # inert: nothing of nn.Module came with it


def test_plain_state_dict_goes_through_weights_only(tmp_path):
    path = tmp_path / "sd.pt"
    sd = {"w": torch.randn(2, 2)}
    torch.save(sd, path)
    assert torch.equal(load_torch_file(path)["w"], sd["w"])


def test_unknown_class_refused_unless_allowed(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, path)   # a harmless class, but not on the list
    with pytest.raises(UnsafePickleError, match="'fractions.Fraction'"):
        load_torch_file(path)
    obj = load_torch_file(path, stand_ins=["fractions.Fraction"])
    assert obj["x"].stand_in_for == "fractions.Fraction"


class Evil:
    def __reduce__(self):
        return (torch.save, ({}, "/tmp/never"))


def test_torch_functions_off_the_list_refused(tmp_path):
    path = tmp_path / "e.pt"
    torch.save([Evil()], path)
    with pytest.raises(UnsafePickleError, match="'torch.serialization.save'"):
        load_torch_file(path)


def test_plain_pickle_outside_torch_format(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=2))
    assert load_torch_file(path) == {"a": [1, 2]}
    buf = io.BytesIO()
    pickle.dump(print, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ZscirError, match="builtins.print"):
        load_torch_file(path)
