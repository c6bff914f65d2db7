"""The shapes world generator: determinism, layout, and ground truth re-derived independently.

The ground-truth checks below deliberately do not call the generator's
matching code: they apply fine edits with their own few lines, and read a
coarse text as the set of every fine reading of it (enumerated, with values
pruned to those present in the candidate scene), then compare with the files.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from zscir.benchmarks import circo
from zscir.world import build
from zscir.world.build import WorldConfig, generate_world, read_scenes
from zscir.world.captions import POSITION_WORDS, SIZE_WORDS, canonical_caption, random_caption
from zscir.world.render import render_array, render_rng
from zscir.world.spec import BACKGROUNDS, CELLS, COLORS, PATTERNS, SHAPES, SIZES, Scene, random_scene, spec_part
from zscir.world.texts import MOVE_WORDS, NEW_PATTERN_WORDS, NEW_SIZE_WORDS, REMOVE_VERBS

SPLITS = ("val", "test", "train")
VALUES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "pattern": PATTERNS, "cell": CELLS}


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "world", WorldConfig.tiny(seed=0), workers=1,
                          progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def scenes(world) -> dict[int, dict]:
    return read_scenes(world)


def records(world: Path, split: str) -> list[dict]:
    return json.loads((world / "annotations" / f"{split}.json").read_text())


# --- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    again = generate_world(tmp_path / "again", WorldConfig.tiny(seed=0), workers=2, progress=False, log=lambda m: None)
    first, second = all_files(world), all_files(again)
    assert sorted(first) == sorted(second)
    assert sum(name.endswith(".png") for name in first) == json.loads((world / "world.json").read_text())["counts"]["images"]
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []  # annotations, captions, specs and every image's bytes (1 vs 2 render workers)

    other = all_files(generate_world(tmp_path / "other", WorldConfig.tiny(seed=1), workers=1, progress=False,
                                     log=lambda m: None))
    for name in ("annotations/val.json", "annotations/val_coarse.json", "unlabeled/captions.jsonl", "scenes.jsonl"):
        assert other[name] != first[name]
    shared_images = [n for n in first if n.endswith(".png") and n in other]
    assert shared_images and all(other[n] != first[n] for n in shared_images)


def test_renderings_of_one_spec_differ_but_are_reproducible():
    scene = random_scene(np.random.default_rng(3))
    a, b = render_array(scene, render_rng(0, 1)), render_array(scene, render_rng(0, 2))
    assert a.shape == (72, 72, 3) and a.dtype == np.uint8
    assert (a != b).mean() > 0.3  # jitter + noise: never pixel-identical
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 20  # ... yet the same picture
    assert np.array_equal(a, render_array(scene, render_rng(0, 1)))


def test_rendered_color_is_the_named_color():
    from zscir.world.render import RGB
    from zscir.world.spec import Obj

    for color in COLORS:
        scene = Scene("black", (Obj(4, "square", color, "large", "solid"),))
        centre = render_array(scene, render_rng(0, 0))[30:42, 30:42].reshape(-1, 3).mean(axis=0)
        nearest = min(RGB, key=lambda c: np.abs(np.array(RGB[c]) - centre).sum())
        assert nearest == color


# --- layout ----------------------------------------------------------------------------------------

def test_circo_loader_reads_the_world(world):
    for split in ("val", "test", "val_coarse", "test_coarse"):
        (s,) = circo.load(world, split)
        assert len(s.queries) == 16 and s.has_ground_truth
        assert all(q.reference in s.gallery_index for q in s.queries)
    fine, coarse = records(world, "val"), records(world, "val_coarse")
    assert [r["id"] for r in fine] == list(range(len(fine)))
    assert [r["id"] for r in records(world, "test")] == list(range(16))
    for f, c in zip(fine, coarse):
        assert f["gt_img_ids"][0] == f["target_img_id"] == c["gt_img_ids"][0] == c["target_img_id"]
        assert f["reference_img_id"] == c["reference_img_id"] and f["relative_caption"] != c["relative_caption"]


def test_ids_unique_and_every_image_on_disk(world, scenes):
    gallery = json.loads((world / build.GALLERY_LIST).read_text())["images"]
    train = json.loads((world / build.TRAIN_LIST).read_text())["images"]
    captions = [json.loads(line) for line in (world / build.CAPTIONS).read_text().splitlines()]
    multiturn = json.loads((world / build.MULTITURN_LIST).read_text())["images"]
    ids = [g["id"] for g in gallery] + [t["id"] for t in train] + [c["id"] for c in captions] + [m["id"] for m in multiturn]
    assert len(ids) == len(set(ids)) == len(scenes)
    for entries, folder in ((gallery, build.GALLERY_DIR), (train, build.TRAIN_DIR), (multiturn, build.MULTITURN_DIR)):
        assert all((world / folder / e["file_name"]).is_file() for e in entries)
    assert all((world / build.UNLABELED_DIR / c["file"]).is_file() for c in captions)
    train_ids = {t["id"] for t in train}
    for split in ("train", "train_coarse"):
        for r in records(world, split):
            assert {r["reference_img_id"], *r["gt_img_ids"]} <= train_ids


def test_no_scene_spec_shared_between_training_images_and_eval_gallery(scenes):
    key = lambda row: Scene.from_json(row).key  # noqa: E731
    held_out = ("eval", "multiturn")   # the multi-turn split's scenes are evaluation scenes too
    eval_keys = {key(r) for r in scenes.values() if r["split"] in held_out}
    train_keys = {key(r) for r in scenes.values() if r["split"] not in held_out}
    assert eval_keys and train_keys and not eval_keys & train_keys
    assert all(spec_part(Scene.from_json(r)) == ("eval" if r["split"] in held_out else "train") for r in scenes.values())


def test_captions_carry_their_subject_and_attribute_parts(world, scenes):
    rows = [json.loads(line) for line in (world / build.CAPTIONS).read_text().splitlines()]
    for row in rows:
        scene = Scene.from_json(scenes[row["id"]])
        text = row["caption"]
        assert row["subject"].count(" a ") + 1 == len(scene.objects) or len(scene.objects) == 1
        for obj in scene.objects:
            assert f" {obj.shape}" in " " + row["subject"] and obj.shape in text and obj.color in text
            assert any(w in text for w in SIZE_WORDS[obj.size])
            assert any(w in text for w in POSITION_WORDS[obj.cell])
        for word in set(row["attribute"].replace(",", " ").split()) - {"on", "a"}:  # "..., on a gray background"
            assert word in text.replace(",", " ").split()
        assert scene.background in row["attribute"] and scene.background in text


def test_captions_vary_and_stay_well_under_the_context_length():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = np.random.default_rng(0)
    scene_list = [random_scene(rng) for _ in range(400)]
    texts = [random_caption(s, rng).text for s in scene_list]
    assert len(set(texts)) == len(texts)
    one = scene_list[0]
    assert len({random_caption(one, rng).text for _ in range(30)}) >= 10  # wording varies for one scene
    longest = max(len(tokenizer.encode(t)) + 2 for t in texts + [canonical_caption(s).text for s in scene_list])
    assert longest <= 60  # context length 77


# --- ground truth, re-derived ----------------------------------------------------------------------

def objects_of(row: dict) -> dict[int, dict]:
    return {o["cell"]: {k: o[k] for k in ("shape", "color", "size", "pattern", "cell")} for o in row["objects"]}


def apply_fine(objects: dict[int, dict], background: str, edits: list[dict]) -> tuple:
    """Independent reading of fine edits -> canonical (background, sorted objects)."""
    objs = {c: dict(o) for c, o in objects.items()}
    for e in edits:
        if e["kind"] in ("color", "shape", "size", "pattern"):
            objs[e["cell"]][e["kind"]] = e["value"]
        elif e["kind"] == "move":
            objs[e["cell"]]["cell"] = e["to"]
        elif e["kind"] == "remove":
            del objs[e["cell"]]
        elif e["kind"] == "add":
            objs[("new", len(objs))] = {k: e["object"][k] for k in ("shape", "color", "size", "pattern", "cell")}
        elif e["kind"] == "background":
            background = e["value"]
    return canonical(background, objs.values())


def canonical(background: str, objects) -> tuple:
    return background, tuple(sorted(tuple(sorted(o.items())) for o in objects))


def coarse_readings(objects: dict[int, dict], background: str, coarse: list[dict], candidate: tuple) -> bool:
    """Is ``candidate`` one of the fine readings of ``coarse``? Enumerates readings, values pruned to the candidate's."""
    cand_bg, cand_objs = candidate
    present = {f: sorted({dict(o)[f] for o in cand_objs}) for f in VALUES}
    present["cell"] = [c for c in present["cell"] if c not in objects]  # landing cells: empty in the reference
    slots = sorted({e["slot"]: e["shape"] for e in coarse if "slot" in e}.items())
    per_slot = [[c for c, o in objects.items() if o["shape"] == shape] for _, shape in slots]
    for binding in itertools.product(*per_slot):
        if len(set(binding)) != len(binding):
            continue
        cell_of = {slot: cell for (slot, _), cell in zip(slots, binding)}
        options = []  # per edit: the fine edits it may stand for
        for e in coarse:
            kind = e["kind"]
            if kind == "background":
                options.append([{"kind": kind, "value": b} for b in BACKGROUNDS if b != background])
            elif kind == "add":
                shapes = [e["shape"]] if e["shape"] else present["shape"]
                options.append([{"kind": "add", "object": dict(zip(("shape", "color", "size", "pattern", "cell"), v))}
                                for v in itertools.product(shapes, present["color"], present["size"],
                                                           present["pattern"], present["cell"])])
            else:
                cell = cell_of[e["slot"]]
                if kind == "remove":
                    options.append([{"kind": kind, "cell": cell}])
                elif kind == "move":
                    options.append([{"kind": kind, "cell": cell, "to": c} for c in present["cell"] if c != cell])
                else:
                    old = objects[cell][kind]
                    options.append([{"kind": kind, "cell": cell, "value": v} for v in VALUES[kind] if v != old])
        for reading in itertools.product(*options):
            result = apply_fine(objects, background, list(reading))
            cells = [dict(o)["cell"] for o in result[1]]
            if len(set(cells)) == len(cells) and result == candidate:
                return True
    return False


