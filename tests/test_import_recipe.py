"""`zscir pretrain --recipe fti4cir-official`: the official run's settings, and its caption splitter."""

import sys
import types
from dataclasses import dataclass

import pytest

from zscir.data.splitter import OfficialFTI4CIRSplitter, get_splitter
from zscir.errors import ZscirError
from zscir.training.pretrain import PretrainConfig, apply_recipe


@dataclass
class Tok:
    text: str
    pos_: str


NOUNS = {"man", "wave", "dog", "dogs", "table", "hat", "surfboard"}


def fake_nlp(text):
    """A stand-in for spaCy: splits "'s" off as its own token, tags NOUN from a word list."""
    out = []
    for w in text.split():
        parts = [w[:-2], w[-2:]] if w.endswith("'s") else [w]
        out += [Tok(p, "NOUN" if p in NOUNS else "X") for p in parts]
    return out


@pytest.mark.parametrize("caption,want", [
    ("a man riding a wave on top of a surfboard", ("a man", "riding a wave on top of a surfboard")),
    ("a man riding a wave wave wave", ("a man", "riding a wave")),       # trailing repeats dropped
    ("a dog on grass grass grass", ("a dog", "on grass")),               # 4 words left: kept
    ("a dog on on on", None),                                            # 3 words left: dropped
    ("two dogs", None),
    ("running very fast and far away", ("ru", "nning very fast and far away")),   # no noun: split by characters
    ("the man's hat is on a table", ("the man", "'s hat is on a table")),         # spaCy tokens, space-joined
])
def test_official_split(caption, want):
    assert OfficialFTI4CIRSplitter(fake_nlp).split(caption) == want


def test_official_splitter_needs_spacy_one_line(monkeypatch):
    get_splitter.cache_clear()
    monkeypatch.setitem(sys.modules, "spacy", None)          # not installed
    with pytest.raises(ZscirError) as err:
        get_splitter("fti4cir-official")
    assert "pip install spacy" in str(err.value) and "\n" not in str(err.value)
    fake = types.ModuleType("spacy")
    fake.load = lambda name: (_ for _ in ()).throw(OSError(f"[E050] Can't find model '{name}'"))
    monkeypatch.setitem(sys.modules, "spacy", fake)          # installed, without its English pipeline
    get_splitter.cache_clear()
    with pytest.raises(ZscirError, match="en_core_web_sm"):
        get_splitter("fti4cir-official")
    fake.load = lambda name: fake_nlp if name == "en_core_web_sm" else None
    get_splitter.cache_clear()
    assert get_splitter("fti4cir-official").split("a man riding a wave") == ("a man", "riding a wave")
    get_splitter.cache_clear()


def test_recipe_fills_what_the_user_did_not_set():
    cfg, run, record = apply_recipe("fti4cir-official", PretrainConfig(), {"preprocess": "targetpad"},
                                    explicit={"epochs", "clip_name"}, cuda=True)
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.lr_decay_epoch, cfg.mixed_precision) == (4e-5, 256, 42, 10, "fp16")
    assert cfg.epochs == PretrainConfig().epochs        # given on the command line: kept
    assert run["splitter"] == "fti4cir-official" and run["pretrained"] == "openai" and "clip_name" not in run
    assert record["overridden"] == ["clip_name", "epochs"]
    cpu, _, rec = apply_recipe("fti4cir-official", PretrainConfig(), {}, explicit=set(), cuda=False)
    assert cpu.mixed_precision == "no" and any("fp32" in n for n in rec["notes"])
    assert cpu.epochs == 80 and PretrainConfig().epochs == 60     # zscir's defaults stay as they are
    with pytest.raises(ZscirError, match="unknown recipe"):
        apply_recipe("nope", PretrainConfig(), {}, set())


def test_recipe_cli_loads_the_official_backbone(capsys, monkeypatch):
    from zscir.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--recipe", "fti4cir-official", "--max-steps", "1", "--out", "/nonexistent/never"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "recipe fti4cir-official:" in err
    assert err.strip().splitlines()[-1].startswith("error: weights for ViT-L-14 / openai are not available offline")
