"""Training a BLIP-2 head (FineCIR as published, FashionBLIP-2; :mod:`zscir.models.blip2_heads`) on triplets.

The vision encoder is frozen in both heads, so its last hidden state of every reference and
target image is computed once (kept in memory: fine for the shapes world; a FashionIQ-sized run
needs a GPU and would encode per batch instead). Each step runs the trainable part -- the
Q-Former (FineCIR) or the adapters in it (FashionBLIP-2) -- on the batch's references with their
texts and on the batch's targets, and takes the best-token InfoNCE over the batch:

    logits[i, j] = max_q <composed_i, target_j,q> / temperature     (FashionBLIP-2: mean over heads)
    loss = cross-entropy(logits, diagonal)

with another query's target that is also ground truth for query i left out (the shapes world has
several), as the CLIP heads do (:func:`zscir.training.supervised.in_batch_loss`). AdamW with the
recipe's betas and eps. Resume: the whole state (weights, optimizer, RNG) is saved at each epoch's
end; a resumed run redoes the steps after it and ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.backbone.blip2_loading import load_blip2
from zscir.checkpoint import save_checkpoint
from zscir.errors import ZscirError
from zscir.evaluation.protocol import Protocol
from zscir.models import prompts
from zscir.models.blip2_heads.registry import blip2_head_config, create_blip2_head, recipe
from zscir.text import get_parser
from zscir.training.supervised import SupervisedConfig, load_train_splits
from zscir.training.supervised_loop import run_epochs, start_run, steps_per_epoch

BLIP2_PREFIX = "blip2:"


@dataclass
class Blip2Parts:
    """What training needs of a BLIP-2: the transformers model, its tokenizer and image processor, its identity."""

    model: object
    tokenizer: object
    image_processor: object
    identity: dict
    source: dict | None = None      # how to load it again (the backbone's ``source``), recorded in the checkpoint


def _load_blip2_backbone(spec: str, device: str = "cpu") -> Blip2Parts:
    """``blip2:<id or folder>`` -> its parts, through the one BLIP-2 loader (:func:`zscir.backbone.blip2_loading.load_blip2`)."""
    if not spec.startswith(BLIP2_PREFIX):
        raise ZscirError(f"--backbone {spec!r}: a BLIP-2 head needs a BLIP-2 backbone, blip2:<Hugging Face id or folder>")
    backbone = load_blip2(spec, device=device)   # frozen; the heads unfreeze what they train
    return Blip2Parts(backbone.model, backbone.tokenizer, backbone.processor.image_processor, backbone.identity,
                      backbone.source)


@dataclass
class Blip2Triplets:
    ref_hidden: torch.Tensor        # [R, N, W] frozen vision hidden states of the references
    target_hidden: torch.Tensor     # [T, N, W] of the targets
    ref_row: torch.Tensor           # [M] long
    target_row: torch.Tensor        # [M] long
    texts: list[list[str]]          # per triplet its text variants
    positives: torch.Tensor         # [M, G] target rows that are ground truth, -1 = padding
    record: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ref_row)


@torch.no_grad()
def vision_hidden(parts: Blip2Parts, paths: list, batch_size: int = 32) -> torch.Tensor:
    model = parts.model
    out = []
    for i in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + batch_size]]
        pixels = parts.image_processor(images, return_tensors="pt")["pixel_values"].to(model.device)
        out.append(model.vision_model(pixel_values=pixels).last_hidden_state.float())
    return torch.cat(out)


def build_blip2_triplets(splits, parts: Blip2Parts, log=print) -> Blip2Triplets:
    protocol = Protocol()
    refs_h, tgts_h, ref_row, target_row, texts, positives = [], [], [], [], [], []
    n_ref = n_tgt = 0
    for split in splits:
        refs = list(dict.fromkeys(q.reference for q in split.queries))
        tgts = list(dict.fromkeys(t for q in split.queries for t in q.targets))
        log(f"{split.name}: encoding {len(refs)} references and {len(tgts)} targets with the frozen vision encoder")
        refs_h.append(vision_hidden(parts, [split.images[r] for r in refs]))
        tgts_h.append(vision_hidden(parts, [split.images[t] for t in tgts]))
        r_of = {r: n_ref + k for k, r in enumerate(refs)}
        t_of = {t: n_tgt + k for k, t in enumerate(tgts)}
        n_ref, n_tgt = n_ref + len(refs), n_tgt + len(tgts)
        for q in split.queries:
            ref_row.append(r_of[q.reference])
            target_row.append(t_of[q.targets[0]])
            texts.append([prompts.clean_text(t) for t in protocol.query_texts(split, q)])
            positives.append([t_of[t] for t in q.targets])
    g = max(len(p) for p in positives)
    pos = torch.full((len(positives), g), -1, dtype=torch.long)
    for i, p in enumerate(positives):
        pos[i, :len(p)] = torch.tensor(p)
    record = {"triplets": len(ref_row), "references": n_ref, "targets": n_tgt, "splits": [s.name for s in splits],
              "sources": [src for s in splits for src in s.sources]}
    return Blip2Triplets(torch.cat(refs_h), torch.cat(tgts_h), torch.tensor(ref_row), torch.tensor(target_row),
                         texts, pos, record)


def best_token_loss(head, ref_hidden: torch.Tensor, texts: list[str], target_hidden: torch.Tensor,
                    target_rows: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The batch's best-token InfoNCE (module doc); ``target_hidden`` [B, N, W] are the batch's own targets."""
    logits = head.logit_scale() * head.scores(head.compose(ref_hidden, texts), head.candidates(target_hidden))
    also_true = (positives.unsqueeze(-1) == target_rows.view(1, 1, -1)).any(1)
    also_true.fill_diagonal_(False)
    logits = logits.masked_fill(also_true.to(logits.device), float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(target_rows), device=logits.device))


