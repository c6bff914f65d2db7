"""Train the shapes world's tiny CLIP contrastively on rendered scenes and their captions.

A short trainer, readable top to bottom:

1. draw training-part scenes, in pairs: with probability ``twin_fraction`` the
   second scene of a pair is the first with one attribute changed (color,
   shape, size, pattern, position or background; weighted, see TWIN_KINDS),
   so that every batch holds hard negatives and the model must bind each
   attribute to its object;
2. render them once into a uint8 array (rendering on the fly would dominate
   the step time on 2 cores) and tokenize several caption variants per scene;
3. AdamW with warmup + cosine, CLIP's symmetric InfoNCE with a learnable
   logit scale (open_clip's ``ClipLoss``); text is run only up to the longest
   caption of its length bucket, which gives the same features as the full
   context (causal mask, EOT pooling) at a fraction of the cost;
   for the first ``text_lock_steps`` the text tower stays at its random init
   (as LiT locks a tower, here the other way round and only for a while).
   Without it, a randomly initialised ViT gives nearly the same feature for
   every image, the text tower collapses its position words within ~25 steps
   to match, and the pair sits on a saddle where neither tower learns
   position (measured: position sensitivity 0.51-0.61 after 700 steps). A
   locked random text tower still tells "top left" from "bottom", so the
   image tower has to learn where things are; ``precision``: :mod:`zscir.world.train_precision`;
4. save the weights in fp16 safetensors, loadable by
   ``zscir.backbone.load_backbone(name, pretrained=path)``.

A run directory keeps a resumable state (weights + optimizer + step, loaded
with ``weights_only=True``); a killed run continues from its last save.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from zscir.backbone import load_backbone, register_model_configs
from zscir.backbone.tokenize import WordCachedTokenizer
from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_path, atomic_write_json
from zscir.utils.cpu import cpu_name
from zscir.utils.pools import spawn_pool
from zscir.world.captions import canonical_caption, random_caption
from zscir.world.eval_backbone import SENSITIVITY_KINDS, perturbed_caption
from zscir.world.render import render_array, render_rng
from zscir.world.spec import BACKGROUNDS, Scene, sample_scene, spec_part
from zscir.world.spec import ATTRIBUTES, choice
from zscir.world.train_precision import check_train_precision, tower_autocast, validate_train_precision

DEFAULT_MODEL = "zscir-shapes-vit"
# what a twin changes, with weights: position, shape and pattern are what a contrastive model learns
# last (a first run with uniform weights ended position-blind), so they get more twins
TWIN_KINDS = {"cell": 3.0, "shape": 2.0, "pattern": 2.0, "size": 1.0, "color": 0.5, "background": 0.5}
RENDER_SEED_OFFSET = 7_000_000  # training renderings use their own seed space, apart from any world's


@dataclass(frozen=True)
class TrainConfig:
    model: str = DEFAULT_MODEL
    seed: int = 0
    num_scenes: int = 200_000
    captions_per_scene: int = 4
    steps: int = 1600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    text_lock_steps: int = 150
    init_logit_scale: float = 50.0   # CLIP starts at 1/0.07 ~ 14; a short run learns twin differences faster from 50
    twin_fraction: float = 0.8
    twin_kinds: tuple = tuple(TWIN_KINDS.items())
    threads: int = 2
    render_workers: int = 2
    save_every: int = 100
    # NegCLIP-style text negatives: per image, its canonical caption with one word of these kinds changed
    # joins the batch's texts as an extra negative (empty: off, as for the shipped weights)
    text_negatives: tuple = ()
    init: Optional[str] = None        # start from these weights instead of a random init (fine-tuning)
    precision: str = "fp32"           # "bf16": the towers' forward under bf16 autocast (zscir.world.train_precision)

    def __post_init__(self):
        if self.batch_size % 2:
            raise ZscirError(f"--batch-size must be even (scenes come in pairs), got {self.batch_size}")
        if self.num_scenes < self.batch_size or self.num_scenes % 2:
            raise ZscirError(f"--num-scenes must be even and at least the batch size, got {self.num_scenes}")
        if not 0 <= self.twin_fraction <= 1:
            raise ZscirError(f"--twin-fraction must be in [0, 1], got {self.twin_fraction}")
        for kind, weight in self.twin_kinds:
            if kind not in TWIN_KINDS or weight < 0:
                raise ZscirError(f"--twin-kinds: {kind}={weight}: expected kinds among {', '.join(TWIN_KINDS)} with weights >= 0")
        unknown = [k for k in self.text_negatives if k not in SENSITIVITY_KINDS]
        if unknown:
            raise ZscirError(f"--text-negatives: unknown kind(s) {', '.join(unknown)}; expected among {', '.join(SENSITIVITY_KINDS)}")
        validate_train_precision(self.precision)


# --- data ---------------------------------------------------------------------------------------------

def perturb(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    """``scene`` with one attribute of one object (or the background) changed."""
    if kind == "background":
        return Scene(choice(rng, [b for b in BACKGROUNDS if b != scene.background]), scene.objects)
    obj = choice(rng, scene.objects)
    if kind == "cell":
        new = choice(rng, scene.free_cells())
    else:
        new = choice(rng, [v for v in ATTRIBUTES[kind] if v != getattr(obj, kind)])
    return Scene(scene.background, tuple(o.with_(**{kind: new}) if o is obj else o for o in scene.objects))


def training_scenes(num: int, seed: int, twin_fraction: float, twin_kinds=tuple(TWIN_KINDS.items())) -> list[Scene]:
    """``num`` training-part scenes in pairs (2k, 2k+1); a share of the pairs are one-attribute twins."""
    rng = np.random.default_rng([seed, 0x54574E53])
    kinds = [k for k, _ in twin_kinds]
    weights = np.array([w for _, w in twin_kinds], dtype=float)
    weights = weights / weights.sum()
    scenes = []
    while len(scenes) < num:
        first = sample_scene(rng, "train")
        second = None
        if rng.random() < twin_fraction:
            for _ in range(20):
                candidate = perturb(first, kinds[int(rng.choice(len(kinds), p=weights))], rng)
                if spec_part(candidate) == "train":
                    second = candidate
                    break
        scenes += [first, second or sample_scene(rng, "train")]
    return scenes


def _prepare_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    """Render scenes [start, start + n) and tokenize their captions (runs in a worker process)."""
    import open_clip  # deferred: heavy (each worker process loads it once)

    register_model_configs()
    scene_jsons, start, seed, size, model, per_scene, context_length, negative_kinds = args
    tokenizer = WordCachedTokenizer(open_clip.get_tokenizer(model))
    rng = np.random.default_rng([seed, 0x43415054, start])
    negative_rng = np.random.default_rng([seed, 0x4E454754, start])
    images, texts = [], []
    for i, scene_json in enumerate(scene_jsons):
        scene = Scene.from_json(scene_json)
        images.append(render_array(scene, render_rng(RENDER_SEED_OFFSET + seed, start + i), size))
        texts.append(canonical_caption(scene).text)
        texts += [random_caption(scene, rng).text for _ in range(per_scene - 1)]
        if negative_kinds:
            texts.append(perturbed_caption(scene, choice(negative_rng, list(negative_kinds)), negative_rng))
    rows = per_scene + (1 if negative_kinds else 0)
    tokens = tokenizer(texts, context_length, truncate=False).numpy().astype(np.int32)
    tokens = tokens.reshape(len(scene_jsons), rows, context_length)
    return np.stack(images), tokens


def prepare_data(scenes: list[Scene], seed: int, size: int, model: str, per_scene: int, context_length: int,
                 workers: int, chunk: int = 1000, negative_kinds: tuple = ()) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 images [N, size, size, 3] and int32 caption tokens [N, per_scene, L] (L = longest caption).

    With ``negative_kinds``, row ``per_scene`` of each scene holds its text negative (one more row).

    Image i is rendered from (seed, i) and chunk k's captions from (seed, k): the result does not
    depend on the number of workers.
    """
    jsons = [s.to_json() for s in scenes]
    jobs = [(jsons[i:i + chunk], i, seed, size, model, per_scene, context_length, tuple(negative_kinds))
            for i in range(0, len(jsons), chunk)]
    images = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    tokens = np.zeros((len(scenes), per_scene + (1 if negative_kinds else 0), context_length), dtype=np.int32)
    bar = tqdm(total=len(scenes), desc="rendering", unit="img", leave=False)
    pool = spawn_pool(workers) if workers > 1 else None
    results = pool.imap(_prepare_chunk, jobs) if pool else map(_prepare_chunk, jobs)
    for job, (chunk_images, chunk_tokens) in zip(jobs, results):
        images[job[1]:job[1] + len(chunk_images)] = chunk_images
        tokens[job[1]:job[1] + len(chunk_images)] = chunk_tokens
        bar.update(len(chunk_images))
    if pool:
        pool.close()
        pool.join()
    bar.close()
    length = int((tokens != 0).sum(axis=2).max())
    return images, torch.from_numpy(tokens[:, :, :length].copy())


