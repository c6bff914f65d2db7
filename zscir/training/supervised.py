"""Training a supervised composition head (Combiner or FineCIR-style) on triplets, over cached CLIP features.

CLIP is frozen, so everything it computes is computed once: image features
(and, for the FineCIR-style head, reference patch tokens) come from the
shared feature store, modification texts and entity phrases are encoded
once. The loop then trains only the head: in-batch cross-entropy on scaled
cosine similarity between composed queries and target features (fixed or
learned temperature), with AdamW. A batch's other ground-truth images (the
shapes world has several per query) are not counted as negatives.

Read top to bottom: the datasets, the triplet data, the loss, the loop,
the whole ``zscir train-supervised`` job.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from zscir.backbone import load_backbone
from zscir.backbone.options import resolve_pretrained
from zscir.benchmarks import get_benchmark, load_splits
from zscir.errors import ZscirError
from zscir.evaluation.features import default_cache_root, image_set_key
from zscir.evaluation.protocol import Protocol
from zscir.features import FeatureStore
from zscir.models import prompts
from zscir.models.supervised import (HEADS, create_head, encode_phrases, entity_phrases, head_config,
                                     project_patches, save_supervised_checkpoint)
from zscir.text import get_parser
from zscir.training.supervised_loop import run_epochs, start_run, steps_per_epoch

# dataset name -> (benchmark, {text style: split})
DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "fashioniq": ("fashioniq", {"fine": "train"}),
    "cirr": ("cirr", {"fine": "train"}),
    "fine-fashioniq": ("fine-fashioniq", {"fine": "train"}),
    "fine-cirr": ("fine-cirr", {"fine": "train"}),
    "shapes": ("shapes", {"fine": "train", "coarse": "train_coarse"}),
}


@dataclass
class SupervisedConfig:
    out: str = "runs/supervised"
    dataset: str = "shapes"
    texts: str = "fine"                   # shapes: fine | coarse modification texts
    head: str = "finecir-clip"            # combiner | finecir-clip (the BLIP-2 heads: supervised_blip2)
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.05
    temperature: float = 0.01             # logits = cosine / temperature (CLIP4Cir: x100)
    learn_temperature: bool = False
    parser: str = "auto"                  # text parser for the FineCIR-style head (auto | rules | sng)
    head_options: dict = field(default_factory=dict)   # overrides of zscir.models.supervised.DEFAULT_CONFIG
    seed: int = 0
    max_steps: Optional[int] = None
    threads: Optional[int] = None         # CPU threads for the loop (None: torch's default)
    data: dict = field(default_factory=dict)            # how the data was built (recorded)

    def split_name(self) -> str:
        if self.dataset not in DATASETS:
            raise ZscirError(f"unknown --dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        styles = DATASETS[self.dataset][1]
        if self.texts not in styles:
            raise ZscirError(f"--texts {self.texts!r} is not available for --dataset {self.dataset} "
                             f"(expected {', '.join(styles)})")
        return styles[self.texts]


# ---------------------------------------------------------------- triplet data
@dataclass
class TripletData:
    """Triplets as rows into cached feature tables."""

    ref_pooled: torch.Tensor            # [R, D] fp32, projected, not normalised
    ref_patches: Optional[torch.Tensor]  # [R, P, D] fp16 patch features in the joint space, or None
    targets: torch.Tensor               # [T, D] fp32, normalised
    ref_row: torch.Tensor               # [N] long
    target_row: torch.Tensor            # [N] long
    text_variants: list[list[int]]      # per triplet, indices into text_features (FashionIQ: both caption orders)
    text_features: torch.Tensor         # [U, D] fp32, not normalised
    entity_index: Optional[torch.Tensor]  # [U, K] long into phrase_features, -1 = padding
    phrase_features: Optional[torch.Tensor]  # [E + 1, D] normalised; the last row is padding (zeros)
    positives: torch.Tensor             # [N, G] long target rows that are ground truth, -1 = padding
    record: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ref_row)

    def batch(self, rows: np.ndarray, variant: np.ndarray) -> dict:
        rows_t = torch.from_numpy(rows)
        text_ids = torch.tensor([self.text_variants[r][v % len(self.text_variants[r])] for r, v in zip(rows, variant)])
        out = {"image": self.ref_pooled[self.ref_row[rows_t]], "text": self.text_features[text_ids],
               "target_rows": self.target_row[rows_t], "positives": self.positives[rows_t]}
        if self.ref_patches is not None:
            idx = self.entity_index[text_ids]
            out["entities"] = self.phrase_features[idx]            # -1 -> the zero padding row
            out["entity_mask"] = idx >= 0
            out["patches"] = self.ref_patches[self.ref_row[rows_t]].float()
        return out


def load_train_splits(dataset: str, split: str, root=None):
    benchmark = DATASETS[dataset][0]
    splits = load_splits(benchmark, root, split)
    if not any(s.queries for s in splits):
        raise ZscirError(f"{get_benchmark(benchmark).title} {split}: no triplets found")
    for s in splits:
        if not s.has_ground_truth:
            raise ZscirError(f"{s.name}: triplets without targets cannot train a head")
    return splits


def _features(backbone, cache_root: Path, label: str, split, ids: list[str], with_tokens: bool, progress: bool):
    """Cached features of ``ids`` (their files in ``split.images``); returns (ok ids, Features, corrupt ids)."""
    store = FeatureStore.for_backbone(Path(cache_root) / image_set_key(label, split, ids), backbone)
    report = store.update(backbone, [(i, split.images[i]) for i in ids], with_tokens=with_tokens, progress=progress)
    corrupt = {i for i, _ in report.corrupt}
    ok = [i for i in ids if i not in corrupt]
    return ok, store.load(ids=ok, tokens=with_tokens), corrupt


def build_triplet_data(splits, backbone, cache_root: Path, with_entities: bool, parser_name: str = "auto",
                       max_entities: int = 6, progress: bool = True, log=print) -> TripletData:
    """Everything the loop needs, from the frozen backbone and the feature cache."""
    protocol = Protocol()
    ref_pooled, ref_patches, targets = [], [], []
    ref_row, target_row, variants_text, positives = [], [], [], []
    corrupt_total: set[str] = set()
    n_ref = n_tgt = 0
    for split in splits:
        refs = list(dict.fromkeys(q.reference for q in split.queries))
        tgts = list(dict.fromkeys(t for q in split.queries for t in q.targets))
        label = split.gallery_name   # fine and coarse texts of one gallery share the cached features
        ok_r, fr, bad_r = _features(backbone, cache_root, f"{label}-references", split, refs, with_entities, progress)
        ok_t, ft, bad_t = _features(backbone, cache_root, f"{label}-targets", split, tgts, False, progress)
        corrupt_total |= bad_r | bad_t
        r_of = {r: n_ref + k for k, r in enumerate(ok_r)}
        t_of = {t: n_tgt + k for k, t in enumerate(ok_t)}
        ref_pooled.append(torch.from_numpy(np.asarray(fr.pooled, dtype=np.float32)))
        if with_entities:
            tokens = fr.tokens
            for start in range(0, len(ok_r), 512):
                chunk = torch.from_numpy(np.asarray(tokens[start:start + 512], dtype=np.float32))
                ref_patches.append(project_patches(backbone, chunk).cpu().half())
        targets.append(F.normalize(torch.from_numpy(np.asarray(ft.pooled, dtype=np.float32)), dim=-1))
        n_ref, n_tgt = n_ref + len(ok_r), n_tgt + len(ok_t)
        for q in split.queries:
            if q.reference not in r_of or q.targets[0] not in t_of:
                continue   # a corrupt reference or target: the triplet is skipped (counted in the record)
            ref_row.append(r_of[q.reference])
            target_row.append(t_of[q.targets[0]])
            variants_text.append([prompts.clean_text(t) for t in protocol.query_texts(split, q)])
            positives.append([t_of[t] for t in q.targets if t in t_of])
    if not ref_row:
        raise ZscirError("no usable triplet: every reference or target image is unreadable")

    unique_texts = list(dict.fromkeys(t for vs in variants_text for t in vs))
    text_id = {t: k for k, t in enumerate(unique_texts)}
    log(f"encoding {len(unique_texts)} modification texts")
    text_features = torch.cat([backbone.encode_text(unique_texts[i:i + 256]).float().cpu()
                               for i in range(0, len(unique_texts), 256)])
    entity_index = phrase_features = None
    record = {"triplets": len(ref_row), "skipped_triplets": sum(len(s.queries) for s in splits) - len(ref_row),
              "corrupt_images": sorted(corrupt_total), "references": n_ref, "targets": n_tgt,
              "texts": len(unique_texts), "splits": [s.name for s in splits],
              "sources": [src for s in splits for src in s.sources]}
    if with_entities:
        parser = get_parser(parser_name)
        phrase_lists = [entity_phrases(parser.parse(t), max_entities) for t in unique_texts]
        phrases = list(dict.fromkeys(p for ps in phrase_lists for p in ps))
        log(f"parsed {len(unique_texts)} texts with the {parser.name!r} parser: {len(phrases)} distinct entity phrases")
        phrase_id = {p: k for k, p in enumerate(phrases)}
        k = max(1, min(max_entities, max(len(ps) for ps in phrase_lists)))
        entity_index = torch.full((len(unique_texts), k), -1, dtype=torch.long)
        for u, ps in enumerate(phrase_lists):
            for j, p in enumerate(ps[:k]):
                entity_index[u, j] = phrase_id[p]
        phrase_features = torch.cat([encode_phrases(backbone, phrases), torch.zeros(1, backbone.embed_dim)])
        record.update(parser=parser.name, entity_phrases=len(phrases),
                      texts_without_entities=int((entity_index[:, 0] < 0).sum()))
    g = max(len(p) for p in positives)
    pos = torch.full((len(positives), g), -1, dtype=torch.long)
    for i, p in enumerate(positives):
        pos[i, :len(p)] = torch.tensor(p)
    return TripletData(torch.cat(ref_pooled), torch.cat(ref_patches) if with_entities else None, torch.cat(targets),
                       torch.tensor(ref_row), torch.tensor(target_row),
                       [[text_id[t] for t in vs] for vs in variants_text], text_features, entity_index,
                       phrase_features, pos, record)


# ---------------------------------------------------------------- loss
class Trainable(torch.nn.Module):
    """The head plus the (optionally learned) log inverse temperature."""

    def __init__(self, head, temperature: float, learn: bool):
        super().__init__()
        self.head = head
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


def in_batch_loss(model: Trainable, batch: dict, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the batch's targets; another query's target that is also ground truth is left out."""
    pred = model.head(batch["image"], batch["text"], batch.get("entities"), batch.get("entity_mask"),
                      batch.get("patches"))
    rows = batch["target_rows"]
    logits = model.scale * pred @ targets[rows].T
    also_true = (batch["positives"].unsqueeze(-1) == rows.view(1, 1, -1)).any(1)   # [B, B]
    also_true.fill_diagonal_(False)
    logits = logits.masked_fill(also_true, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(rows)))