@pytest.mark.parametrize("split", SPLITS)
def test_ground_truth_rederived_from_scene_specs(world, scenes, split):
    gallery_split = "train_gallery" if split == "train" else "eval"
    gallery = {i: canonical(r["background"], objects_of(r).values()) for i, r in scenes.items() if r["split"] == gallery_split}
    strictly_larger = 0
    for fine, coarse in zip(records(world, split), records(world, f"{split}_coarse")):
        ref = scenes[fine["reference_img_id"]]
        target = apply_fine(objects_of(ref), ref["background"], fine["edits"])
        assert gallery[fine["target_img_id"]] == target
        fine_gt = sorted(i for i, spec in gallery.items() if spec == target)
        assert sorted(fine["gt_img_ids"]) == fine_gt
        coarse_gt = sorted(i for i, spec in gallery.items()
                           if len(spec[1]) == len(target[1]) and coarse_readings(objects_of(ref), ref["background"],
                                                                                   coarse["edits"], spec))
        assert sorted(coarse["gt_img_ids"]) == coarse_gt
        assert set(fine_gt) <= set(coarse_gt)  # a coarse text never has fewer ground truths than its fine twin
        assert fine["reference_img_id"] not in coarse_gt
        strictly_larger += len(coarse_gt) > len(fine_gt)
    if split != "train":  # coarse siblings are in evaluation galleries only
        assert strictly_larger >= 4