def to_model_input(images_u8: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W], as the backbone's preprocessing gives."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean) / std


# --- model pieces -------------------------------------------------------------------------------------

def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on tokens cut after the longest text (same result, fewer positions)."""
    from open_clip.transformer import text_global_pool  # deferred: heavy

    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length].long()
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return x @ model.text_projection if not isinstance(model.text_projection, torch.nn.Linear) else model.text_projection(x)


def encode_text_bucketed(model, tokens: torch.Tensor, buckets: int = 4) -> torch.Tensor:
    """:func:`encode_text_trimmed` on length-sorted slices of the batch, each cut at its own longest text.

    Texts do not interact in the text tower, so this changes nothing but the
    cost: about the mean caption length instead of the longest one.
    """
    order = torch.argsort((tokens != 0).sum(dim=1))
    features = torch.cat([encode_text_trimmed(model, tokens[part]) for part in torch.chunk(order, buckets)])
    return features[torch.argsort(order)]


def clip_loss_with_text_negatives(images: torch.Tensor, texts: torch.Tensor, negatives: torch.Tensor,
                                  scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE where each image also has to rank the batch's text negatives below its caption.

    Image -> text logits span the captions and the negatives [B, 2B]; text -> image is CLIP's own [B, B].
    """
    labels = torch.arange(len(images))
    per_image = scale * images @ torch.cat([texts, negatives]).T
    per_text = scale * texts @ images.T
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


