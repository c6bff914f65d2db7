"""The language-model rows of `zscir eval shapes`: the world's captioner and editor picked from the benchmark's
defaults, their cost per query, and the rows that split the pipeline against the caption oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from zscir.benchmarks import get_benchmark, load_splits
from zscir.evaluation import report
from zscir.evaluation.oracles import encode_texts, evaluate_oracles
from zscir.evaluation.protocol import Protocol
from zscir.evaluation.run import EvalRequest, default_models, evaluate
from zscir.generation.base import DEFAULT_EDIT_PROMPT
from zscir.generation.cache import captioner_key, edit_key
from zscir.generation.hf import local_model_ref
from zscir.models.training_free.generations import TableGenerations
from zscir.models.training_free.templates import instruction_of
from zscir.utils.hashing import sha256_file
from zscir.world import shipped
from zscir.world.build import WorldConfig, generate_world, read_scenes
from zscir.world.captions import canonical_caption
from zscir.world.model_data import parse_caption
from zscir.world.oracles import edit_result, oracle_texts
from zscir.world.pipeline_oracles import exact_edit, pipeline_texts
from zscir.world.spec import Scene
from zscir.world.train_captioner import PRESETS as CAPTIONER_PRESETS, train_captioner
from zscir.world.train_editor import PRESETS as EDITOR_PRESETS, train_editor


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("genrows") / "world", WorldConfig.tiny(seed=0), workers=1,
                          progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def generators(world, tmp_path_factory):
    """The two folders, as they will ship, trained with the tiny presets into a tmp checkpoints folder."""
    folder = tmp_path_factory.mktemp("ckpts")
    train_captioner(world, folder / shipped.CAPTIONER_FOLDER, folder / "cap-state", CAPTIONER_PRESETS["tiny"],
                    log=lambda *_: None)
    train_editor(world, folder / shipped.EDITOR_FOLDER, folder / "edit-state", EDITOR_PRESETS["tiny"],
                 log=lambda *_: None)
    return folder


@pytest.fixture
def shipped_in(monkeypatch):
    def point(folder):
        monkeypatch.setattr(shipped, "GENERATORS_DIR", folder)
    return point


def test_without_the_folders_the_rows_are_skipped_in_one_line(tmp_path, shipped_in):
    shipped_in(tmp_path)
    spec = get_benchmark("shapes")
    bb = spec.defaults.backbone("cpu", "targetpad")
    said = []
    models = default_models(spec, bb, say=said.append)
    assert not any(m.partition(":")[0] in ("cirevl", "ldre", "seize", "cvsi") for m in models)
    assert len(said) == 1 and said[0].startswith("skipped cirevl, ldre, seize, cvsi: ")
    assert "zscir world train-captioner" in said[0] and str(tmp_path / shipped.CAPTIONER_FOLDER) in said[0]


def test_multiturn_closed_loop_runs_a_several_vector_method_by_its_rule(world, generators, shipped_in, tmp_path,
                                                                         monkeypatch):
    """ldre (several query vectors, its own scoring rule) in the closed loop: it once stopped with "this step takes
    one"; the loop ranks by the rule the split's ranking fitted, and turn 1 starts from the annotated reference
    in both modes, so it scores the same."""
    shipped_in(generators)
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "zscir-cache"))
    res = evaluate(EvalRequest("shapes", root=world, splits=["multiturn"], models=[f"ldre:n={shipped.WORLD_CAPTIONS}"],
                               out_dir=tmp_path / "run", cache_root=tmp_path / "feats", progress=False, oracles=False))
    turns = res["models"][0]["splits"]["shapes/multiturn"]["multiturn"]["turns"]
    assert len(turns) >= 2 and turns["1"]["queries"] == 6
    assert turns["1"]["closed_loop"] == turns["1"]["true_previous"]


def test_eval_rows_use_the_worlds_generators_with_their_cost(world, generators, shipped_in, tmp_path, monkeypatch):
    shipped_in(generators)
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "zscir-cache"))   # the generators' default cache files
    spec = get_benchmark("shapes")
    bb = spec.defaults.backbone("cpu", "targetpad")
    rows = [m for m in default_models(spec, bb) if m.partition(":")[0] in ("cirevl", "ldre", "seize", "cvsi")]
    assert rows[:3] == ["cirevl", f"ldre:n={shipped.WORLD_CAPTIONS}", f"seize:n={shipped.WORLD_CAPTIONS}"]
    assert rows[3].startswith("cvsi:") and rows[3].endswith("shapes_lincir.safetensors")
    res = evaluate(EvalRequest("shapes", root=world, splits=["val"], models=["text", "cirevl", rows[1]],
                               out_dir=tmp_path / "run", cache_root=tmp_path / "feats", progress=False,
                               backends=None, command="test"))
    by_name = {m["name"]: m for m in res["models"]}
    card = res["protocol"]["methods"]["cirevl"]["generations"]
    runs = {g["role"]: g for g in card if g.get("source") == "model run"}
    assert runs["captioner"]["identity"].startswith(
        f"blip2:{local_model_ref(generators / shipped.CAPTIONER_FOLDER)}|beam{shipped.WORLD_CAPTIONS},n={shipped.WORLD_CAPTIONS}")
    assert runs["editor"]["identity"].startswith(f"hf-lm:{local_model_ref(generators / shipped.EDITOR_FOLDER)}|")
    assert runs["editor"]["template"]["name"] == DEFAULT_EDIT_PROMPT.name   # the prompt it was trained on
    assert "text" in by_name and "generation" not in by_name["text"]["splits"]["shapes/val"]
    cost = by_name["cirevl"]["splits"]["shapes/val"]["generation"]
    split = load_splits("shapes", world, "val")[0]
    assert cost["queries"] == len(split.queries) and cost["time_per_query_s"] > 0

    # tokens against the generation records: the first caption of each reference + the edit of it, per query
    caption_records, edit_records = _records(card)
    cap_tok = AutoTokenizer.from_pretrained(generators / shipped.CAPTIONER_FOLDER)
    edit_tok = AutoTokenizer.from_pretrained(generators / shipped.EDITOR_FOLDER)
    count = lambda tok, t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    total = 0
    for q in split.queries:
        caption = caption_records[sha256_file(split.images[q.reference])][0]
        edited = edit_records[edit_key(caption, instruction_of(q.captions))][0]
        total += count(cap_tok, caption) + count(edit_tok, edited)
    assert cost["generated_tokens"] == total
    assert cost["generated_tokens_per_query"] == pytest.approx(total / len(split.queries), abs=1e-3)
    ldre = by_name[f"ldre"]["splits"]["shapes/val"]["generation"]
    assert ldre["generated_tokens"] > total   # five captions and five edits per query
    text = report.text(res)
    assert "s/query" in text and "gen tokens/query" in text
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["models"][1]["splits"]["shapes/val"]["generation"] == cost

    # the pipeline-split rows are there, beside the caption oracle
    names = [o["name"] for o in res["oracles"]]
    assert "[oracle] true-caption+editor" in names and "[oracle] captioner+exact-edit" in names


def _records(card):
    """content key -> outputs of the captioner's and the (edit prompt's) editor's cache files of the card."""
    out = []
    for role in ("captioner", "editor"):
        g = next(g for g in card if g.get("role") == role and g.get("source") == "model run")
        key = captioner_key(g["identity"])
        entries = {}
        for line in open(g["cache"], encoding="utf-8"):
            r = json.loads(line)
            if r.get("c") == key and "h" in r:
                v = r.get("outputs", r.get("caption"))
                entries[r["h"]] = [v] if isinstance(v, str) else v
        out.append(entries)
    return out


