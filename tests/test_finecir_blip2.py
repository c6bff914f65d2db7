"""FineCIR as published, on a tiny random BLIP-2: graph attention, forward and best-token loss against
straightforward loop implementations; training on the shapes world (overfit); train-supervised kill/resume."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zscir.models.blip2_heads.registry import blip2_head_config, create_blip2_head
from zscir.models.blip2_heads.graph import GraphAttention, entity_graphs
from zscir.text import get_parser
from zscir.training.supervised import SupervisedConfig, load_train_splits
from zscir.training.supervised_blip2 import (_load_blip2_backbone, best_token_loss, build_blip2_triplets,
                                             train_blip2)
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_blip2 import build_tiny_blip2  # noqa: E402

TEXTS = ["make the large red circle blue", "add a small star next to the square", "is darker"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zscir.world.build import WorldConfig, generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig.tiny(seed=5), workers=1,
                          progress=False, log=lambda m: None)


def _head(folder, seed=1):
    parts = _load_blip2_backbone(f"blip2:{folder}")
    torch.manual_seed(seed)
    head = create_blip2_head(blip2_head_config("finecir", {"graph_heads": 4}), parts.model, parts.tokenizer,
                             get_parser("rules"))
    return parts, head.eval()


def _graph_attention_by_loops(layer: GraphAttention, x, adjacency):
    """GATv2 as the formula reads, one node, neighbour and head at a time."""
    n, d = x.shape
    h = layer.heads
    w = d // h
    src, nb, val = layer.source(x), layer.neighbour(x), layer.value(x)
    mixed = torch.zeros(n, d)
    for i in range(n):
        for k in range(h):
            sl = slice(k * w, (k + 1) * w)
            js = [j for j in range(n) if adjacency[i, j]]
            if not js:
                continue
            e = torch.stack([(layer.score[k] * F.leaky_relu(src[i, sl] + nb[j, sl], 0.2)).sum() + layer.score_bias[k]
                             for j in js])
            alpha = torch.softmax(e, 0)
            mixed[i, sl] = sum(a * val[j, sl] for a, j in zip(alpha, js))
    return F.relu(layer.norm(src + mixed))


def test_graph_attention_equals_the_formula_by_loops():
    torch.manual_seed(0)
    layer = GraphAttention(32, heads=4).eval()
    x = torch.randn(3, 5, 32)
    adjacency = torch.rand(3, 5, 5) > 0.5
    adjacency |= torch.eye(5, dtype=torch.bool)
    fast = layer(x, adjacency)
    for g in range(3):
        assert torch.allclose(fast[g], _graph_attention_by_loops(layer, x[g], adjacency[g]), atol=1e-5)


def test_scene_graphs_of_the_parser():
    parser = get_parser("rules")
    graphs = entity_graphs(parser.parse("make the large red circle blue"), max_entities=6, max_nodes=8)
    assert graphs[0].nodes[:3] == ("circle", "large", "red") and any("blue" in n for n in graphs[0].nodes[3:])
    assert (0, 0) in graphs[0].edges and (0, 1) in graphs[0].edges and (1, 0) in graphs[0].edges
    assert (1, 2) not in graphs[0].edges                      # attributes meet only through their entity
    assert entity_graphs(parser.parse("is darker"), 6, 8) == []


def _compose_one_by_one(head, parts, image_hidden, text):
    """One query alone, no padding anywhere: phrases embedded one by one, graphs by loops, then the Q-Former."""
    model, tok = parts.model, parts.tokenizer
    entity_tokens = []
    for graph in head.graphs_of([text])[0]:
        nodes = []
        for phrase in graph.nodes:
            t = tok([phrase], return_tensors="pt")
            out = model.qformer(query_embeds=model.embeddings(input_ids=t["input_ids"]), query_length=0,
                                attention_mask=t["attention_mask"])
            nodes.append(out.last_hidden_state[0, 0])
        adjacency = torch.zeros(len(nodes), len(nodes), dtype=torch.bool)
        for i, j in graph.edges:
            adjacency[i, j] = True
        entity_tokens.append(_graph_attention_by_loops(head.graph, torch.stack(nodes), adjacency)[0])
    queries = model.query_tokens[0]
    if entity_tokens:
        queries = torch.cat([queries, torch.stack(entity_tokens)])
    t = tok([text], return_tensors="pt")
    embeds = torch.cat([queries, model.embeddings(input_ids=t["input_ids"])[0]])[None]
    out = model.qformer(query_embeds=embeds, query_length=len(queries),
                        attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long),
                        encoder_hidden_states=image_hidden[None])
    return F.normalize(model.text_projection(out.last_hidden_state[0, len(queries)]), dim=-1)


def test_forward_and_loss_equal_a_straightforward_implementation(folder):
    parts, head = _head(folder)
    torch.manual_seed(2)
    with torch.no_grad():
        refs = parts.model.vision_model(pixel_values=torch.randn(3, 3, 32, 32)).last_hidden_state
        tgts = parts.model.vision_model(pixel_values=torch.randn(3, 3, 32, 32)).last_hidden_state
        composed = head.compose(refs, TEXTS)                 # batched: padded entities, nodes and texts
        for b, text in enumerate(TEXTS):
            assert torch.allclose(composed[b], _compose_one_by_one(head, parts, refs[b], text), atol=1e-5)
        # candidates: the query tokens alone over each target; score: the best of them
        cands = head.candidates(tgts)
        for t in range(3):
            out = parts.model.qformer(query_embeds=parts.model.query_tokens, encoder_hidden_states=tgts[t:t + 1])
            want = F.normalize(parts.model.vision_projection(out.last_hidden_state[0]), dim=-1)
            assert torch.allclose(cands[t], want, atol=1e-5)
        # the best-token InfoNCE, by loops; target row 5 is also ground truth for query 0, so it is left out there
        rows, positives = torch.tensor([4, 5, 6]), torch.tensor([[4, 5], [5, -1], [6, -1]])
        loss = best_token_loss(head, refs, TEXTS, tgts, rows, positives)
        total = 0.0
        for i in range(3):
            kept = [j for j in range(3) if j == i or rows[j].item() not in positives[i].tolist()]
            logits = torch.stack([max(composed[i] @ cands[j, q] for q in range(cands.shape[1])) for j in kept])
            total -= torch.log_softmax(logits / head.temperature, 0)[kept.index(i)]
        assert kept == [0, 1, 2] and torch.allclose(loss, total / 3, atol=1e-5)
        assert len([j for j in range(3) if j == 0 or rows[j].item() not in positives[0].tolist()]) == 2


def test_trainable_parts_and_state(folder):
    parts, head = _head(folder)
    names = set(head.state_dict())
    assert "graph.score" in names and "temperature" in names and "query_tokens" in names
    assert any(n.startswith("qformer.") for n in names) and not any("vision_model" in n for n in names)
    assert not any(p.requires_grad for p in parts.model.vision_model.parameters())


def test_finecir_overfits_world_triplets(folder, world, tmp_path):
    parts = _load_blip2_backbone(f"blip2:{folder}")
    data = build_blip2_triplets(load_train_splits("shapes", "train", world), parts, log=lambda m: None)
    assert len(data) == 16        # one batch of all of them, every step: it must fit them
    cfg = SupervisedConfig(out=str(tmp_path / "run"), head="finecir", epochs=20, batch_size=16, lr=5e-3, seed=0,
                           parser="rules", head_options={"graph_heads": 4})
    train_blip2(cfg, parts, data, log=lambda m: None)
    losses = [x for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              for x in json.loads(line)["losses"]]
    assert len(losses) == 20 and sum(losses[-3:]) < 0.7 * sum(losses[:3])


def _cli(world, folder, out, extra=()):
    code = ("import sys; from zscir.cli import main; main(sys.argv[1:])")
    return [sys.executable, "-c", code, "train-supervised", "--dataset", "shapes", "--root", str(world), "--head",
            "finecir", "--backbone", f"blip2:{folder}", "--epochs", "3", "--batch-size", "4", "--lr", "1e-3",
            "--parser", "rules", "--threads", "1", "--out", str(out), "--json", *extra]


def test_train_supervised_kill_and_resume_equals_the_uninterrupted_run(folder, world, tmp_path):
    from zscir.checkpoint import load_checkpoint

    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(world, folder, tmp_path / "a"), env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    marker = tmp_path / "paused"
    proc = subprocess.Popen(_cli(world, folder, tmp_path / "b"), env={**env, **pause_env(marker, {
        "supervised.step": 6})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=interruptible)
    wait_paused(proc, marker)      # after step 6: epoch 0 (4 steps) saved, epoch 1 half done
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    subprocess.run(_cli(world, folder, tmp_path / "b", ["--resume"]), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, meta_a = load_checkpoint(tmp_path / "a" / "model")
    b, meta_b = load_checkpoint(tmp_path / "b" / "model")
    assert meta_a["kind"] == "supervised-blip2" and meta_b["training"]["steps"] == 12
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
