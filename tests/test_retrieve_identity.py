"""No silent substitutions in index / retrieve / eval (issue 13, "Wrong results without a word").

- the reference is left out of its own results by content (a copy or a symlink of it in the
  gallery), and by explicit ids through the Python API (``exclude_ids``);
- an index whose recorded ``--model`` has moved is an error, not the shipped FTI checkpoint;
- ``--clip NAME`` without ``--pretrained`` is an error (random weights need ``--pretrained none``);
- ``--device`` is validated and honoured, with the default backbone too;
- ``--kind ivf`` on a tiny gallery says why it uses exact search;
- ``zscir index`` with no ``--clip`` says that the shapes-world model is in use (stderr and JSON).

Each test fails on the code before issue 13.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from zscir.errors import ZscirError
from _images import draw_image as draw
from _cli import one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny CLIP weights file, an FTI checkpoint on it, and a gallery of 10 images (+ a copy and a symlink of a ref)."""
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone
    from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint

    root = tmp_path_factory.mktemp("identity")
    torch.manual_seed(0)
    model = load_backbone("zscir-tiny-test", None).model
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    bb = load_backbone("zscir-tiny-test", str(weights))
    cfg = get_mapping_config("fti4cir-tiny")
    torch.manual_seed(1)
    fti = save_mapping_checkpoint(root / "models" / "fti", create_mapping_network(cfg, backbone_dims(bb)), cfg, bb)
    images = root / "gallery"
    images.mkdir()
    paths = [draw(images / f"g{i:02d}.png", i) for i in range(10)]
    ref = draw(root / "reference.png", 42)  # outside the gallery ...
    shutil.copy(ref, images / "copy_of_reference.png")  # ... with a copy
    os.symlink(ref, images / "link_to_reference.png")  # ... and a symlink in it
    return {"root": root, "weights": str(weights), "bb": bb, "fti": str(fti), "images": images, "paths": paths,
            "ref": ref, "cli": ["--clip", "zscir-tiny-test", "--pretrained", str(weights)]}


@pytest.fixture(scope="module")
def index(env):
    from zscir.index.gallery import build_index

    out = env["root"] / "index"
    build_index(out, env["bb"], images=env["images"], progress=False)
    return out


def test_reference_excluded_by_content_identity(env, index):
    """Why: "The reference comes back as a result when the gallery holds a symlink to it" (or a copy)."""
    from zscir.resolve import load_retriever

    r = load_retriever(index, "image", backbone=env["bb"])
    kept = r.search(env["ref"], "anything", k=4, exclude_reference=False)
    assert {kept[0].id, kept[1].id} == {"copy_of_reference.png", "link_to_reference.png"}
    assert kept[0].score > 0.999 and kept[1].score > 0.999
    hits = r.search(env["ref"], "anything", k=4)
    assert [h.id for h in hits] == [h.id for h in kept[2:]] + [h.id for h in
                                                                r.search(env["ref"], "anything", k=6,
                                                                         exclude_reference=False)[4:6]]
    assert len(hits) == 4 and not {"copy_of_reference.png", "link_to_reference.png"} & {h.id for h in hits}
    # a gallery image as the reference: its copy would be excluded too, so here only itself
    own = r.search(env["paths"][3], "anything", k=3)
    assert "g03.png" not in [h.id for h in own] and len(own) == 3


def test_exclude_ids_through_the_api(env, index):
    """Deliver 5: the reference (or anything else) excluded by an explicit id, e.g. for an in-memory image."""
    from zscir.resolve import load_retriever

    r = load_retriever(index, "image", backbone=env["bb"])
    image = Image.open(env["paths"][5]).convert("RGB")  # in memory: no file, no content hash
    plain = r.search(image, "anything", k=3)
    assert plain[0].id == "g05.png"  # an in-memory image is not recognised by itself ...
    hits = r.search(image, "anything", k=3, exclude_ids=["g05.png"])  # ... so its id is given
    assert [h.id for h in hits] == [h.id for h in r.search(image, "anything", k=4)][1:]
    many = r.search_many([(image, "anything"), (env["paths"][1], "anything")], k=3,
                         exclude_ids=[["g05.png", plain[1].id], None])
    assert [h.id for h in many[0].hits] == [h.id for h in r.search(image, "anything", k=5)][2:5]
    assert [h.id for h in many[1].hits] == [h.id for h in r.search(env["paths"][1], "anything", k=3)]
    with pytest.raises(ZscirError, match=r"exclude_ids: 'nope\.png' is not an image id"):
        r.search(image, "anything", exclude_ids=["nope.png"])