def test_true_captions_and_an_exact_editor_give_the_caption_oracle(world, tmp_path):
    """Split row (a) with an exact "editor": the same texts, hence the same mAP, as the caption oracle (fine)."""
    spec = get_benchmark("shapes")
    bb = spec.defaults.backbone("cpu", "targetpad")
    split = load_splits("shapes", world, "val")[0]
    scenes = read_scenes(world)
    records = json.loads((world / "annotations" / "val.json").read_text())
    table = TableGenerations()
    for n, (q, r) in enumerate(zip(split.queries, records)):
        ref = Scene.from_json(scenes[int(q.reference)])
        table.add_edit(canonical_caption(ref).text, instruction_of(q.captions),
                       [canonical_caption(edit_result(ref, r["edits"], n)).text])
    texts = pipeline_texts(world, split, table)
    assert list(texts) == ["true-caption+editor"]   # no captions in the table: no captioner row
    assert texts["true-caption+editor"] == oracle_texts(world, split)["caption"]
    rows = evaluate_oracles(spec, world, [split], bb, Protocol().resolved(spec), tmp_path, progress=False,
                            generations=table)
    metrics = {o["kind"]: o["splits"]["shapes/val"]["metrics"] for o in rows}
    assert metrics["true-caption+editor"] == metrics["caption"]
    # brute force: mAP@10 of those texts against the gallery the evaluator cached (its own features)
    from zscir.evaluation.features import CacheReport, gallery_features

    g = gallery_features(bb, split, tmp_path, CacheReport(), 64, False).normalized()
    q = encode_texts(bb, texts["true-caption+editor"])
    ranks = np.argsort(-(q @ g.T).numpy(), axis=1, kind="stable")[:, :10]
    ap = []
    for query, row in zip(split.queries, ranks):
        gt = {split.gallery_index[t] for t in query.targets}
        hits = np.array([r in gt for r in row], dtype=float)
        precision = np.cumsum(hits) / np.arange(1, 11)
        ap.append(float((precision * hits).sum() / min(len(gt), 10)))
    assert metrics["true-caption+editor"]["mAP@10"] == pytest.approx(100 * np.mean(ap), abs=1e-4)


def test_captioner_plus_exact_edit_texts(world, generators, tmp_path):
    """Split row (b): each query's text is exact_edit(the captioner's first caption); exact_edit of the true
    caption is the edit oracle's text."""
    from zscir.models.training_free.backends import BackendConfig, ModelGenerations

    for name in ("val", "val_coarse"):
        split = load_splits("shapes", world, name)[0]
        records = json.loads((world / "annotations" / f"{name}.json").read_text())
        gen = ModelGenerations(BackendConfig(f"blip2:{generators / shipped.CAPTIONER_FOLDER}",
                                             cache_path=str(tmp_path / "gen.jsonl")))
        texts = pipeline_texts(world, split, gen)
        assert "true-caption+editor" not in texts   # no editor
        oracle, scenes = oracle_texts(world, split)["edit"], read_scenes(world)
        from zscir.models.composed import ImageRef

        for n, (q, r) in enumerate(zip(split.queries, records)):
            caption = gen.captions(ImageRef(q.reference, split.images[q.reference]))[0]
            assert texts["captioner+exact-edit"][n] == exact_edit(caption, r["edits"], n)
            true = canonical_caption(Scene.from_json(scenes[int(q.reference)])).text
            assert exact_edit(true, r["edits"], n) == oracle[n]
            if parse_caption(caption) is None:
                assert texts["captioner+exact-edit"][n] == caption
