"""The world's captioner and editor: trained on a tiny world in seconds, loaded through the generic backends."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests._cli import run
from zscir.generation.base import Decoding, EditInput
from zscir.generation.registry import build_captioner, build_editor
from zscir.utils.testpoint import interruptible, pause_env, wait_paused
from zscir.world.build import WorldConfig, generate_world
from zscir.world.captions import canonical_caption, random_caption
from zscir.world.edits import apply_edits
from zscir.world.eval_backbone import heldout_scenes
from zscir.world.model_data import caption_scores, edit_examples, edit_scores, parse_caption, unlabeled_images
from zscir.world.spec import spec_part
from zscir.world.train_captioner import heldout_images

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("w") / "world", WorldConfig.tiny(seed=0), workers=1,
                          progress=False, log=lambda m: None)


def _train(command, world, tmp, capsys, heldout="3"):
    out, state = tmp / "model", tmp / "state"
    code, _, err = run(["world", command, "--world", str(world), "--preset", "tiny", "--out", str(out),
                        "--run-dir", str(state), "--heldout", heldout], capsys)
    assert code == 0, err
    return out, json.loads((tmp / "model.json").read_text())


def test_canonical_captions_parse_back_and_score_one():
    scenes = heldout_scenes(50)
    texts = [canonical_caption(s).text for s in scenes]
    assert [parse_caption(t) for t in texts] == scenes
    assert caption_scores(scenes, texts)["exact"] == 1.0
    rng = np.random.default_rng(0)
    assert parse_caption(random_caption(scenes[0], rng).text + " with a twist") is None


def test_caption_scores_count_attributes_per_true_object():
    scenes = heldout_scenes(40)
    two = next(s for s in scenes if len(s.objects) == 2)
    first, second = two.objects
    wrong = type(two)(two.background, (first.with_(color="red" if first.color != "red" else "blue"), second))
    scores = caption_scores([two, two], [canonical_caption(wrong).text, "not a caption"])
    assert scores["exact"] == 0 and scores["parsed"] == 0.5 and scores["count"] == 0.5
    assert scores["color"] == 1 / 4 and scores["shape"] == 2 / 4 and scores["position"] == 2 / 4


def test_edit_examples_stay_in_their_part_and_score_by_kind(world):
    scenes = [im.scene for im in unlabeled_images(world)]
    examples = edit_examples(scenes, 0, 1)
    assert {ex.style for ex in examples} == {"fine", "coarse"} and len(examples) > len(scenes)
    for ex in examples:
        assert spec_part(parse_caption(ex.edited)) == "train" and parse_caption(ex.caption) in scenes
    fine = [ex for ex in examples if ex.style == "fine"]
    right = [ex.edited if k % 2 else "nothing" for k, ex in enumerate(fine)]
    table = edit_scores(fine, right)["fine"]
    assert table["all"] == {"n": len(fine), "exact": round(sum(k % 2 for k in range(len(fine))) / len(fine), 4)}
    for kind in {k for ex in fine for k in ex.kinds}:
        want = [k % 2 for k, ex in enumerate(fine) if kind in ex.kinds]
        assert table[kind] == {"n": len(want), "exact": round(sum(want) / len(want), 4)}
    coarse = [ex for ex in examples if ex.style == "coarse"][:5]
    other = [canonical_caption(apply_edits(ex.scene, [])).text for ex in coarse]  # unchanged scene: never valid
    assert edit_scores(coarse, [ex.edited for ex in coarse])["coarse"]["all"]["valid"] == 1.0
    assert edit_scores(coarse, other)["coarse"]["all"]["valid"] == 0.0


def test_train_captioner_loss_falls_and_the_folder_loads_as_blip2(world, tmp_path, capsys):
    out, record = _train("train-captioner", world, tmp_path, capsys)
    assert record["steps"] == 40 and record["final_loss"] < record["first_loss"] - 0.5
    assert set(record["heldout"]) >= {"exact", "color", "shape", "size", "position", "pattern", "count"}
    assert "exact match" in (tmp_path / "model.md").read_text()
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    _, images = heldout_images(2, 72)
    greedy = build_captioner(f"blip2:{out}", device="cpu").caption([0, 1], images)
    assert all(isinstance(t, str) and t.strip() for t in greedy)
    sampled = build_captioner(f"blip2:{out}", decoding=Decoding("sample", n=3, max_new_tokens=12),
                              device="cpu").caption([0, 1], images)
    assert [len(s) for s in sampled] == [3, 3] and len(set(sampled[0])) > 1


def test_train_editor_loss_falls_and_the_folder_loads_as_hf_lm(world, tmp_path, capsys):
    out, record = _train("train-editor", world, tmp_path, capsys)
    assert record["steps"] == 40 and record["final_loss"] < record["first_loss"] - 0.5
    assert set(record["heldout"]) >= {"fine", "coarse"} and "valid" in record["heldout"]["coarse"]["all"]
    assert "exact" in (tmp_path / "model.md").read_text()
    editor = build_editor(f"hf-lm:{out}", device="cpu")
    assert editor.chat and not editor.seq2seq
    outputs = editor.edit([EditInput("a small red solid circle in the center on a gray background", "make it blue")])
    assert isinstance(outputs[0], str) and outputs[0].strip()


@pytest.mark.parametrize("command", ["train-editor", "train-captioner"])
def test_a_killed_run_resumes_from_its_saved_step(world, tmp_path, command):
    """Killed right after the save at step 10 (the pause point): the next run starts at step 10 and ends at 40,
    with the losses of an uninterrupted run."""
    def cmd(name):
        return [sys.executable, "-m", "zscir.cli", "world", command, "--world", str(world), "--preset", "tiny",
                "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"{name}-state"), "--heldout", "0"]

    marker = tmp_path / "paused"
    proc = subprocess.Popen(cmd("killed"), env={**ENV, **pause_env(marker, {"world_models.step": 10})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=interruptible)
    wait_paused(proc, marker)  # the child waits there until the signal, however busy the machine
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()
    state = torch.load(tmp_path / "killed-state" / "state.pt", weights_only=True)
    assert state["step"] == 10
    subprocess.run(cmd("killed"), env=ENV, check=True, capture_output=True)
    subprocess.run(cmd("straight"), env=ENV, check=True, capture_output=True)
    resumed = json.loads((tmp_path / "killed.json").read_text())
    straight = json.loads((tmp_path / "straight.json").read_text())
    assert resumed["resumed_at"] == 10 and resumed["steps"] == 40 and straight["resumed_at"] is None
    history = torch.load(tmp_path / "killed-state" / "state.pt", weights_only=True)["history"]
    want = torch.load(tmp_path / "straight-state" / "state.pt", weights_only=True)["history"]
    assert len(history) == 40 and history == pytest.approx(want, abs=2e-3)


def test_attribute_words_are_single_tokens_and_a_caption_fits_30_tokens(world):
    """One token per attribute decision, the same ids in a caption, an instruction and an edited caption (an
    editor copies by identity), and a four-object canonical caption plus </s> within the captioners' 30 tokens."""
    from zscir.generation.base import DEFAULT_EDIT_PROMPT
    from zscir.world.model_tokenizer import ATOMIC_WORDS, train_tokenizer

    examples = edit_examples([im.scene for im in unlabeled_images(world)], 0, 1)
    tok = train_tokenizer([t for ex in examples for t in (DEFAULT_EDIT_PROMPT.fill(ex.caption, ex.instruction),
                                                           " " + ex.edited)], 400, bos=False)
    for word in ("red", "circle", "dotted", "small", "at the bottom left", "background"):
        assert word in ATOMIC_WORDS and len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1
    four = next(s for s in heldout_scenes(200) if len(s.objects) == 4)
    text = canonical_caption(four).text
    ids = tok(" " + text, add_special_tokens=False)["input_ids"]
    assert len(ids) + 1 <= 30 and tok.decode(ids) == " " + text
    prompt = tok(DEFAULT_EDIT_PROMPT.fill(text, "make it blue"), add_special_tokens=False)["input_ids"]
    assert ids[1:-1] == prompt[1:len(ids) - 1]  # the caption's tokens reappear in the prompt (bar its first)