def test_moved_recorded_model_is_an_error(env, tmp_path, capsys):
    """Why: "An index whose recorded `--model` has moved silently uses the shipped FTI checkpoint"."""
    from zscir.resolve import load_retriever
    from zscir.index.gallery import build_index

    fti = Path(env["fti"])
    moved_dir = tmp_path / "models"
    shutil.copytree(fti.parent, moved_dir)
    model = moved_dir / fti.name
    out = tmp_path / "idx"
    build_index(out, env["bb"], images=env["images"], progress=False, model=str(model))
    assert load_retriever(out).encoder.name == "fti"
    shutil.rmtree(moved_dir)
    with pytest.raises(ZscirError, match=r"built for the query model .* which no longer exists: pass --model"):
        load_retriever(out)
    code, _, err = run(["retrieve", "--index", str(out), "--ref", str(env["paths"][0]), "--text", "red"], capsys)
    one_line_error(code, err, r"no longer exists")


def test_clip_without_pretrained_is_an_error_everywhere(env, index, tmp_path, capsys):
    """Why: "`--clip NAME` without `--pretrained` silently uses random weights"."""
    for args in (["index", "--images", str(env["images"]), "--out", str(tmp_path / "i1")],
                 ["retrieve", "--index", str(index), "--model", "image", "--ref", str(env["paths"][0]), "--text", "x"],
                 ["eval", "shapes", "--model", "sum"]):
        code, _, err = run(args + ["--clip", "zscir-tiny-test"], capsys)
        one_line_error(code, err, r"--clip zscir-tiny-test needs --pretrained TAG\|FILE.*--pretrained none")
    assert not (tmp_path / "i1").exists()
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "i2"), "--clip",
                          "zscir-tiny-test", "--pretrained", "none", "--json", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["backbone"]["identity"]["pretrained"].startswith("random-init:")  # asked for, and said


def test_device_validated_and_honoured(env, index, tmp_path, capsys):
    """Why: "`--device cuda` ... reported as weights not available offline; with the default backbone `--device banana` is ignored"."""
    cases = [["index", "--images", str(env["images"]), "--out", str(tmp_path / "i")],  # default backbone
             ["index", "--images", str(env["images"]), "--out", str(tmp_path / "i"), *env["cli"]],
             ["retrieve", "--ref", str(env["paths"][0]), "--text", "x"],  # default backbone and gallery
             ["retrieve", "--index", str(index), "--model", "image", *env["cli"], "--ref", str(env["paths"][0]),
              "--text", "x"],
             ["eval", "shapes", "--model", "sum"]]
    for args in cases:
        code, _, err = run(args + ["--device", "banana"], capsys)
        one_line_error(code, err, r"--device banana: expected cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            code, _, err = run(args + ["--device", "cuda"], capsys)
            one_line_error(code, err, r"--device cuda: no CUDA device available")
    assert not (tmp_path / "i").exists()
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "ok"), *env["cli"],
                          "--device", "cpu", "--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["backbone"]["device"] == "cpu", err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_is_honoured(env, tmp_path, capsys):
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "gpu"), *env["cli"],
                          "--device", "cuda", "--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["backbone"]["device"].startswith("cuda"), err
    code, out, err = run(["retrieve", "--index", str(tmp_path / "gpu"), "--model", "image", *env["cli"],
                          "--device", "cuda", "--ref", str(env["paths"][0]), "--text", "x", "--json"], capsys)
    assert code == 0, err


def test_ivf_on_a_tiny_gallery_says_why_it_is_exact(env, tmp_path, capsys):
    """Deliver 5: `--kind ivf` on a tiny gallery says why it falls back."""
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "ivf"), *env["cli"],
                          "--kind", "ivf", "--json", "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kind"] == "flat" and "12 images are too few" in summary["params"]["fallback_reason"]
    assert "--kind ivf: 12 images are too few for an approximate ivf index" in err


def test_index_without_clip_says_the_world_model_is_in_use(env, tmp_path, capsys):
    """Why: "`zscir index --images photos/` with no `--clip` today indexes real photos with it without a word"."""
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "w"), "--json",
                          "--no-progress"], capsys)
    assert code == 0, err
    backbone = json.loads(out)["backbone"]
    assert backbone["shapes_world_model"] is True and "--clip ViT-L-14 --pretrained openai" in backbone["notice"]
    assert "shapes world's CLIP" in err and "72-px" in err and "--clip NAME --pretrained" in err
    code, out, err = run(["index", "--images", str(env["images"]), "--out", str(tmp_path / "c"), *env["cli"],
                          "--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["backbone"]["shapes_world_model"] is False and "shapes world" not in err