def in_batch_loss_reference(model: Trainable, batch: dict, targets: torch.Tensor) -> torch.Tensor:
    """The same loss, one query at a time (the brute-force check of :func:`in_batch_loss`)."""
    pred = model.head(batch["image"], batch["text"], batch.get("entities"), batch.get("entity_mask"),
                      batch.get("patches"))
    rows = batch["target_rows"].tolist()
    total = 0.0
    for i in range(len(rows)):
        truth = set(batch["positives"][i].tolist()) - {-1}
        scores = [model.scale * (pred[i] @ targets[rows[j]]) for j in range(len(rows))
                  if j == i or rows[j] not in truth]
        own = [j for j in range(len(rows)) if j == i or rows[j] not in truth].index(i)
        total = total - torch.log_softmax(torch.stack(scores), 0)[own]
    return total / len(rows)


# ---------------------------------------------------------------- the loop
def train(cfg: SupervisedConfig, backbone, data: TripletData, resume: bool = False, progress_bar: bool = True,
          log=print) -> Path:
    """Train (or resume) a head on ``data``; return the path of the final checkpoint."""
    run_dir = Path(cfg.out)
    steps_per_epoch(len(data), cfg.batch_size)
    if cfg.threads:
        # the head's matrices are small: on a busy CPU, extra threads mostly wait for each other
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net_cfg = head_config(cfg.head, cfg.head_options)
    if HEADS[net_cfg["head"]].uses_entities and data.ref_patches is None:
        raise ZscirError("the FineCIR-style head needs data built with entities and reference tokens")
    model = Trainable(create_head(net_cfg, backbone.embed_dim), cfg.temperature, cfg.learn_temperature)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    record = {"supervised": asdict(cfg), "network": net_cfg, "backbone": backbone.identity,
              "backbone_source": backbone.source, "preprocess": backbone.preprocess_name}
    progress = start_run(run_dir, model, optimizer, record, resume, log)
    progress = run_epochs(cfg, model, optimizer, progress, len(data), run_dir, record,
                          lambda rows, variants: in_batch_loss(model, data.batch(rows, variants[rows]), data.targets),
                          log_extra=lambda losses: {"scale": float(model.scale)}, progress_bar=progress_bar)
    return save_supervised_checkpoint(
        run_dir / "model", model.head, net_cfg, backbone, data.record.get("parser", "none"),
        {"training": {"steps": progress.global_step, "epochs_done": progress.epoch, "temperature": 1 / float(model.scale),
                      "dataset": cfg.dataset, "texts": cfg.texts, "config": asdict(cfg) | {"data": {}},
                      "data": data.record}})