def test_the_captioner_starts_with_a_live_vision_tower_and_distinct_queries(world):
    from zscir.world.model_tokenizer import train_tokenizer
    from zscir.world.train_captioner import PRESETS, build_model

    tok = train_tokenizer([canonical_caption(s).text for s in heldout_scenes(20)], 300)
    model, _ = build_model(PRESETS["tiny"], tok, 72)
    assert 0.015 < float(model.vision_model.embeddings.patch_embedding.weight.detach().std()) < 0.025
    queries = model.query_tokens[0].detach()
    assert float(queries.std()) > 0.01 and float((queries[0] - queries[1]).abs().max()) > 0


def test_the_editor_trains_on_the_tokens_hf_lm_sends(world, tmp_path):
    """Training prompt ids == what the saved folder, loaded as hf-lm:PATH, feeds the model; labels cover the answer."""
    from zscir.generation.hf_editors import HFEditor
    from zscir.world.model_tokenizer import CHAT_TEMPLATE, train_tokenizer
    from zscir.world.train_captioner import save_folder
    from zscir.world.train_editor import PRESETS, build_model, edit_batches, encode_examples

    examples = edit_examples([im.scene for im in unlabeled_images(world)][:20], 0, 1)
    tok = train_tokenizer([ex.caption + " " + ex.instruction for ex in examples], 400, bos=False,
                          chat_template=CHAT_TEMPLATE)
    model = build_model(PRESETS["tiny"], tok)
    encoded = encode_examples(HFEditor(model, tok, "training", device="cpu"), examples)
    save_folder(model, tok, tmp_path / "lm")
    loaded = build_editor(f"hf-lm:{tmp_path / 'lm'}", device="cpu")
    for ex, (prompt, answer) in zip(examples, encoded):
        sent = loaded.tokenizer([loaded.prompt_text(ex.caption, ex.instruction)], add_special_tokens=not loaded.chat)
        assert sent["input_ids"][0] == prompt
        assert loaded.tokenizer.decode(answer, skip_special_tokens=True).strip() == ex.edited
    ids, mask, labels = edit_batches(PRESETS["tiny"], encoded, tok.pad_token_id)(0)
    for row_ids, row_mask, row_labels in zip(ids, mask, labels):
        kept = row_labels[row_labels != -100].tolist()
        assert kept and kept[-1] == tok.eos_token_id and row_ids[row_mask.bool()].tolist()[-len(kept):] == kept
