"""FTI4CIR network and losses against brute-force references on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from zscir.models import prompts
from zscir.models.factory import backbone_dims, create_mapping_network, load_mapping_checkpoint, save_mapping_checkpoint
from zscir.models.fti import select_attributes
from zscir.models.losses import contrastive_loss, orthogonality_loss
from zscir.models.objective import LossWeights, fti_loss, single_loss
from zscir.models.query import load_query_encoder


def test_selection_matches_loop_reference():
    torch.manual_seed(1)
    b, n, d, topk, eps = 6, 10, 5, 4, 0.05
    latent = torch.randn(b, n, d) * 2
    glob = torch.randn(b, d)
    latent[0] = 0  # uniform relevance 1/n = 0.1 > eps for all -> capped at topk
    latent[1, :, :] = -5; latent[1, 3] = 5; glob[1] = 1  # one dominant query -> r = 1
    selected, counts, order = select_attributes(latent, glob, topk, eps)
    for i in range(b):
        a = torch.softmax(latent[i] @ glob[i], 0)
        r = min(max(int((a > eps).sum()), 1), topk)
        ranked = sorted(range(n), key=lambda j: (-a[j].item(), j))
        want = sorted(ranked[:r])
        assert counts[i].item() == r
        assert selected[i].nonzero().flatten().tolist() == want
    assert counts[0].item() == topk and counts[1].item() == 1
    assert selected[1].nonzero().flatten().tolist() == [3]


def test_minimum_one_attribute_when_nothing_passes_threshold():
    latent = torch.zeros(1, 30, 4)  # uniform 1/30 < 0.05
    selected, counts, _ = select_attributes(latent, torch.ones(1, 4), 12, 0.05)
    assert counts.tolist() == [1] and selected.sum().item() == 1


def test_orthogonality_loss_zero_for_orthonormal_and_matches_loop():
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    z = (q[:5] * 3.0).unsqueeze(0)  # scaled orthogonal rows: normalisation makes them orthonormal
    assert orthogonality_loss(z).item() < 1e-10
    z = torch.randn(3, 4, 6)
    ref = 0.0
    for i in range(3):
        for j in range(4):
            for k in range(4):
                c = F.cosine_similarity(z[i, j], z[i, k], dim=0).item()
                ref += (c - (1.0 if j == k else 0.0)) ** 2
    assert orthogonality_loss(z).item() == pytest.approx(ref / (3 * 16), rel=1e-5)


def test_contrastive_loss_matches_loop():
    torch.manual_seed(2)
    v, t, tau = torch.randn(5, 7), torch.randn(5, 7), 0.2
    x = F.normalize(torch.cat([v, t]), dim=-1)
    total = 0.0
    for i in range(10):
        pos = (i + 5) % 10
        num = math.exp((x[i] @ x[pos]).item() / tau)
        den = sum(math.exp((x[i] @ x[j]).item() / tau) for j in range(10) if j != i)
        total += -math.log(num / den)
    assert contrastive_loss(v, t, tau).item() == pytest.approx(total / 10, rel=1e-5)


def test_interleave_orders_subject_then_attributes():
    s = torch.tensor([[1.0], [2.0], [3.0]])
    a = torch.tensor([[10.0], [11.0], [30.0]])
    out = prompts.interleave(s, a, torch.tensor([2, 0, 1]))
    assert out.flatten().tolist() == [1.0, 10.0, 11.0, 2.0, 3.0, 30.0]


def test_regulariser_prompts():
    assert prompts.training_prompt(3) == "a photo of * with * * *"
    assert prompts.query_prompt(2, "make it *red*") == "a photo of * with * * but make it red"
    assert prompts.caption_prompt("a dog", "on the grass") == "a photo of a dog with on the grass"
    assert prompts.subject_prompt("on the grass") == "a photo of * with on the grass"
    assert prompts.attribute_prompt("a dog", 2) == "a photo of a dog with * *"


def test_fti_loss_terms_and_gradients(tiny_backbone):
    torch.manual_seed(0)
    net = create_mapping_network("fti4cir-tiny", backbone_dims(tiny_backbone))
    x = torch.randn(4, 3, 32, 32)
    feats = tiny_backbone.encode_image(x, with_tokens=True)
    total, terms = fti_loss(net, tiny_backbone, feats.pooled, feats.tokens, ["a dog"] * 4,
                            ["on grass", "red", "in a park", "at night"], LossWeights())
    want = terms["contrastive"] + terms["orthogonal"] + 1.4 * terms["regulariser"]
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    total.backward()
    for name in ["queries", "phi_s.layers.0.weight", "phi_a.layers.0.weight", "to_latent.0.weight"]:
        assert dict(net.named_parameters())[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_backbone.model.parameters())


def test_single_loss_and_checkpoint_query_roundtrip(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    net = create_mapping_network("single-tiny", backbone_dims(tiny_backbone))
    feats = tiny_backbone.encode_image(torch.randn(3, 3, 32, 32), with_tokens=True)
    loss, terms = single_loss(net, tiny_backbone, feats.pooled, None, None, None, LossWeights())
    assert loss.item() > 0 and set(terms) == {"contrastive"}
    fti = create_mapping_network("fti4cir-tiny", backbone_dims(tiny_backbone))
    from zscir.models.factory import get_mapping_config

    save_mapping_checkpoint(tmp_path / "fti", fti, get_mapping_config("fti4cir-tiny"), tiny_backbone)
    loaded, meta = load_mapping_checkpoint(tmp_path / "fti")
    assert meta["method"] == "fti"
    qe = load_query_encoder(str(tmp_path / "fti.safetensors"), tiny_backbone)
    q = qe.encode_queries(feats, ["make it red", "add a star", "remove the circle"])
    assert q.shape == (3, tiny_backbone.embed_dim)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3))
    # the same query built by hand from the network's pseudo-words
    fti.eval()
    pw = fti(feats.pooled, feats.tokens)
    hand = tiny_backbone.encode_prompts([prompts.query_prompt(r, t) for r, t in zip(pw.counts.tolist(), ["make it red", "add a star", "remove the circle"])],
                                        prompts.interleave(pw.subject, pw.attributes, pw.counts))
    torch.testing.assert_close(q, F.normalize(hand, dim=-1), atol=1e-5, rtol=0)


def test_baselines(tiny_backbone):
    feats = tiny_backbone.encode_image(torch.randn(2, 3, 32, 32))
    texts = ["red", "blue"]
    img = load_query_encoder("image", tiny_backbone).encode_queries(feats, texts)
    txt = load_query_encoder("text", tiny_backbone).encode_queries(feats, texts)
    summed = load_query_encoder("sum", tiny_backbone).encode_queries(feats, texts)
    torch.testing.assert_close(summed, F.normalize(img + txt, dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(img, F.normalize(feats.pooled, dim=-1))