# ---------------------------------------------------------------- the whole job
def run_supervised_training(cfg: SupervisedConfig, root=None, clip_name=None, pretrained=None,
                            preprocess: str = "targetpad", cache_dir=None, device: str = "cpu", resume: bool = False,
                            progress: bool = True, log=print) -> dict:
    """The whole ``zscir train-supervised`` job: backbone, cached features, training. Returns a summary."""
    t0 = time.perf_counter()
    split = cfg.split_name()
    if clip_name is None:
        own_backbone = get_benchmark(DATASETS[cfg.dataset][0]).defaults.backbone   # its own (the shapes world's CLIP)
        if own_backbone is None:
            raise ZscirError(f"--dataset {cfg.dataset} needs a backbone: pass --clip NAME --pretrained TAG|FILE")
        backbone = own_backbone(device, preprocess)
    else:
        backbone = load_backbone(clip_name, resolve_pretrained(clip_name, pretrained), device=device,
                                 preprocess=preprocess)
    splits = load_train_splits(cfg.dataset, split, root)
    cache_root = Path(cache_dir) if cache_dir else default_cache_root()
    net_cfg = head_config(cfg.head, cfg.head_options)
    data = build_triplet_data(splits, backbone, cache_root, with_entities=HEADS[net_cfg["head"]].uses_entities,
                              parser_name=cfg.parser, max_entities=net_cfg["max_entities"], progress=progress, log=log)
    cfg.data = data.record
    t1 = time.perf_counter()
    checkpoint = train(cfg, backbone, data, resume=resume, progress_bar=progress, log=log)
    t2 = time.perf_counter()
    return {"checkpoint": str(checkpoint), "run_dir": cfg.out, "head": cfg.head, "dataset": cfg.dataset,
            "texts": cfg.texts, "triplets": len(data), "data": data.record,
            "seconds": {"data": round(t1 - t0, 2), "training": round(t2 - t1, 2), "total": round(t2 - t0, 2)}}
