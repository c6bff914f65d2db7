"""The SCOT-style zero-shot Combiner: its loss against a loop, its caption editors, its queries."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir.backbone import ImageFeatures
from zscir.errors import ZscirError
from zscir.models.combiner import (EditTriple, FileCaptionEditor, ScotCombiner, ScotWeights, compose_scot, edit_rng,
                                   scot_loss)
from zscir.world.captions import canonical_caption
from zscir.world.plugins_models import WorldCaptionEditor
from zscir.world.edits import apply_edits, sample_edits
from zscir.world.spec import sample_scene, spec_part
from zscir.world.texts import fine_text

TRIPLES = [
    EditTriple("a red circle", "make it blue", "a blue circle"),
    EditTriple("a green square", "add a star", "a green square and a star"),
    EditTriple("a blue circle", "make it red", "a red circle"),     # its target is item 0's caption
    EditTriple("a red square", "make it a circle", "a blue circle"),  # the same target text as item 0
]


def _network(backbone):
    torch.manual_seed(0)
    dims = {"embed_dim": backbone.embed_dim, "token_dim": backbone.token_dim, "vision_width": backbone.vision_width}
    return ScotCombiner(**dims).eval()


def test_scot_loss_matches_loop(tiny_backbone):
    b, net = tiny_backbone, _network(tiny_backbone)
    torch.manual_seed(1)
    pooled, tau = torch.randn(4, b.embed_dim), 0.07
    loss, _ = scot_loss(net, b, pooled, None, None, None, ScotWeights(tau), triples=TRIPLES)
    columns = [t.edited_caption for t in TRIPLES] + [t.caption for t in TRIPLES]
    total = 0.0
    for i, t in enumerate(TRIPLES):
        q = net(pooled[i:i + 1], b.encode_text([t.modification]))[0]
        scores = []
        for j, text in enumerate(columns):
            if j != i and text == t.edited_caption:
                continue  # the same text as the positive: not a negative
            scores.append((j, F.cosine_similarity(q, b.encode_text([text])[0], dim=0).item() / tau))
        den = sum(math.exp(s) for _, s in scores)
        total += -math.log(math.exp(dict(scores)[i]) / den)
    assert loss.item() == pytest.approx(total / 4, rel=1e-4)
    # the masking matters: item 3's positive "a blue circle" is also item 0's target, item 2's is item 0's caption
    unmasked = F.cross_entropy(
        F.normalize(net(pooled, b.encode_text([t.modification for t in TRIPLES])), dim=-1)
        @ F.normalize(b.encode_text(columns), dim=-1).T / tau, torch.arange(4))
    assert abs(unmasked.item() - loss.item()) > 1e-3
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ZscirError, match="4 images but 3 caption edits"):
        scot_loss(net, b, pooled, None, None, None, ScotWeights(), triples=TRIPLES[:3])


def test_scot_training_lowers_the_loss(tiny_backbone):
    b = tiny_backbone
    net = _network(b).train()
    torch.manual_seed(2)
    pooled = torch.randn(4, b.embed_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss, _ = scot_loss(net, b, pooled, None, None, None, ScotWeights(0.07), triples=TRIPLES)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_compose_scot_is_the_network_on_the_text_feature(tiny_backbone):
    b, net = tiny_backbone, _network(tiny_backbone)
    torch.manual_seed(3)
    ref, texts = ImageFeatures(torch.randn(2, b.embed_dim)), ["make it blue", "add a star"]
    got = compose_scot(b, net, ref, texts)
    assert got.shape == (2, b.embed_dim) and torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(got, net(ref.pooled, b.encode_text(texts)), atol=1e-6)


def _scenes(n=12):
    rng = np.random.default_rng(0)
    return {str(i): sample_scene(rng, "train") for i in range(n)}


def test_world_editor_edited_caption_is_the_canonical_caption_of_the_edited_scene():
    scenes = _scenes()
    editor = WorldCaptionEditor(scenes)
    for k, (image_id, scene) in enumerate(scenes.items()):
        triple = editor.edit(image_id, edit_rng(5, 0, k))
        # re-derive from the spec with the same draws: edits until the edited scene is a training spec
        rng = edit_rng(5, 0, k)
        while True:
            edits = sample_edits(scene, rng)
            if edits and spec_part(apply_edits(scene, edits)) == "train":
                break
        target = apply_edits(scene, edits)
        assert triple.caption == canonical_caption(scene).text
        assert triple.modification == fine_text(scene, edits, rng)
        assert triple.edited_caption == canonical_caption(target).text != triple.caption
        assert triple == editor.edit(image_id, edit_rng(5, 0, k))  # the same draws, the same triple
    assert editor.edit("0", edit_rng(5, 1, 0)) != editor.edit("0", edit_rng(5, 0, 0))  # another epoch, another edit
    record = editor.record()
    assert record["editor"] == "world" and record["num_images"] == 12 and json.loads(json.dumps(record)) == record
    with pytest.raises(ZscirError, match="no scene for image 'x'"):
        editor.edit("x", edit_rng(0, 0, 0))


def test_world_editor_from_world_reads_the_split(tmp_path):
    scenes = _scenes(4)
    rows = [{"id": int(i), "split": "unlabeled" if int(i) < 3 else "val", "role": "r", **s.to_json()}
            for i, s in scenes.items()]
    (tmp_path / "scenes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    editor = WorldCaptionEditor.from_world(tmp_path)
    assert editor.ids() == ["000000000000.png", "000000000001.png", "000000000002.png"]
    assert editor.scenes["000000000001.png"] == scenes["1"]
    by_id = WorldCaptionEditor.from_world(tmp_path, key="id")
    assert by_id.ids() == ["0", "1", "2"] and by_id.scenes["1"] == scenes["1"]
    with pytest.raises(ZscirError, match="key 'path' must be one of file, id"):
        WorldCaptionEditor.from_world(tmp_path, key="path")
    assert editor.record()["world"] == str(tmp_path)
    with pytest.raises(ZscirError, match="no images in split 'train'"):
        WorldCaptionEditor.from_world(tmp_path, split="train")


def _row(**changes):
    row = {"image": "a.jpg", "caption": "a dog", "modification": "make it a cat", "edited_caption": "a cat"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


def test_file_editor_reads_rows_and_records(tmp_path):
    path = tmp_path / "edits.jsonl"
    rows = [_row(), _row(modification="make it brown", edited_caption="a brown dog"), _row(image="b.jpg")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    editor = FileCaptionEditor(path)
    assert editor.ids() == ["a.jpg", "b.jpg"]
    drawn = {editor.edit("a.jpg", np.random.default_rng(s)).edited_caption for s in range(20)}
    assert drawn == {"a cat", "a brown dog"}
    record = editor.record()
    assert record["editor"] == "file" and record["num_edits"] == 3 and len(record["sha256"]) == 64
    with pytest.raises(ZscirError, match="no caption edit for image 'c.jpg'"):
        editor.edit("c.jpg", np.random.default_rng(0))


@pytest.mark.parametrize("line, message", [
    ("{not json", r"edits.jsonl:2: not valid JSON"),
    (json.dumps(["a", "b"]), r"edits.jsonl:2: expected a JSON object"),
    (json.dumps(_row(edited_caption=None)), r"edits.jsonl:2: field 'edited_caption' is missing"),
    (json.dumps(_row(modification="  ")), r"edits.jsonl:2: field 'modification' must be a non-empty string"),
    (json.dumps(_row(caption=3)), r"edits.jsonl:2: field 'caption' must be a non-empty string"),
    (json.dumps(_row(edited="a cat")), r"edits.jsonl:2: unknown field 'edited'"),
])
def test_file_editor_bad_rows_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + line + "\n")
    with pytest.raises(ZscirError, match=message) as err:
        FileCaptionEditor(path)
    assert "\n" not in str(err.value)


def test_file_editor_missing_or_empty_file(tmp_path):
    with pytest.raises(ZscirError, match="nothere.jsonl: no such caption-edit file"):
        FileCaptionEditor(tmp_path / "nothere.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ZscirError, match="empty.jsonl: no caption edits"):
        FileCaptionEditor(tmp_path / "empty.jsonl")


def test_prepare_training_draws_each_epochs_edits_and_leaves_out_unedited_images(tmp_path, tiny_backbone):
    from types import SimpleNamespace

    from zscir.training.scot_data import prepare_training
    from zscir.training.pretrain import PretrainConfig
    from zscir.training.pretrain_data import PretrainingSet

    path = tmp_path / "edits.jsonl"
    rows = [_row(image="a.jpg"), _row(image="a.jpg", modification="make it brown", edited_caption="a brown dog"),
            _row(image="c.jpg", caption="a cow", modification="add a hat", edited_caption="a cow in a hat")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pooled = np.arange(3 * tiny_backbone.embed_dim, dtype=np.float16).reshape(3, -1)
    base = PretrainingSet(["a.jpg", "b.jpg", "c.jpg"], ["s"] * 3, ["t"] * 3, tiny_backbone, pooled=pooled,
                          need_tokens=False)
    cfg = PretrainConfig(method="scot", seed=4, edits=str(path))
    logged = []
    data = prepare_training(cfg, base, tiny_backbone, None, tmp_path, SimpleNamespace(num_processes=1), logged.append)
    assert len(data) == 2 and data.ids == ["a.jpg", "c.jpg"] and logged == [
        "1 of 3 training images have no caption edit and are left out"]
    assert data.record["images_without_edit"] == 1 and data.record["editor"]["num_edits"] == 3
    editor = FileCaptionEditor(path)
    for epoch in (0, 1, 5):
        batch = data.batch(np.array([1, 0]), epoch)
        assert torch.equal(batch.pooled, torch.from_numpy(pooled[[2, 0]].astype(np.float32)))
        assert batch.extra["triples"] == [editor.edit("c.jpg", edit_rng(4, epoch, 2)),
                                          editor.edit("a.jpg", edit_rng(4, epoch, 0))]
    drawn = {data.batch(np.array([0]), e).extra["triples"][0].edited_caption for e in range(20)}
    assert drawn == {"a cat", "a brown dog"}  # a new draw each epoch
    with pytest.raises(ZscirError, match="trains on one process"):
        prepare_training(cfg, base, tiny_backbone, None, tmp_path, SimpleNamespace(num_processes=2), print)
    with pytest.raises(ZscirError, match="--method scot on your own images needs --edits FILE"):
        prepare_training(PretrainConfig(method="scot"), base, tiny_backbone, None, tmp_path,
                         SimpleNamespace(num_processes=1), print)
