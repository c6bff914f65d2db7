"""Pretraining of a mapping network: any trainable method of :data:`zscir.models.methods.METHODS`.

A method's registry entry (:class:`zscir.models.method.Training`) gives its
objective, its default network config and its data: unlabeled images
(captions split into subject/attribute, frozen-CLIP features from the cache) or
captions alone (LinCIR: cached text features). Read top to bottom: resolve the
config, build the data, build the network and optimizer, then the loop. The
loop is written once against ``accelerate``: one CPU, one GPU, or many GPUs /
nodes through ``accelerate launch`` (or ``torchrun``). Each process takes an equal share of every global batch; the
contrastive loss gathers the features of all processes (with gradient) so its
denominator spans the global batch, exactly as on one process.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from zscir.backbone import load_backbone
from zscir.backbone.options import resolve_pretrained
from zscir.errors import ZscirError
from zscir.resolve import default_backbone
from zscir.models.factory import backbone_dims, create_mapping_network, get_mapping_config, save_mapping_checkpoint
from zscir.models.methods import METHODS, get_training
from zscir.models.objective import LossWeights
from zscir.utils.registry import load_entry
from zscir.training.pretrain_data import build_caption_set, build_pretraining_set
from zscir.training.state import (MAY_CHANGE_ON_RESUME, Progress, has_train_state, load_train_state,
                                  save_train_state, settings_changes, trim_log)
from zscir.utils.atomic import atomic_write_json
from zscir.utils.paths import cache_dir as default_cache_dir
from zscir.utils.process_group import end_at_exit
from zscir.utils.testpoint import testpoint

# the images (or captions) of a bare `zscir pretrain`: the default shapes world, a plugin above this layer
DEFAULT_WORLD = "zscir.world.build:default_world"


def default_network_config(method: str | None) -> str | None:
    """The registered default network config of a trainable ``method``; None for any other name."""
    entry = METHODS.get(method)
    return entry.training.network_config if entry is not None and entry.training is not None else None


@dataclass(frozen=True)
class Recipe:
    """A named preset: :class:`PretrainConfig` fields and :func:`run_pretraining` options, each applied
    unless the user set that option explicitly."""

    name: str
    config: dict
    run: dict
    source: str
    notes: tuple[str, ...] = ()


# FTI4CIR's official run: ZiChao111/FTI4CIR src/train.py as it runs (its argparse defaults; the README's
# command line uses option names train.py does not define), MHTransformer/i2t_model for the network,
# blip_caption.py for the captions and their split.
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("fti4cir-official",
           config={"method": "fti", "network_config": "fti4cir", "epochs": 80, "batch_size": 256, "lr": 4e-5,
                   "weight_decay": 0.01, "lr_decay_epoch": 10, "lr_decay": 0.1, "temperature": 0.2,
                   "orth_weight": 1.0, "reg_weight": 1.4, "seed": 42, "mixed_precision": "fp16"},
           run={"clip_name": "ViT-L-14", "pretrained": "openai", "preprocess": "targetpad",
                "splitter": "fti4cir-official", "captioner": "blip"},
           source="ZiChao111/FTI4CIR src/train.py defaults, src/blip_caption.py",
           notes=("fp16 autocast with a gradient scaler needs a GPU (accelerate mixed_precision=fp16)",
                  "the official data: BLIP captions of the 100k ImageNet-1K test images (--images)",
                  "the official README says --epochs=60 but train.py runs its default 80",
                  "batch order: zscir's seeded permutation per epoch, not torch's DataLoader shuffle",
                  "the official getLoss(images, subject, attribute) fills parameters named (captions, category): "
                  "its regulariser prompts read 'a photo of {attribute} with {subject}'; zscir keeps the paper's "
                  "order")),
]}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ZscirError(f"unknown recipe {name!r} (option --recipe): expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


def apply_recipe(name: str, cfg: "PretrainConfig", run: dict, explicit: set[str], cuda: bool | None = None):
    """``cfg`` and the run options with recipe ``name`` filled in where the user did not set them.

    Returns (cfg, run, record); the record lists what the recipe set, what the user overrode, and notes.
    """
    recipe = get_recipe(name)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    values = {k: v for k, v in recipe.config.items() if k not in explicit}
    notes = list(recipe.notes)
    if values.get("mixed_precision") == "fp16" and not cuda:
        values["mixed_precision"] = "no"
        notes.append("no GPU: this run is fp32, not the official fp16 autocast")
    cfg = replace(cfg, **values)
    run = {**run, **{k: v for k, v in recipe.run.items() if k not in explicit}}
    record = {"recipe": name, "source": recipe.source, "set": {**values, **{k: v for k, v in recipe.run.items()
                                                                          if k not in explicit}},
              "overridden": sorted(explicit & (set(recipe.config) | set(recipe.run))), "notes": notes}
    return cfg, run, record


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    method: str = "fti"                   # a trainable method (zscir.models.methods.trainable_methods())
    network_config: Optional[str] = None  # a name in zscir/models/configs (default per method)
    dropout: Optional[float] = None       # overrides the network config
    epochs: int = 60
    batch_size: int = 256                 # global batch, split over processes
    lr: float = 4e-5
    weight_decay: float = 0.01
    lr_decay_epoch: int = 10              # lr x lr_decay from this epoch on
    lr_decay: float = 0.1
    temperature: Optional[float] = None   # the loss weights: the method's defaults (Training.weights) unless set
    orth_weight: Optional[float] = None
    reg_weight: Optional[float] = None
    seed: int = 0
    save_every_steps: int = 500
    mixed_precision: str = "no"           # no | bf16 | fp16 (accelerate; GPU)
    max_steps: Optional[int] = None       # stop early (smoke runs, benchmarks)
    # options of one method each (Training.options); None: not given
    vocabulary: Optional[str] = None      # searle: concept words, one a line (default: the world's)
    phrases: Optional[str] = None         # searle: regulariser phrases with one {} slot, one a line
    oti_steps: Optional[int] = None       # searle: OTI steps per image (official 350)
    oti_batch_size: Optional[int] = None  # searle: images inverted together (official 32)
    oti_top_k: Optional[int] = None       # searle: concepts per image (official 15; at most the vocabulary's size)
    oti_images: Optional[int] = None      # searle: invert (and train phi on) a seeded subset of this many images
    edits: Optional[str] = None           # scot: caption-edit JSONL (default: the world's generator)
    data: dict = field(default_factory=dict)  # how the data was built (recorded, not used by the loop)
    recipe: dict = field(default_factory=dict)  # the --recipe applied, if any (recorded)

    def resolved_weights(self) -> LossWeights:
        """The method's default loss weights with the ones this run sets."""
        given = {"temperature": self.temperature, "orth": self.orth_weight, "reg": self.reg_weight}
        return replace(get_training(self.method).weights, **{k: v for k, v in given.items() if v is not None})

    def check_method_options(self) -> None:
        """Refuse an option of another method (a one-line error naming it)."""
        allowed = get_training(self.method).options
        for name in METHOD_OPTIONS:
            if getattr(self, name) is not None and name not in allowed:
                owners = [m for m in METHODS if METHODS[m].training and name in METHODS[m].training.options]
                raise ZscirError(f"--{name.replace('_', '-')} is an option of --method {' / '.join(owners)}, "
                                 f"not of --method {self.method}")

    def resolved_network_config(self) -> dict:
        name = self.network_config or get_training(self.method).network_config
        cfg = get_mapping_config(name)
        if cfg["method"] != self.method:
            raise ZscirError(f"network config {name!r} is for method {cfg['method']!r}, not --method {self.method}")
        if self.dropout is not None:
            cfg["dropout"] = self.dropout
        return cfg


