"""SEARLE: OTI, its driver, the distilled-phi loss and OTI at query time, against explicit references."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zscir.backbone import PLACEHOLDER, ImageFeatures
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.fti import SingleTokenNetwork
from zscir.models.concepts import ConceptPhrases, concept_features, fill, nearest_concepts
from zscir.models.oti import OTIConfig, chunk_generator, invert, load_oti_tokens, oti_compose, oti_loss, run_oti
from zscir.models.searle import SearleWeights, searle_loss
from zscir.world.plugins_models import concept_phrases

PHRASES = ConceptPhrases(("circle", "square", "star"), ("a red {}", "a {} on the left", "two {}"))
SMALL = OTIConfig(steps=3, top_k=2, batch_size=2, templates=("a photo of {}", "a {} image"))


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=-1).item()


def test_concept_features_and_nearest_concepts_match_loops(tiny_backbone):
    b = tiny_backbone
    words, templates = ["circle", "square", "star"], ["a photo of {}", "a {} image"]
    feats = concept_features(b, words, templates)
    for i, w in enumerate(words):
        mean = sum(F.normalize(b.encode_text([t.replace("{}", w)])[0], dim=0) for t in templates) / len(templates)
        assert torch.allclose(feats[i], F.normalize(mean, dim=0), atol=1e-5)
    torch.manual_seed(0)
    images = torch.randn(4, b.embed_dim)
    top = nearest_concepts(images, feats, 2)
    for n in range(4):
        order = sorted(range(3), key=lambda j: -_cos(images[n], feats[j]))
        assert top[n].tolist() == order[:2]
    with pytest.raises(ZscirError, match="top_k=4"):
        nearest_concepts(images, feats, 4)


def _oti_loss_loop(b, tokens, images, templates, with_word, with_token, lam_cos, lam_reg):
    n = len(templates)
    cos = sum(1 - F.cosine_similarity(b.encode_prompts([templates[i]], tokens[i:i + 1])[0], images[i], dim=0)
              for i in range(n)) / n
    reg = sum(1 - F.cosine_similarity(b.encode_prompts([with_token[i]], tokens[i:i + 1])[0],
                                      b.encode_text([with_word[i]])[0], dim=0) for i in range(n)) / n
    return (lam_cos * cos + lam_reg * reg) / (lam_cos + lam_reg)


def test_oti_loss_matches_loop(tiny_backbone):
    b = tiny_backbone
    torch.manual_seed(1)
    tokens, images = torch.randn(3, b.token_dim), torch.randn(3, b.embed_dim)
    templates = ["a photo of *", "a * image", "a photo of *"]
    with_word = ["a red circle", "two star", "a square on the left"]
    with_token = ["a red *", "two *", "a * on the left"]
    loss, terms = oti_loss(b, tokens, images, templates, with_word, with_token, OTIConfig())
    ref = _oti_loss_loop(b, tokens, images, templates, with_word, with_token, 1.0, 0.5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert (terms["cosine"] + 0.5 * terms["regulariser"]).item() / 1.5 == pytest.approx(ref.item(), rel=1e-5)


def test_invert_matches_handwritten_adamw_and_ema(tiny_backbone):
    b, cfg = tiny_backbone, SMALL
    torch.manual_seed(2)
    images = torch.randn(3, b.embed_dim)
    got = invert(b, images, PHRASES, cfg, torch.Generator().manual_seed(7))

    # the reference: the same draws in the documented order, the loss as a loop, AdamW written out
    g = torch.Generator().manual_seed(7)
    feats = concept_features(b, PHRASES.vocabulary)
    concepts = [sorted(range(3), key=lambda j: -_cos(images[n], feats[j]))[:cfg.top_k] for n in range(3)]
    p = torch.empty(3, b.token_dim).normal_(0.0, cfg.init_std, generator=g)
    ema, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, cfg.steps + 1):
        picks = torch.randint(len(cfg.templates), (3,), generator=g).tolist()
        rank = torch.randint(cfg.top_k, (3,), generator=g).tolist()
        which = torch.randint(len(PHRASES.phrases), (3,), generator=g).tolist()
        templates = [cfg.templates[i].replace("{}", PLACEHOLDER) for i in picks]
        words = [PHRASES.vocabulary[concepts[n][rank[n]]] for n in range(3)]
        with_word = [PHRASES.phrases[which[n]].replace("{}", words[n]) for n in range(3)]
        with_token = [PHRASES.phrases[which[n]].replace("{}", PLACEHOLDER) for n in range(3)]
        x = p.clone().requires_grad_(True)
        loss = _oti_loss_loop(b, x, images, templates, with_word, with_token, cfg.lambda_cos, cfg.lambda_reg)
        grad, = torch.autograd.grad(loss, x)
        assert got.losses[t - 1] == pytest.approx(loss.item(), rel=1e-5)
        p = p * (1 - cfg.lr * cfg.weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        p = p - cfg.lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
        ema = cfg.ema_decay * ema + (1 - cfg.ema_decay) * p
    assert torch.allclose(got.last, p, atol=1e-5)
    assert torch.allclose(got.tokens, ema, atol=1e-6)
    assert not torch.allclose(got.tokens, got.last)  # the result is the EMA, not the last step


def test_oti_decreases_its_loss_and_is_deterministic_for_a_seed(tiny_backbone):
    b = tiny_backbone
    torch.manual_seed(3)
    images = torch.randn(4, b.embed_dim)
    cfg = OTIConfig(steps=20, top_k=2, templates=("a photo of {}",))
    one = invert(b, images, PHRASES, cfg, torch.Generator().manual_seed(0))
    assert sum(one.losses[-5:]) / 5 < 0.7 * sum(one.losses[:5]) / 5
    two = invert(b, images, PHRASES, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(one.tokens, two.tokens) and one.losses == two.losses
    other = invert(b, images, PHRASES, cfg, torch.Generator().manual_seed(1))
    assert not torch.allclose(one.tokens, other.tokens)


class Killed(Exception):
    pass


def test_run_oti_killed_and_resumed_equals_uninterrupted(tiny_backbone, tmp_path):
    b = tiny_backbone
    torch.manual_seed(4)
    ids, feats = [f"img{i}" for i in range(5)], torch.randn(5, b.embed_dim)
    run_oti(b, ids, feats, PHRASES, tmp_path / "whole", SMALL, seed=3, log=lambda *_: None)

    def kill_after_first(chunk):
        raise Killed

    with pytest.raises(Killed):
        run_oti(b, ids, feats, PHRASES, tmp_path / "killed", SMALL, seed=3, log=lambda *_: None,
                on_chunk=kill_after_first)
    (tmp_path / "killed" / ".chunk_000001.safetensors.abc123.tmp").write_bytes(b"half a file")  # a SIGKILL's leftover
    with pytest.raises(ZscirError, match="not finished"):
        load_oti_tokens(tmp_path / "killed")
    redone = []
    run_oti(b, ids, feats, PHRASES, tmp_path / "killed", SMALL, seed=3, log=lambda *_: None, on_chunk=redone.append)
    assert redone == [1, 2]  # chunk 0 was kept
    ids_a, tok_a = load_oti_tokens(tmp_path / "whole")
    ids_b, tok_b = load_oti_tokens(tmp_path / "killed")
    assert ids_a == ids_b == ids and tok_a.shape == (5, b.token_dim)
    assert torch.equal(tok_a, tok_b)
    with pytest.raises(ZscirError, match="'seed' differs"):
        run_oti(b, ids, feats, PHRASES, tmp_path / "killed", SMALL, seed=4, log=lambda *_: None)
    with pytest.raises(ZscirError, match="'features_sha256' differs"):
        run_oti(b, ids, feats + 1, PHRASES, tmp_path / "killed", SMALL, seed=3, log=lambda *_: None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ZscirError, match="holds no OTI run"):
        run_oti(b, ids, feats, PHRASES, tmp_path / "other", SMALL, seed=3, log=lambda *_: None)


def _palavra_loop(a, c, tau):
    x = F.normalize(torch.cat([a, c]), dim=-1)
    n, total = a.shape[0], 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        den = sum(math.exp((x[i] @ x[j]).item() / tau) for j in range(2 * n) if j != i)
        total += -math.log(math.exp((x[i] @ x[pos]).item() / tau) / den)
    return total / (2 * n)


def test_searle_loss_matches_reference(tiny_backbone):
    b = tiny_backbone
    torch.manual_seed(5)
    net = SingleTokenNetwork(b.embed_dim, b.token_dim).eval()
    pooled, oti = torch.randn(4, b.embed_dim), torch.randn(4, b.token_dim)
    concepts = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 2]])
    w = SearleWeights(PHRASES)
    torch.manual_seed(9)
    loss, terms = searle_loss(net, b, pooled, None, None, None, w, oti_tokens=oti, concepts=concepts)
    torch.manual_seed(9)
    rank, which = torch.randint(2, (4,)).tolist(), torch.randint(3, (4,)).tolist()
    phi = net(pooled).subject.detach()
    reg = 0.0
    for n in range(4):
        phrase = PHRASES.phrases[which[n]]
        word = PHRASES.vocabulary[int(concepts[n, rank[n]])]
        reg += 1 - _cos(b.encode_prompts([phrase.replace("{}", "*")], phi[n:n + 1])[0],
                        b.encode_text([phrase.replace("{}", word)])[0])
    ref = 1.0 * _palavra_loop(oti, phi, 0.25) + 0.25 * reg / 4
    assert terms["distillation"].item() == pytest.approx(_palavra_loop(oti, phi, 0.25), rel=1e-5)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_oti_compose_inverts_the_reference_under_no_grad(tiny_backbone):
    b = tiny_backbone
    torch.manual_seed(6)
    ref, texts = ImageFeatures(torch.randn(2, b.embed_dim)), ["is blue", "has * stripes"]
    compose = oti_compose(PHRASES, SMALL, seed=5)
    with torch.no_grad():
        got = compose(b, None, ref, texts)
        again = compose(b, None, ref, texts)
    tokens = invert(b, ref.pooled, PHRASES, SMALL, torch.Generator().manual_seed(5)).tokens
    want = b.encode_prompts([prompts.that_query_prompt(t) for t in texts], tokens)
    assert torch.allclose(got, want, atol=1e-6) and torch.equal(got, again)
    assert compose.record["query"] == "searle-xl-oti"


def test_concept_phrases_from_files_and_world(tmp_path):
    words, phrases = tmp_path / "words.txt", tmp_path / "phrases.txt"
    words.write_text("dog\ncat\n\n")
    phrases.write_text("a photo of a {}\na {} and its friend\n")
    cp = ConceptPhrases.from_files(words, phrases)
    assert cp.vocabulary == ("dog", "cat") and cp.record()["kind"] == "user" and cp.record()["num_phrases"] == 2
    phrases.write_text("a photo of a {}\na photo without a slot\n")
    with pytest.raises(ZscirError, match=r"phrases.txt:2: a phrase needs exactly one"):
        ConceptPhrases.from_files(words, phrases)
    words.write_text("dog\nca*t\n")
    with pytest.raises(ZscirError, match=r"words.txt:2: contains the pseudo-word placeholder"):
        ConceptPhrases.from_files(words, tmp_path / "phrases.txt")
    with pytest.raises(ZscirError, match=r"missing.txt: no such file"):
        ConceptPhrases.from_files(tmp_path / "missing.txt", phrases)
    world = concept_phrases()
    assert world.vocabulary == ("circle", "square", "triangle", "star", "cross", "diamond")
    assert world.record()["kind"] == "world" and len(world.phrases) == 8 + 2 + 3 + 9 + 4
    assert "a {} on a gray background" in world.phrases and fill("a {} in the center", "star") == "a star in the center"
    with pytest.raises(ZscirError, match="OTI option steps=0"):
        OTIConfig(steps=0)


def test_oti_runs_with_the_world_phrases(tiny_backbone):
    b, world = tiny_backbone, concept_phrases()
    torch.manual_seed(7)
    cfg = OTIConfig(steps=2, top_k=3)
    result = invert(b, torch.randn(3, b.embed_dim), world, cfg, torch.Generator().manual_seed(0))
    assert result.tokens.shape == (3, b.token_dim) and len(result.losses) == 2
    for phrase in world.phrases:  # the slot, filled with the placeholder, is one token of the tokenizer
        assert int((b.tokenize([fill(phrase, PLACEHOLDER)]) == b.placeholder_token_id).sum()) == 1


def test_prepare_training_inverts_every_image_once_and_batches_its_tokens_and_concepts(tmp_path, tiny_backbone):
    from types import SimpleNamespace

    import numpy as np

    from zscir.training.searle_data import prepare_training
    from zscir.training.pretrain import PretrainConfig
    from zscir.training.pretrain_data import PretrainingSet

    b = tiny_backbone
    words, phrases = tmp_path / "words.txt", tmp_path / "phrases.txt"
    words.write_text("\n".join(PHRASES.vocabulary))
    phrases.write_text("\n".join(PHRASES.phrases))
    torch.manual_seed(8)
    pooled = torch.randn(5, b.embed_dim).numpy().astype(np.float16)
    base = PretrainingSet([f"{i}.png" for i in range(5)], ["s"] * 5, ["t"] * 5, b, pooled=pooled, need_tokens=False)
    cfg = PretrainConfig(method="searle", seed=2, vocabulary=str(words), phrases=str(phrases), oti_steps=3,
                         oti_batch_size=2, oti_top_k=2)
    acc = SimpleNamespace(num_processes=1)
    data = prepare_training(cfg, base, b, None, tmp_path / "cache", acc, lambda *a: None)
    oti_dir = Path(data.record["oti"]["dir"])
    ids, tokens = load_oti_tokens(oti_dir)
    assert ids == base.ids and oti_dir.parent == tmp_path / "cache" / "oti"
    feats = torch.from_numpy(pooled.astype(np.float32))
    want = invert(b, feats[2:4], PHRASES, OTIConfig(steps=3, top_k=2, batch_size=2), chunk_generator(2, 1))
    assert torch.allclose(tokens[2:4], want.tokens, atol=1e-6)  # chunk 1 = images 2 and 3
    batch = data.batch(np.array([3, 0]))
    assert torch.equal(batch.extra["oti_tokens"], tokens[[3, 0]].float())
    assert torch.equal(batch.extra["concepts"], nearest_concepts(feats, concept_features(b, PHRASES.vocabulary), 2)[[3, 0]])
    used = batch.extra["phrases"]
    assert (used.vocabulary, used.phrases) == (PHRASES.vocabulary, PHRASES.phrases)
    assert data.record["phrases"]["kind"] == "user" and data.record["phrases"]["vocabulary"] == str(words)
    # a second run with the same settings reads the cached tokens: no chunk is inverted again
    before = {p: p.stat().st_mtime_ns for p in oti_dir.iterdir()}
    again = prepare_training(cfg, base, b, None, tmp_path / "cache", acc, lambda *a: None)
    assert Path(again.record["oti"]["dir"]) == oti_dir and before == {p: p.stat().st_mtime_ns for p in oti_dir.iterdir()}
    # --oti-images: a seeded subset is inverted, and phi's data is that subset
    from dataclasses import replace

    sub = prepare_training(replace(cfg, oti_images=3), base, b, None, tmp_path / "cache", acc, lambda *a: None)
    assert len(sub) == 3 and (sub.record["oti"]["num_images"], sub.record["oti"]["of_training_images"]) == (3, 5)
    sub_ids, sub_tokens = load_oti_tokens(sub.record["oti"]["dir"])
    assert sub.ids == sub_ids and set(sub_ids) < set(base.ids)
    batch = sub.batch(np.array([2, 0]))
    assert torch.equal(batch.extra["oti_tokens"], sub_tokens[[2, 0]].float())
    assert torch.equal(batch.pooled, feats[[base.ids.index(sub_ids[2]), base.ids.index(sub_ids[0])]])
    with pytest.raises(ZscirError, match="--method searle on your own images needs --vocabulary FILE"):
        prepare_training(PretrainConfig(method="searle"), base, b, None, tmp_path, acc, print)
    with pytest.raises(ZscirError, match="give both --vocabulary FILE"):
        prepare_training(PretrainConfig(method="searle", phrases=str(phrases)), base, b, None, tmp_path, acc, print)


def test_query_time_oti_is_a_training_free_model_spec(tmp_path, tiny_backbone):
    from zscir.models.oti import OTIQuery, oti_config
    from zscir.models.query import load_query_encoder, training_free

    b = tiny_backbone
    words, phrases = tmp_path / "words.txt", tmp_path / "phrases.txt"
    words.write_text("\n".join(PHRASES.vocabulary))
    phrases.write_text("\n".join(PHRASES.phrases))
    spec = f"searle-xl-oti:{words},{phrases}"
    assert training_free(spec) == "searle-xl-oti" and training_free("sum") == "sum" and training_free("a.pt") is None
    qe = load_query_encoder(spec, backbone=b)
    assert isinstance(qe, OTIQuery) and qe.identity["phrases"]["kind"] == "user"
    assert qe.identity["oti"]["top_k"] == 3 and qe.identity["oti"]["steps"] == 350  # official, capped by 3 words
    assert load_query_encoder("searle-xl-oti", backbone=b).identity["phrases"]["kind"] == "world"
    with pytest.raises(ZscirError, match="takes no options after ':'"):
        load_query_encoder("sum:3", backbone=b)
    with pytest.raises(ZscirError, match="expected searle-xl-oti:VOCABULARY.txt,PHRASES.txt"):
        load_query_encoder(f"searle-xl-oti:{words}", backbone=b)
    torch.manual_seed(3)
    ref = ImageFeatures(torch.randn(2, b.embed_dim))
    small = OTIQuery(b, PHRASES)
    small.compose = oti_compose(PHRASES, SMALL, seed=0)  # 3 steps: the encoder is the compose, normalised
    got = small.encode_queries(ref, ["is blue", "is red"])
    assert torch.allclose(got, F.normalize(oti_compose(PHRASES, SMALL, seed=0)(b, None, ref, ["is blue", "is red"]),
                                           dim=-1), atol=1e-6)
    assert oti_config(PHRASES, steps=7).steps == 7 and oti_config(PHRASES, top_k=1).top_k == 1