def _optimizer(head, cfg: SupervisedConfig, training: dict):
    return torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay, betas=tuple(training["betas"]), eps=training["eps"])


def train_blip2(cfg: SupervisedConfig, parts: Blip2Parts, data: Blip2Triplets, resume: bool = False,
                progress_bar: bool = True, log=print) -> Path:
    """Train (or resume) a BLIP-2 head on ``data``; return the path of the final checkpoint."""
    run_dir = Path(cfg.out)
    steps_per_epoch(len(data), cfg.batch_size)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net_cfg = blip2_head_config(cfg.head, cfg.head_options)
    parser = get_parser(cfg.parser)
    head = create_blip2_head(net_cfg, parts.model, parts.tokenizer, parser)
    optimizer = _optimizer(head, cfg, recipe(cfg.head)["training"])
    record = {"supervised": asdict(cfg), "network": net_cfg, "backbone": parts.identity}
    progress = start_run(run_dir, head, optimizer, record, resume, log)
    device = parts.model.device

    def step_loss(rows: np.ndarray, variants: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(rows)
        texts = [data.texts[r][variants[r] % len(data.texts[r])] for r in rows.tolist()]
        target_rows = data.target_row[rows]
        return best_token_loss(head, data.ref_hidden[data.ref_row[rows]].to(device), texts,
                               data.target_hidden[target_rows].to(device), target_rows, data.positives[rows])

    progress = run_epochs(cfg, head, optimizer, progress, len(data), run_dir, record, step_loss,
                          log_extra=lambda losses: {"losses": losses}, progress_bar=progress_bar)
    meta = {"kind": "supervised-blip2", "method": f"supervised-{cfg.head}", "head": cfg.head, "config": net_cfg,
            "parser": parser.name, "backbone": parts.identity, "backbone_source": parts.source,
            "training": {"steps": progress.global_step, "epochs_done": progress.epoch, "dataset": cfg.dataset,
                         "texts": cfg.texts, "config": asdict(cfg) | {"data": {}}, "data": data.record}}
    return save_checkpoint(run_dir / "model", head.state_dict(), meta)


def run_blip2_training(cfg: SupervisedConfig, backbone: str, root=None, device: str = "cpu", resume: bool = False,
                       log=print) -> dict:
    """The whole ``zscir train-supervised --head finecir|fashionblip2 --backbone blip2:...`` job."""
    t0 = time.perf_counter()
    split = cfg.split_name()
    parts = _load_blip2_backbone(backbone, device)
    data = build_blip2_triplets(load_train_splits(cfg.dataset, split, root), parts, log=log)
    cfg.data = data.record
    t1 = time.perf_counter()
    checkpoint = train_blip2(cfg, parts, data, resume=resume, log=log)
    t2 = time.perf_counter()
    return {"checkpoint": str(checkpoint), "run_dir": cfg.out, "head": cfg.head, "dataset": cfg.dataset,
            "texts": cfg.texts, "triplets": len(data), "data": data.record,
            "seconds": {"data": round(t1 - t0, 2), "training": round(t2 - t1, 2), "total": round(t2 - t0, 2)}}