# the PretrainConfig fields that belong to one method each, in registry order (Training.options)
METHOD_OPTIONS = tuple(dict.fromkeys(o for m in METHODS.values() if m.training for o in m.training.options))


def check_resume_settings(run_dir: Path, cfg: PretrainConfig) -> None:
    """Refuse to resume the run in ``run_dir`` with other training settings than it was trained with (one
    line naming each, old -> new); those of :data:`MAY_CHANGE_ON_RESUME` (how long, how often it saves) may change."""
    try:
        recorded = json.loads((run_dir / "config.json").read_text())["pretrain"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no readable record to compare with: the CLI refuses such a folder before any work
    current = {k: v for k, v in asdict(cfg).items() if k not in ("out", "data", "recipe")}
    options = {k: "--" + k.replace("_", "-") for k in current} | {"save_every_steps": "--save-every"}
    changes = settings_changes(recorded, current, options)
    if changes:
        raise ZscirError(f"--resume: {run_dir} was trained with other settings ({'; '.join(changes)}): resume "
                         f"with the run's own, or start a new run in another --out (only "
                         f"{', '.join(options[k] for k in MAY_CHANGE_ON_RESUME)} may change on resume)")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run sees the same."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_gather(accelerator):
    """All-gather (image, text) features across processes, keeping the gradient of the local share."""
    if accelerator.num_processes == 1:
        return lambda v, t: (v, t)
    from torch.distributed.nn.functional import all_gather  # deferred (torch): only several processes need it

    return lambda v, t: (torch.cat(all_gather(v.contiguous())), torch.cat(all_gather(t.contiguous())))


def local_share(global_batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's share of a global batch."""
    return global_batch[rank::world]


def batch_loss(network, backbone, data, global_batch, rank, world, objective, weights, gather, epoch=0):
    """Loss of one global batch of epoch ``epoch`` as seen by process ``rank`` (identical on every process)."""
    return objective(network, backbone, data.batch(local_share(global_batch, rank, world), epoch), weights, gather)


def train(cfg: PretrainConfig, backbone, data, accelerator=None, resume: bool = False, progress_bar: bool = True) -> Path:
    """Run (or resume) pretraining; return the path of the final mapping-network checkpoint."""
    from accelerate import Accelerator  # deferred (accelerate): heavy, and only a run needs it

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    end_at_exit()
    run_dir = Path(cfg.out)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % world:
        raise ZscirError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")
    steps_per_epoch = len(data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ZscirError(f"only {len(data)} training items: fewer than one batch of --batch-size {cfg.batch_size}")

    torch.manual_seed(cfg.seed + rank)
    net_cfg = cfg.resolved_network_config()
    network = create_mapping_network(net_cfg, backbone_dims(backbone)).to(backbone.device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = cfg.resolved_weights()
    record = {"pretrain": asdict(cfg), "network": net_cfg, "loss_weights": asdict(weights), "backbone": backbone.identity,
              "backbone_source": backbone.source, "preprocess": backbone.preprocess_name, "num_images": len(data),
              "num_processes": world}
    progress = Progress()
    if resume and has_train_state(run_dir):
        check_resume_settings(run_dir, cfg)
        progress = load_train_state(run_dir, network, optimizer, rank)
        accelerator.print(f"resuming {run_dir} at epoch {progress.epoch}, step {progress.step_in_epoch}")
    if accelerator.is_main_process:  # on resume too: the settings that may change (--epochs, ...) as now run
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", record)
    if resume and accelerator.is_main_process:
        trim_log(run_dir / "log.jsonl", progress.global_step)  # the steps after the last checkpoint are redone
    network, optimizer = accelerator.prepare(network, optimizer)
    objective = get_training(cfg.method).objective
    gather = make_gather(accelerator)
    log = open(run_dir / "log.jsonl", "a") if accelerator.is_main_process else None

    def checkpoint():
        rngs = [torch.get_rng_state()]
        if world > 1:
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, torch.get_rng_state())
        if accelerator.is_main_process:
            save_train_state(run_dir, accelerator.unwrap_model(network), optimizer.optimizer
                             if hasattr(optimizer, "optimizer") else optimizer, progress, record, rngs)

    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    bar = tqdm(total=total_steps, initial=progress.global_step, disable=not (progress_bar and accelerator.is_main_process),
               desc=f"pretrain {cfg.method}", unit="step")
    network.train()
    while progress.epoch < cfg.epochs and progress.global_step < total_steps:
        lr = cfg.lr * (cfg.lr_decay if progress.epoch >= cfg.lr_decay_epoch else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = epoch_order(len(data), cfg.seed, progress.epoch)[: steps_per_epoch * cfg.batch_size]
        batches = batches.reshape(steps_per_epoch, cfg.batch_size)
        while progress.step_in_epoch < steps_per_epoch and progress.global_step < total_steps:
            t0 = time.perf_counter()
            with accelerator.autocast():
                loss, terms = batch_loss(network, backbone, data, batches[progress.step_in_epoch], rank, world,
                                         objective, weights, gather, progress.epoch)
            t1 = time.perf_counter()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            progress.step_in_epoch += 1
            progress.global_step += 1
            # per-sample terms are local means: their mean over processes is the global-batch value
            loss = accelerator.reduce(loss.detach(), reduction="mean")
            terms = {k: accelerator.reduce(v.detach(), reduction="mean") for k, v in terms.items()}
            if not math.isfinite(loss.item()):
                raise ZscirError(f"loss became {loss.item()} at step {progress.global_step}: lower --lr")
            if log is not None:
                entry = {"step": progress.global_step, "epoch": progress.epoch, "lr": lr, "loss": loss.item(),
                         **{k: float(v) for k, v in terms.items()},
                         "samples_per_s": cfg.batch_size / (t2 - t0), "data_wait_s": data.last_wait_s,
                         "forward_s": t1 - t0 - data.last_wait_s, "backward_s": t2 - t1}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{entry['loss']:.3f}", sps=f"{entry['samples_per_s']:.0f}")
            bar.update(1)
            testpoint("pretrain.step")  # tests: a kill after a step, before its save (zscir.utils.testpoint)
            if cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0:
                checkpoint()
        if progress.step_in_epoch == steps_per_epoch:
            progress.epoch += 1
            progress.step_in_epoch = 0
        checkpoint()
    bar.close()
    final = run_dir / "model.safetensors"
    if accelerator.is_main_process:
        save_mapping_checkpoint(run_dir / "model", accelerator.unwrap_model(network), net_cfg, backbone,
                                {"training": {"steps": progress.global_step, "epochs_done": progress.epoch,
                                              "config": {k: v for k, v in asdict(cfg).items() if k != "data"},
                                              "loss_weights": asdict(weights), "data": cfg.data}})
        log.close()
    accelerator.wait_for_everyone()
    return final


def run_pretraining(cfg: PretrainConfig, images: Optional[str] = None, captions: Optional[str] = None,
                    captioner: str = "blip", clip_name: Optional[str] = None, pretrained: Optional[str] = None,
                    preprocess: str = "targetpad", feature_cache: str = "full", cache_dir: Optional[str] = None,
                    resume: bool = False, splitter: str = "auto") -> dict:
    """The whole ``zscir pretrain`` job: backbone, data with cached features, training. Returns a summary."""
    from accelerate import Accelerator  # deferred (accelerate): heavy, and only a run needs it

    training = get_training(cfg.method)
    cfg.check_method_options()
    if training.data == "captions" and images is not None:
        raise ZscirError(f"--method {cfg.method} trains on captions alone: pass --captions FILE, not --images")

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    end_at_exit()
    device = accelerator.device
    if clip_name is None:
        backbone = default_backbone(device, preprocess)
    else:
        backbone = load_backbone(clip_name, resolve_pretrained(clip_name, pretrained), device=device,
                                 preprocess=preprocess)
    world = None  # the shapes world supplies what the user did not: its images, or (captions methods) its captions
    if (captions if training.data == "captions" else images) is None:
        world = load_entry(DEFAULT_WORLD)()
        if training.data == "images":
            images, captioner = str(world / "unlabeled" / "images"), f"shapes-world:{world}"
    cache_root = cache_dir or default_cache_dir() / "features"
    with accelerator.main_process_first():  # the main process fills the caches, the others then read them
        if training.data == "captions":
            data, record = build_caption_set(captions, world, backbone, cache_root, splitter, log=accelerator.print)
        else:
            data, record = build_pretraining_set(images, captions, captioner, backbone, cache_root, feature_cache,
                                                 need_tokens=METHODS[cfg.method].needs_tokens,
                                                 log=accelerator.print, splitter=splitter)
        if training.prepare is not None:
            data = training.prepare(cfg, data, backbone, world, cache_root, accelerator, accelerator.print)
            record = {**record, **data.record}
    cfg.data = record
    checkpoint = train(cfg, backbone, data, accelerator=accelerator, resume=resume)
    return {"checkpoint": str(checkpoint), "run_dir": cfg.out, "data": record, "method": cfg.method}