def test_galleries_hold_hard_negatives(scenes):
    roles = [r["role"] for r in scenes.values() if r["split"] == "eval"]
    for role in ("reference", "target", "coarse_sibling", "wrong_object", "distractor"):
        assert role in roles


def test_every_fine_text_names_every_change(world, scenes):
    def words(text):
        return set(text.replace(",", " ").split())

    for split in SPLITS:
        for r in records(world, split):
            text, ref = r["relative_caption"], objects_of(scenes[r["reference_img_id"]])
            w = words(text)
            for e in r["edits"]:
                kind = e["kind"]
                if "cell" in e:
                    assert ref[e["cell"]]["shape"] in w, (text, e)
                if kind == "color":
                    assert e["value"] in w, (text, e)
                elif kind == "shape":
                    assert f"a {e['value']}" in text, (text, e)
                elif kind == "size":
                    assert w & set(NEW_SIZE_WORDS[e["value"]]), (text, e)
                elif kind == "pattern":
                    assert w & set(NEW_PATTERN_WORDS[e["value"]]), (text, e)
                elif kind == "move":
                    assert any(p in text for p in MOVE_WORDS[e["to"]]), (text, e)
                elif kind == "remove":
                    assert any(v in text for v in REMOVE_VERBS), (text, e)
                elif kind == "add":
                    o = e["object"]
                    assert {o["shape"], o["color"]} <= w and w & set(SIZE_WORDS[o["size"]]), (text, e)
                    assert w & set(NEW_PATTERN_WORDS[o["pattern"]]) and any(p in text for p in POSITION_WORDS[o["cell"]])
                elif kind == "background":
                    assert "background" in w and e["value"] in w, (text, e)


