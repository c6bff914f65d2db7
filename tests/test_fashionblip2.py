"""FashionBLIP-2 on a tiny random BLIP-2: frozen weights stay bit-identical while the adapters train, an untrained
head is its BLIP-2, multi-head matching by loops, training on the shapes world's triplets."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zscir.models.blip2_heads.registry import blip2_head_config, create_blip2_head
from zscir.models.blip2_heads import qformer
from zscir.training.supervised import SupervisedConfig, load_train_splits
from zscir.training.supervised_blip2 import _load_blip2_backbone, best_token_loss, build_blip2_triplets, train_blip2

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_blip2 import build_tiny_blip2  # noqa: E402

TEXTS = ["make the circle blue", "add a small star", "is darker"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")


def _setup(folder, seed=3):
    parts = _load_blip2_backbone(f"blip2:{folder}")
    torch.manual_seed(seed)
    head = create_blip2_head(blip2_head_config("fashionblip2"), parts.model, parts.tokenizer)
    refs = parts.model.vision_model(pixel_values=torch.randn(3, 3, 32, 32)).last_hidden_state.detach()
    tgts = parts.model.vision_model(pixel_values=torch.randn(3, 3, 32, 32)).last_hidden_state.detach()
    return parts, head, refs, tgts


def test_a_training_step_changes_the_adapters_only(folder):
    parts, head, refs, tgts = _setup(folder)
    frozen = {k: v.clone() for k, v in parts.model.state_dict().items()}
    adapters = {k: v.clone() for k, v in head.state_dict().items()}
    assert set(adapters) == {"temperature"} | {f"adapters.0.{m}.{p}" for m in ("down", "up") for p in ("weight", "bias")}
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    head.train()
    loss = best_token_loss(head, refs, TEXTS, tgts, torch.arange(3), torch.arange(3)[:, None])
    loss.backward()
    optimizer.step()
    for k, v in parts.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k                         # bit-identical
    changed = [k for k, v in head.state_dict().items() if not torch.equal(v, adapters[k])]
    assert {"adapters.0.up.weight", "adapters.0.down.weight", "temperature"} <= set(changed)
    # hooks are gone after the head's passes: the BLIP-2 itself still composes as before the adapters
    ids, mask = qformer.tokenize(parts.tokenizer, TEXTS, 32, "cpu")
    with torch.no_grad():
        plain = qformer.compose(parts.model, refs, ids, mask)
        adapted = head.compose(refs, TEXTS)
    assert not torch.allclose(plain, adapted, atol=1e-6)
    assert all(not layer._forward_hooks for layer in parts.model.qformer.encoder.layer)


def test_untrained_head_is_its_blip2_and_multi_head_matching_by_loops(folder):
    parts, head, refs, tgts = _setup(folder)
    ids, mask = qformer.tokenize(parts.tokenizer, TEXTS, 32, "cpu")
    with torch.no_grad():
        composed, cands = head.compose(refs, TEXTS), head.candidates(tgts)
        assert torch.allclose(composed, qformer.compose(parts.model, refs, ids, mask), atol=1e-6)   # up = 0
        assert torch.allclose(cands, qformer.candidate_tokens(parts.model, tgts), atol=1e-6)
        scores = head.scores(composed, cands)
    h, d = head.match_heads, composed.shape[-1] // head.match_heads
    for b in range(3):
        for t in range(3):
            per_head = []
            for k in range(h):
                c = F.normalize(composed[b, k * d:(k + 1) * d], dim=0)
                per_head.append(max(float(c @ F.normalize(cands[t, q, k * d:(k + 1) * d], dim=0))
                                    for q in range(cands.shape[1])))
            assert abs(scores[b, t].item() - sum(per_head) / h) < 1e-5


def test_fashionblip2_trains_on_world_triplets(folder, tmp_path):
    from zscir.world.build import WorldConfig, generate_world

    world = generate_world(tmp_path / "w", WorldConfig.tiny(seed=5), workers=1, progress=False, log=lambda m: None)
    parts = _load_blip2_backbone(f"blip2:{folder}")
    data = build_blip2_triplets(load_train_splits("shapes", "train", world), parts, log=lambda m: None)
    frozen = {k: v.clone() for k, v in parts.model.state_dict().items()}
    cfg = SupervisedConfig(out=str(tmp_path / "run"), head="fashionblip2", epochs=8, batch_size=16, lr=5e-3, seed=0)
    path = train_blip2(cfg, parts, data, log=lambda m: None)
    losses = [x for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              for x in json.loads(line)["losses"]]
    assert len(losses) == 8 and sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert all(torch.equal(v, frozen[k]) for k, v in parts.model.state_dict().items())
    assert json.loads(Path(str(path).replace(".safetensors", ".json")).read_text())["head"] == "fashionblip2"