def is_text_param(name: str) -> bool:
    return not name.startswith("visual.") and name != "logit_scale"


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only; biases, norms, embeddings' scale and the logit scale are left alone (as open_clip)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_order(cfg: TrainConfig) -> np.ndarray:
    """Scene indices for every step [steps, batch]: shuffled pairs, epoch after epoch."""
    rng = np.random.default_rng([cfg.seed, 0x42415443])
    pairs_per_batch = cfg.batch_size // 2
    pairs = []
    needed = cfg.steps * pairs_per_batch
    while len(pairs) < needed:
        pairs.extend(rng.permutation(cfg.num_scenes // 2).tolist())
    pairs = np.array(pairs[:needed]).reshape(cfg.steps, pairs_per_batch)
    return np.stack([2 * pairs, 2 * pairs + 1], axis=-1).reshape(cfg.steps, cfg.batch_size)


# --- one step -----------------------------------------------------------------------------------------

def batch_inputs(images: np.ndarray, tokens: torch.Tensor, idx: np.ndarray, variants: np.ndarray,
                 mean: torch.Tensor, std: torch.Tensor, cfg: TrainConfig):
    """(images, caption tokens, text negatives or None) of scenes ``idx`` with caption ``variants``."""
    x = to_model_input(images[idx], mean, std)
    t = tokens[torch.from_numpy(idx), torch.from_numpy(variants)]
    return x, t, tokens[torch.from_numpy(idx), cfg.captions_per_scene] if cfg.text_negatives else None


def batch_loss(model, x: torch.Tensor, t: torch.Tensor, negatives: Optional[torch.Tensor], loss_fn,
               precision: str = "fp32") -> torch.Tensor:
    """The contrastive loss of one batch: towers in ``precision``, features and loss in fp32."""
    with tower_autocast(precision, x.device):
        image = model.encode_image(x)
    image_features = F.normalize(image.float(), dim=-1)
    with tower_autocast(precision, x.device):
        text = encode_text_bucketed(model, t if negatives is None else torch.cat([t, negatives]))
    texts = F.normalize(text.float(), dim=-1)
    if negatives is None:
        return loss_fn(image_features, texts, model.logit_scale.exp())
    return clip_loss_with_text_negatives(image_features, texts[:len(t)], texts[len(t):], model.logit_scale.exp())


def optimizer_step(model, optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def same_config(saved: str, cfg: TrainConfig) -> bool:
    """Whether a state's config (JSON) is ``cfg``; a field added after the state was saved counts at its default."""
    saved, current, defaults = (json.loads(j) for j in (saved, json.dumps(asdict(cfg)), json.dumps(asdict(TrainConfig()))))
    return {**{k: defaults[k] for k in current.keys() - saved.keys()}, **saved} == current


# --- training -----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time of this process and its finished workers: on a shared machine, wall time over-states the cost."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def save_fp16(model, path: str | os.PathLike) -> Path:
    tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().cpu()
               for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return Path(path)


def train_backbone(cfg: TrainConfig, out: str | os.PathLike, run_dir: str | os.PathLike,
                   log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train; write fp16 weights to ``out``; return a record (config, timings, final loss)."""
    import open_clip  # deferred: heavy
    from open_clip.loss import ClipLoss

    check_train_precision(cfg.precision, "cpu")  # before any work: refused with one line where not native
    start = time.time()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    atomic_write_json(run_dir / "config.json", asdict(cfg))

    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model, pretrained=cfg.init)
    model = backbone.model.train().requires_grad_(True)
    if cfg.init is None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if (open_clip.get_model_config(cfg.model) or {}).get("vision_cfg", {}).get("pos_embed_type") == "sin_cos_2d":
        model.visual.positional_embedding.requires_grad_(False)  # open_clip's fixed 2-D sin-cos table stays fixed
    size = backbone.image_size
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)

    log(f"drawing {cfg.num_scenes} training scenes (twin fraction {cfg.twin_fraction})")
    scenes = training_scenes(cfg.num_scenes, cfg.seed, cfg.twin_fraction, cfg.twin_kinds)
    images, tokens = prepare_data(scenes, cfg.seed, size, cfg.model, cfg.captions_per_scene,
                                  backbone.context_length, cfg.render_workers, negative_kinds=cfg.text_negatives)
    data_time = time.time() - start
    log(f"data ready in {data_time:.0f} s: images {tuple(images.shape)}, caption tokens {tuple(tokens.shape)}")

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    step, history = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if not same_config(state.get("config") or "{}", cfg):
            raise ZscirError(f"{state_path} was saved by a run with another config: use another --run-dir or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        log(f"resuming at step {step}")

    order = batch_order(cfg)
    pick_rng = np.random.default_rng([cfg.seed, 0x50494B])
    variants = pick_rng.integers(cfg.captions_per_scene, size=(cfg.steps, cfg.batch_size))
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress)
    train_start = time.time()
    text_params = [p for name, p in model.named_parameters() if is_text_param(name) and p.requires_grad]
    while step < cfg.steps:
        for p in text_params:
            p.requires_grad_(step >= cfg.text_lock_steps)
        x, t, negatives = batch_inputs(images, tokens, order[step], variants[step], mean, std, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = batch_loss(model, x, t, negatives, loss_fn, cfg.precision)
        optimizer_step(model, optimizer, loss)
        step += 1
        history.append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "history": history, "config": json.dumps(asdict(cfg), sort_keys=True)}, tmp)
    bar.close()
    model.eval().requires_grad_(False)
    save_fp16(model, out)
    record = {"config": asdict(cfg), "data_seconds": round(data_time), "train_seconds": round(time.time() - train_start),
              "wall_seconds": round(time.time() - start), "cpu_seconds": round(cpu_seconds()),
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpu": cpu_name(), "final_loss": float(np.mean(history[-20:])),
              "pairs_per_second": round(cfg.steps * cfg.batch_size / max(1e-9, time.time() - train_start), 1)}
    log(f"weights written to {out}: {record}")
    return record