def test_texts_stay_well_under_the_context_length(world):
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    for split in SPLITS:
        for name in (split, f"{split}_coarse"):
            assert max(len(tokenizer.encode(r["relative_caption"])) + 2 for r in records(world, name)) <= 45


# --- building, caching, CLI ------------------------------------------------------------------------

def test_killed_build_resumes_to_the_same_world(world, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "RENDER_CHUNK", 32)
    calls = {"n": 0}
    real = build._render_chunk

    def dies_on_third_chunk(args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(build, "_render_chunk", dies_on_third_chunk)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        generate_world(out, WorldConfig.tiny(seed=0), workers=1, progress=False, log=lambda m: None)
    partial = out.with_name("resumed.partial")
    assert not out.exists() and len(list(partial.rglob("*.png"))) == 64
    monkeypatch.setattr(build, "_render_chunk", real)
    generate_world(out, WorldConfig.tiny(seed=0), workers=1, progress=False, log=lambda m: None)
    assert all_files(out) == all_files(world) and not partial.exists()


def test_default_world_is_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    calls = []
    real = build.generate_world
    monkeypatch.setattr(build, "generate_world", lambda *a, **k: calls.append(1) or real(*a, **k))
    tiny = WorldConfig.tiny(seed=0)
    first = build.default_world(config=tiny, progress=False, log=lambda m: None)
    second = build.default_world(config=tiny, progress=False, log=lambda m: None)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "worlds"
    (split,) = circo.load(first, "val")
    assert len(split.queries) == 16


def test_cli_generate(tmp_path):
    from zscir.cli import cli

    runner = CliRunner()
    out = tmp_path / "w"
    result = runner.invoke(cli, ["world", "generate", "--out", str(out), "--tiny", "--seed", "5", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["seed"] == 5 and record["counts"]["val"] == 16
    again = runner.invoke(cli, ["world", "generate", "--out", str(out), "--tiny", "--seed", "5", "--workers", "1"])
    assert again.exit_code == 0 and "already built" in again.output
    clash = runner.invoke(cli, ["world", "generate", "--out", str(out), "--tiny", "--seed", "6", "--workers", "1"])
    assert clash.exit_code != 0 and "--out" in str(clash.exception) and "--force" in str(clash.exception)


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "zscir.cli", "world", "generate", "--out", str(tmp_path / "x"),
                           "--tiny", "--max-objects", "9"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1 and "max_objects" in proc.stderr and "Traceback" not in proc.stderr
