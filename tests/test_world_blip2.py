"""The world's BLIP-2 retrieval model: trained on a tiny world in seconds, loaded as any BLIP-2 retrieval folder."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir.utils.testpoint import interruptible, pause_env, wait_paused
from zscir.world.build import WorldConfig, generate_world
from zscir.world.captions import canonical_caption
from zscir.world.eval_backbone import SENSITIVITY_KINDS, perturbed_caption
from zscir.world.train_blip2_eval import evaluate_blip2, itc_matrix
from zscir.world.train_blip2_losses import Stage1, encode_images, encode_texts, itc_similarity, stage1_loss
from zscir.world.train_blip2_model import PRESETS, build_model, train_qformer_tokenizer
from zscir.world.train_captioner import heldout_images

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("w") / "world", WorldConfig.tiny(seed=0), workers=1,
                          progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blip2")
    out = tmp / "model"
    proc = subprocess.run([sys.executable, "-m", "zscir.cli", "world", "train-blip2", "--world", str(world), "--preset",
                           "tiny", "--out", str(out), "--run-dir", str(tmp / "state"), "--heldout", "12", "--json"],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_the_loss_falls_and_the_card_and_record_are_written(trained):
    out, record = trained
    # 60 tiny steps fall at least to the ITM prior; whether ITC leaves its chance plateau within them varies (see report)
    assert record["steps"] == PRESETS["tiny"].steps and record["final_loss"] < record["first_loss"]
    assert json.loads((out.parent / "model.json").read_text()) == record
    card = (out.parent / "model.md").read_text()
    assert "image → text" in card and "ITM accuracy" in card and "unlabeled images" in card
    held = record["heldout"]
    assert held["scenes"] == 12 and set(held["itm_accuracy"]) >= {"matched", "other_scene", *SENSITIVITY_KINDS}
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))


def test_the_folder_reloads_with_the_same_itc_scores(trained):
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    out, _ = trained
    model = Blip2ForImageTextRetrieval.from_pretrained(out).eval()
    processor = Blip2Processor.from_pretrained(out)
    scenes, images = heldout_images(4, 72)
    texts = [canonical_caption(s).text for s in scenes]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert inputs["input_ids"][0, 0] == processor.tokenizer.cls_token_id  # BERT-style: [CLS] text [SEP]
    with torch.no_grad():
        forward = model(**inputs).logits_per_image
        _, image_feats = encode_images(model, inputs["pixel_values"])
        ours = itc_similarity(image_feats, encode_texts(model, inputs["input_ids"], inputs["attention_mask"]))
        # straightforward: cosine of each projected query output with the projected [CLS] output, best query
        q = model.qformer(query_embeds=model.query_tokens.expand(4, -1, -1),
                          encoder_hidden_states=model.vision_model(inputs["pixel_values"]).last_hidden_state).last_hidden_state
        t = model.qformer(query_embeds=model.embeddings(input_ids=inputs["input_ids"]), query_length=0,
                          attention_mask=inputs["attention_mask"]).last_hidden_state[:, 0]
        qi, ti = F.normalize(model.vision_projection(q), dim=-1), F.normalize(model.text_projection(t), dim=-1)
        brute = torch.tensor([[max(float(qi[i, k] @ ti[j]) for k in range(qi.shape[1])) for j in range(4)] for i in range(4)])
    assert torch.allclose(forward, ours, atol=1e-5) and torch.allclose(forward, brute, atol=1e-5)
    assert forward.std() > 0


def test_itc_loss_and_hard_negatives_are_deterministic_given_the_generator(world):
    cfg = PRESETS["tiny"]
    tokenizer = train_qformer_tokenizer(["a red circle on a gray background", "a blue star"])
    model, processor = build_model(cfg, tokenizer, 72)
    stage = Stage1(model, cfg.init_temp)
    _, images = heldout_images(4, 72)
    inputs = processor(images=images, text=["a red circle", "a blue star", "a red star", "a blue circle"], padding=True,
                       return_tensors="pt")
    losses = [stage1_loss(stage, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                          torch.Generator().manual_seed(7))[0].item() for _ in range(2)]
    assert losses[0] == losses[1] and np.isfinite(losses[0])
    assert not model.vision_model.embeddings.position_embedding.requires_grad  # the fixed sin-cos table


def test_heldout_recall_and_itm_against_brute_force(trained):
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    out, record = trained
    result = evaluate_blip2(out, 12)
    assert {k: v for k, v in result.items() if k != "examples"} == \
        {k: v for k, v in record["heldout"].items() if k != "examples"}
    model = Blip2ForImageTextRetrieval.from_pretrained(out).eval()
    processor = Blip2Processor.from_pretrained(out)
    scenes, images = heldout_images(12, 72)
    texts = [canonical_caption(s).text for s in scenes]

    def pair(image, text, itm=False):  # one image, one text, one forward
        with torch.no_grad():
            return model(**processor(images=[image], text=[text], return_tensors="pt"), use_image_text_matching_head=itm).logits_per_image[0]

    scores = itc_matrix(model, processor, images, texts)  # the chunked forward the evaluation ranks by
    assert torch.allclose(scores, torch.tensor([[float(pair(im, t)[0]) for t in texts] for im in images]), atol=1e-5)
    for name, matrix in (("image_to_text", scores), ("text_to_image", scores.T)):
        for k in (1, 5, 10):
            hits = [sum(1 for j in range(12) if matrix[i, j] > matrix[i, i]) < k for i in range(12)]
            assert result[name][f"R@{k}"] == pytest.approx(sum(hits) / 12, abs=1e-4)
    matched = [bool(pair(im, t, True).argmax() == 1) for im, t in zip(images, texts)]
    assert result["itm_accuracy"]["matched"] == pytest.approx(sum(matched) / 12, abs=1e-4)
    rng = np.random.default_rng([1234, 0x53454E53, list(SENSITIVITY_KINDS).index("shape")])
    wrong = [perturbed_caption(s, "shape", rng) for s in scenes]
    rejected = [bool(pair(im, t, True).argmax() == 0) for im, t in zip(images, wrong)]
    assert result["itm_accuracy"]["shape"] == pytest.approx(sum(rejected) / 12, abs=1e-4)
    wrong_scores = torch.tensor([float(pair(im, t)[0]) for im, t in zip(images, wrong)])
    assert wrong_scores.shape == (12,) and 0 <= result["itc_sensitivity"]["shape"] <= 1


def test_a_killed_run_resumes_from_its_saved_step(world, tmp_path):
    """Killed right after the save at step 10: the next run starts there and repeats the uninterrupted run's losses
    (same tokenizer ids, batches, ITM negatives and schedule)."""
    def cmd(name):
        return [sys.executable, "-m", "zscir.cli", "world", "train-blip2", "--world", str(world), "--preset", "tiny",
                "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"{name}-state"), "--heldout", "0"]

    marker = tmp_path / "paused"
    proc = subprocess.Popen(cmd("killed"), env={**ENV, **pause_env(marker, {"world_models.step": 10})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=interruptible)
    wait_paused(proc, marker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()
    assert torch.load(tmp_path / "killed-state" / "state.pt", weights_only=True)["step"] == 10
    subprocess.run(cmd("killed"), env=ENV, check=True, capture_output=True)
    subprocess.run(cmd("straight"), env=ENV, check=True, capture_output=True)
    resumed = json.loads((tmp_path / "killed.json").read_text())
    assert resumed["resumed_at"] == 10 and resumed["steps"] == PRESETS["tiny"].steps
    history = torch.load(tmp_path / "killed-state" / "state.pt", weights_only=True)["history"]
    want = torch.load(tmp_path / "straight-state" / "state.pt", weights_only=True)["history"]
    assert len(history) == len(want) == PRESETS["tiny"].steps
    assert history == pytest.approx(want, abs=1e-4)


def test_help_loads_no_torch():
    code = subprocess.run([sys.executable, "-c", "import sys\nfrom zscir.cli import main\n"
                           "try:\n    main(['world', 'train-blip2', '--help'])\nexcept SystemExit:\n    pass\n"
                           "assert 'torch' not in sys.modules, 'torch loaded'"], env=ENV, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    assert "--json" in code.stdout and "--preset" in code.stdout
