"""SEARLE (Baldrati et al., ICCV 2023): optimisation-based textual inversion (OTI) and the distilled phi.

The facts come from the paper and the official code (miccunifi/SEARLE: ``src/oti_inversion.py``,
``src/train_phi.py``, ``src/image_concepts_association.py``, ``src/utils.py``); the code is zscir's own.

- **Concepts.** Each image gets the ``top_k`` words of a vocabulary nearest to it by CLIP zero-shot
  classification, each word's text feature the normalised mean of its normalised features in the
  PALAVRA templates (``image_concepts_association.py``; the official vocabulary is the Open Images V7
  class names).
- **OTI.** One token per image, initialised N(0, 0.02) and optimised with AdamW so that a template
  with the token ("a photo of *") has the image's text feature (cosine), regularised by phrases: a
  random phrase holding the token should encode like the same phrase holding one of the image's
  concept words. The official phrases are GPT-Neo phrases per concept; here a phrase is a template
  with one ``{}`` slot, from a list the user supplies or, for the shapes world, built from the world's
  own attribute words (:meth:`ConceptPhrases.world`); :meth:`ConceptPhrases.record` says which.
  The result is the exponential moving average of the token over the steps (``train_phi.py`` reads
  ``ema_oti_pseudo_tokens.pt``).
- **phi.** :class:`~zscir.models.fti.SingleTokenNetwork` trained on the OTI tokens: PALAVRA's
  contrastive loss between phi's tokens and the OTI tokens (``train_phi.py``: ``contrastive_loss(
  target_oti_tokens, estimated_tokens, temperature)``, on the token embeddings themselves) plus the
  same phrase regulariser on phi's token (:func:`searle_loss`).
- **SEARLE-XL-OTI.** At query time OTI runs on the reference image instead of phi
  (:func:`oti_compose`), with the query prompt of ``searle`` ("a photo of * that {text}").

Sampling uses a ``torch.Generator`` (OTI: one per chunk of images, from the seed, so a resumed run
draws what the uninterrupted one drew) or torch's global RNG (phi training, whose RNG state the
resumable training state saves).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from zscir.backbone import PLACEHOLDER
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.losses import contrastive_loss, cosine_pull
from zscir.utils.hashing import sha256_bytes

SLOT = "{}"

# The PALAVRA templates of the official code (src/utils.py get_templates): OTI's cosine term draws one per
# image and step (the paper writes the template as "a photo of $"), and concept features average over all.
PALAVRA_TEMPLATES = (
    "This is a photo of a {}", "This photo contains a {}", "A photo of a {}", "This is an illustration of a {}",
    "This illustration contains a {}", "An illustrations of a {}", "This is a sketch of a {}",
    "This sketch contains a {}", "A sketch of a {}", "This is a diagram of a {}", "This diagram contains a {}",
    "A diagram of a {}", "A {}", "We see a {}", "{}", "We see a {} in this photo", "We see a {} in this image",
    "We see a {} in this illustration", "We see a {} photo", "We see a {} image", "We see a {} illustration",
    "{} photo", "{} image", "{} illustration",
)


def fill(template: str, word: str) -> str:
    """``template`` with its one ``{}`` slot holding ``word`` (not ``str.format``: other braces stay as they are)."""
    return template.replace(SLOT, word, 1)


# ---------------------------------------------------------------- the regulariser's words and phrases
def _check_entries(entries: list[tuple[str, str]], what: str, is_phrase: bool) -> tuple[str, ...]:
    """entries: (where, text) pairs; ``where`` names the file and line (or the list and index) for errors."""
    if not entries:
        raise ZscirError(f"{what}: empty, expected at least one {'phrase' if is_phrase else 'word'}")
    seen: dict[str, str] = {}
    for where, text in entries:
        if PLACEHOLDER in text:
            raise ZscirError(f"{where}: contains the pseudo-word placeholder {PLACEHOLDER!r}")
        if is_phrase and text.count(SLOT) != 1:
            raise ZscirError(f"{where}: a phrase needs exactly one {SLOT!r} slot for the concept word, "
                             f"found {text.count(SLOT)} in {text!r}")
        if not is_phrase and (SLOT in text or not text.strip()):
            raise ZscirError(f"{where}: expected a word, got {text!r}")
        if text in seen:
            raise ZscirError(f"{where}: {text!r} repeats {seen[text]}")
        seen[text] = where
    return tuple(text for _, text in entries)


def _read_lines(path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ZscirError(f"{path}: no such file (expected one entry a line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path}:{i}", line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


@dataclass(frozen=True)
class ConceptPhrases:
    """The concept vocabulary and the regulariser's phrases (each with one ``{}`` slot), and where they came from."""

    vocabulary: tuple[str, ...]
    phrases: tuple[str, ...]
    source: dict = field(default_factory=lambda: {"kind": "given"})

    def __post_init__(self):
        object.__setattr__(self, "vocabulary", _check_entries(
            [(f"vocabulary word {i}", w) for i, w in enumerate(self.vocabulary)], "vocabulary", False))
        object.__setattr__(self, "phrases", _check_entries(
            [(f"phrase {i}", p) for i, p in enumerate(self.phrases)], "phrases", True))

    @classmethod
    def from_files(cls, vocabulary, phrases) -> "ConceptPhrases":
        """One word a line in ``vocabulary``, one phrase (with its ``{}`` slot) a line in ``phrases``."""
        words = _check_entries(_read_lines(vocabulary), str(vocabulary), False)
        texts = _check_entries(_read_lines(phrases), str(phrases), True)
        return cls(words, texts, {"kind": "user", "vocabulary": str(vocabulary), "phrases": str(phrases)})

    @classmethod
    def world(cls) -> "ConceptPhrases":
        """The shapes world: its shape nouns as concepts, phrases from its other attributes' canonical words."""
        from zscir.world.captions import PATTERN_WORDS, POSITION_WORDS, SIZE_WORDS
        from zscir.world.spec import BACKGROUNDS, CELLS, COLORS, PATTERNS, SHAPES, SIZES

        phrases = ([f"a {c} {SLOT}" for c in COLORS] + [f"a {SIZE_WORDS[s][0]} {SLOT}" for s in SIZES]
                   + [f"a {PATTERN_WORDS[p][0]} {SLOT}" for p in PATTERNS]
                   + [f"a {SLOT} {POSITION_WORDS[c][0]}" for c in CELLS]
                   + [f"a {SLOT} on a {b} background" for b in BACKGROUNDS])
        return cls(SHAPES, tuple(phrases), {"kind": "world", "vocabulary": "shapes world: shape nouns",
                                             "phrases": "shapes world: colors, sizes, patterns, positions, "
                                                        "backgrounds (canonical words)"})

    def record(self) -> dict:
        content = json.dumps([self.vocabulary, self.phrases]).encode()
        return {**self.source, "num_words": len(self.vocabulary), "num_phrases": len(self.phrases),
                "sha256": sha256_bytes(content)}


# ---------------------------------------------------------------- concepts by CLIP zero-shot
@torch.no_grad()
def concept_features(backbone, vocabulary, templates=PALAVRA_TEMPLATES, words_per_batch: int = 64) -> torch.Tensor:
    """[V, D] normalised: per word the normalised mean of its normalised features in ``templates``."""
    out = []
    for i in range(0, len(vocabulary), words_per_batch):
        words = vocabulary[i:i + words_per_batch]
        feats = F.normalize(backbone.encode_text([fill(t, w) for w in words for t in templates]), dim=-1)
        out.append(F.normalize(feats.view(len(words), len(templates), -1).mean(1), dim=-1))
    return torch.cat(out)


def nearest_concepts(image_features: torch.Tensor, concept_feats: torch.Tensor, top_k: int) -> torch.Tensor:
    """[N, top_k] indices of each image's most similar concepts (cosine), most similar first."""
    if not 1 <= top_k <= concept_feats.shape[0]:
        raise ZscirError(f"OTI option top_k={top_k}: expected 1 to {concept_feats.shape[0]} (the vocabulary's size)")
    sims = F.normalize(image_features.float(), dim=-1) @ concept_feats.to(image_features.device).T
    return sims.topk(top_k, dim=1).indices


def sample_phrases(concepts: torch.Tensor, phrases: ConceptPhrases,
                   generator: Optional[torch.Generator] = None) -> tuple[list[str], list[str]]:
    """Per image one of its concepts and one phrase, uniformly -> (phrases with the word, phrases with ``*``).

    ``concepts``: [B, k] indices into ``phrases.vocabulary``. Draws: B concept ranks, then B phrases.
    (The official OTI draws uniformly among all (concept, phrase) pairs of the image's concepts, phi
    training a concept then one of its phrases: with the same phrases for every concept both are this.)
    """
    b, k = concepts.shape
    rank = torch.randint(k, (b,), generator=generator)
    which = torch.randint(len(phrases.phrases), (b,), generator=generator)
    words = [phrases.vocabulary[int(concepts[i, int(rank[i])])] for i in range(b)]
    chosen = [phrases.phrases[int(j)] for j in which]
    return [fill(p, w) for p, w in zip(chosen, words)], [fill(p, PLACEHOLDER) for p in chosen]


def phrase_regulariser(backbone, tokens: torch.Tensor, with_word: list[str], with_token: list[str]) -> torch.Tensor:
    """Mean 1 - cos(text(phrase with the token), text(the same phrase with the concept word))."""
    return cosine_pull(backbone.encode_prompts(with_token, tokens), backbone.encode_text(with_word))


# ---------------------------------------------------------------- OTI
@dataclass(frozen=True)
class OTIConfig:
    """Defaults: the official ``oti_inversion.py`` arguments."""

    steps: int = 350             # --oti-steps
    lr: float = 2e-2             # --learning-rate (AdamW)
    weight_decay: float = 0.01   # --weight-decay
    lambda_cos: float = 1.0      # --lambda_cos
    lambda_reg: float = 0.5      # --lambda_gpt
    ema_decay: float = 0.99      # --ema-decay; the EMA token is the result
    top_k: int = 15              # --top-k concepts per image
    init_std: float = 0.02       # nn.init.normal_(std=0.02)
    batch_size: int = 32         # --batch-size: images inverted together (a chunk of the driver)
    templates: tuple[str, ...] = PALAVRA_TEMPLATES   # the cosine term's templates, one drawn per image and step

    def __post_init__(self):
        checks = {"steps": self.steps >= 1, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
                  "lambda_cos": self.lambda_cos >= 0, "lambda_reg": self.lambda_reg >= 0,
                  "ema_decay": 0 <= self.ema_decay < 1, "top_k": self.top_k >= 1, "init_std": self.init_std > 0,
                  "batch_size": self.batch_size >= 1, "templates": len(self.templates) >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ZscirError(f"OTI option {name}={getattr(self, name)!r} is out of range")
        if self.lambda_cos + self.lambda_reg == 0:
            raise ZscirError("OTI options lambda_cos and lambda_reg are both 0: nothing to optimise")
        _check_entries([(f"OTI template {i}", t) for i, t in enumerate(self.templates)], "OTI templates", True)
        object.__setattr__(self, "templates", tuple(self.templates))


def oti_config(phrases: "ConceptPhrases", **given) -> OTIConfig:
    """The official OTI settings with the ``given`` ones that are not None; ``top_k`` (official 15) at most
    the vocabulary's size, so a small vocabulary (the shapes world's six shapes) works by default."""
    top_k = given.pop("top_k", None) or min(OTIConfig.top_k, len(phrases.vocabulary))
    return OTIConfig(top_k=top_k, **{k: v for k, v in given.items() if v is not None})


def oti_loss(backbone, tokens: torch.Tensor, image_features: torch.Tensor, templates: list[str],
             with_word: list[str], with_token: list[str], config: OTIConfig):
    """(lambda_cos * cosine + lambda_reg * regulariser) / (lambda_cos + lambda_reg), and its terms.

    ``templates``: per image its template with the ``*`` slot; ``with_word`` / ``with_token``: per image
    its regulariser phrase with the concept word / with ``*`` (:func:`sample_phrases`).
    """
    l_cos = cosine_pull(backbone.encode_prompts(templates, tokens), image_features)
    l_reg = (phrase_regulariser(backbone, tokens, with_word, with_token) if config.lambda_reg > 0
             else l_cos.new_zeros(()))
    total = (config.lambda_cos * l_cos + config.lambda_reg * l_reg) / (config.lambda_cos + config.lambda_reg)
    return total, {"cosine": l_cos.detach(), "regulariser": l_reg.detach()}


@dataclass
class OTIResult:
    tokens: torch.Tensor    # [B, d_tok] the EMA tokens: the result
    last: torch.Tensor      # [B, d_tok] the optimised tokens after the last step
    losses: list[float]     # the total loss at each step


def invert(backbone, image_features: torch.Tensor, phrases: ConceptPhrases, config: OTIConfig = OTIConfig(),
           generator: Optional[torch.Generator] = None, concept_feats: Optional[torch.Tensor] = None) -> OTIResult:
    """OTI for a batch of images' features [B, D] -> their tokens (gradients on, whatever the caller's mode).

    Draws from ``generator``: the initial tokens, then per step B templates and :func:`sample_phrases`.
    """
    device = image_features.device
    image_features = image_features.float()
    if concept_feats is None:
        concept_feats = concept_features(backbone, phrases.vocabulary)
    concepts = nearest_concepts(image_features, concept_feats, config.top_k).cpu()
    b = image_features.shape[0]
    init = torch.empty(b, backbone.token_dim).normal_(0.0, config.init_std, generator=generator)
    tokens = torch.nn.Parameter(init.to(device))
    ema = tokens.detach().clone()
    optimizer = torch.optim.AdamW([tokens], lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    with torch.enable_grad():
        for _ in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            picks = torch.randint(len(config.templates), (b,), generator=generator)
            templates = [fill(config.templates[int(i)], PLACEHOLDER) for i in picks]
            with_word, with_token = sample_phrases(concepts, phrases, generator)
            loss, _ = oti_loss(backbone, tokens, image_features, templates, with_word, with_token, config)
            loss.backward()
            optimizer.step()
            ema = config.ema_decay * ema + (1 - config.ema_decay) * tokens.detach()
            losses.append(float(loss.detach()))
    return OTIResult(ema, tokens.detach().clone(), losses)


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The generator of one chunk of images: from (seed, chunk) alone, so chunks can run in any order."""
    state = int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


# ---------------------------------------------------------------- the resumable driver over a feature set
MANIFEST = "oti.json"


def _chunk_path(out: Path, chunk: int) -> Path:
    return out / f"chunk_{chunk:06d}"


def run_oti(backbone, ids: list[str], features: torch.Tensor, phrases: ConceptPhrases, out,
            config: OTIConfig = OTIConfig(), seed: int = 0, log: Callable = print,
            on_chunk: Optional[Callable[[int], None]] = None, progress: bool = True) -> Path:
    """OTI tokens of every image, in chunks of ``config.batch_size`` saved atomically in ``out``; a killed run
    continues where it stopped.

    ``out/oti.json`` records the run (config, seed, phrases, backbone, hashes of the ids and features); each chunk is a
    checkpoint (:func:`zscir.checkpoint.save_checkpoint`: weights then sidecar, each written to a temporary
    file and renamed) holding its ``tokens`` (EMA) and ``last``; a chunk counts as done once its sidecar
    exists. ``on_chunk(c)`` is called after chunk ``c`` is saved; ``progress`` shows a bar of chunks.
    """
    from zscir.checkpoint import save_checkpoint
    from zscir.utils.atomic import atomic_write_json

    if len(ids) != features.shape[0]:
        raise ZscirError(f"OTI: {len(ids)} ids but {features.shape[0]} feature rows")
    if len(set(ids)) != len(ids):
        raise ZscirError("OTI: the image ids repeat")
    out = Path(out)
    record = {"kind": "searle-oti", "config": asdict(config), "seed": seed, "phrases": phrases.record(),
              "backbone": backbone.identity, "num_images": len(ids),
              "ids_sha256": sha256_bytes("\n".join(ids).encode()),
              "features_sha256": sha256_bytes(features.detach().float().cpu().contiguous().numpy().tobytes())}
    record = json.loads(json.dumps(record))  # tuples -> lists, as read back
    manifest = out / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        differ = sorted(k for k in set(record) | set(recorded) if record.get(k) != recorded.get(k))
        if differ:
            raise ZscirError(f"{manifest}: holds OTI tokens of another run (field {differ[0]!r} differs): "
                             f"continue it with the same settings, or choose another folder")
    else:
        if out.is_dir() and any(out.iterdir()):
            raise ZscirError(f"{out}: the folder is not empty and holds no OTI run ({MANIFEST}): choose another folder")
        atomic_write_json(manifest, record)
    from tqdm.auto import tqdm

    concept_feats = concept_features(backbone, phrases.vocabulary)
    starts = range(0, len(ids), config.batch_size)
    done = 0
    for chunk, start in enumerate(tqdm(starts, desc="OTI", unit="chunk", disable=not progress)):
        path = _chunk_path(out, chunk)
        if path.with_suffix(".json").is_file():
            done += 1
            continue
        rows = slice(start, start + config.batch_size)
        result = invert(backbone, features[rows].to(backbone.device), phrases, config,
                        chunk_generator(seed, chunk), concept_feats)
        save_checkpoint(path, {"tokens": result.tokens, "last": result.last},
                        {"kind": "searle-oti-chunk", "chunk": chunk, "ids": ids[rows],
                         "final_loss": result.losses[-1]})
        if on_chunk is not None:
            on_chunk(chunk)
    log(f"OTI: {len(starts)} chunks of {config.batch_size} images in {out} ({done} were already done)")
    return out


def load_oti_tokens(out) -> tuple[list[str], torch.Tensor]:
    """The ids and [N, d_tok] EMA tokens of a finished :func:`run_oti`."""
    from zscir.checkpoint import load_checkpoint

    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ZscirError(f"{out}: no OTI run here (expected {out / MANIFEST})")
    record = json.loads((out / MANIFEST).read_text())
    ids, tokens = [], []
    num_chunks = -(-record["num_images"] // record["config"]["batch_size"])
    for chunk in range(num_chunks):
        path = _chunk_path(out, chunk)
        if not path.with_suffix(".json").is_file():
            raise ZscirError(f"{out}: the OTI run is not finished (chunk {chunk} of {num_chunks} missing): "
                             f"run it again with the same settings to finish it")
        state, meta = load_checkpoint(path)
        ids += meta["ids"]
        tokens.append(state["tokens"])
    if sha256_bytes("\n".join(ids).encode()) != record["ids_sha256"]:
        raise ZscirError(f"{out}: the chunks' image ids do not match {MANIFEST}: delete the folder and run OTI again")
    return ids, torch.cat(tokens)


# ---------------------------------------------------------------- phi distilled from the OTI tokens
@dataclass
class SearleWeights:
    """Defaults: the official ``train_phi.py`` arguments (batch 256, AdamW lr 1e-4, weight decay 0.01, 100 epochs)."""

    phrases: ConceptPhrases
    temperature: float = 0.25   # --temperature of the distillation's contrastive loss
    distil: float = 1.0         # --lambda-distil
    reg: float = 0.25           # --lambda-gpt


def _identity_gather(v, t):
    return v, t


def searle_loss(network, backbone, pooled: torch.Tensor, tokens, subjects, attributes, w: SearleWeights,
                gather=_identity_gather, *, oti_tokens: torch.Tensor, concepts: torch.Tensor):
    """phi's loss, in the calling style of :mod:`zscir.models.objective` plus two batch fields.

    ``oti_tokens`` [B, d_tok]: each image's OTI token (:func:`load_oti_tokens`); ``concepts`` [B, k]: its
    concept indices into ``w.phrases.vocabulary`` (:func:`nearest_concepts`). ``gather`` collects the
    (OTI token, phi token) pairs of every process for the contrastive denominator. Phrases are drawn
    from torch's global RNG. ``tokens``, ``subjects`` and ``attributes`` are not used.
    """
    predicted = network(pooled).subject
    l_distil = contrastive_loss(*gather(oti_tokens.to(predicted.dtype), predicted), temperature=w.temperature)
    if w.reg > 0:
        with_word, with_token = sample_phrases(concepts.cpu(), w.phrases)
        l_reg = phrase_regulariser(backbone, predicted, with_word, with_token)
    else:
        l_reg = l_distil.new_zeros(())
    total = w.distil * l_distil + w.reg * l_reg
    return total, {"distillation": l_distil.detach(), "regulariser": l_reg.detach()}


def searle_objective(network, backbone, batch, w, gather=_identity_gather):
    """:func:`searle_loss` read from a training batch (:mod:`zscir.models.objective`'s signature): ``w``'s
    temperature and ``reg`` are the distillation temperature and lambda_gpt; ``batch.extra`` holds the OTI
    tokens, concepts and phrases (:func:`prepare_training`)."""
    extra = batch.extra
    weights = SearleWeights(extra["phrases"], temperature=w.temperature, distil=1.0, reg=w.reg)
    return searle_loss(network, backbone, batch.pooled, None, None, None, weights, gather,
                       oti_tokens=extra["oti_tokens"], concepts=extra["concepts"])


def training_phrases(vocabulary, phrases, world) -> ConceptPhrases:
    """The user's vocabulary and phrase files, or the shapes world's own words when training on the world."""
    if vocabulary or phrases:
        if not (vocabulary and phrases):
            raise ZscirError("--method searle: give both --vocabulary FILE (a concept word a line) and "
                             "--phrases FILE (a phrase with one {} slot a line), or neither on the shapes world")
        return ConceptPhrases.from_files(vocabulary, phrases)
    if world is None:
        raise ZscirError("--method searle on your own images needs --vocabulary FILE (a concept word a line) and "
                         "--phrases FILE (a phrase with one {} slot a line): the official code's GPT phrases are "
                         "not bundled")
    return ConceptPhrases.world()


def prepare_training(cfg, data, backbone, world, cache_root, accelerator, log=print):
    """SEARLE's training data: every training image inverted by OTI (cached under ``cache_root/oti``, resumable
    chunk by chunk, shared by runs with the same settings) and its concepts, beside the image features.

    OTI's options: ``cfg.oti_steps``, ``cfg.oti_batch_size`` and ``cfg.oti_top_k`` (the official 350, 32
    and 15 unless set; ``top_k`` at most the vocabulary's size). ``cfg.oti_images``: invert only a subset
    of that many images (drawn with the run's seed, kept in the data's order) and train phi on those.
    """
    from zscir.training.pretrain_data import ExtendedSet

    if data.pooled is None:
        raise ZscirError("--method searle inverts cached image features: use --feature-cache full or globals")
    phrases = training_phrases(cfg.vocabulary, cfg.phrases, world)
    config = oti_config(phrases, steps=cfg.oti_steps, batch_size=cfg.oti_batch_size, top_k=cfg.oti_top_k)
    rows = np.arange(len(data))
    if cfg.oti_images is not None and cfg.oti_images < len(data):
        rows = np.sort(np.random.default_rng([cfg.seed, len(data)]).permutation(len(data))[:cfg.oti_images])
    image_ids = [data.ids[i] for i in rows]
    features = torch.from_numpy(np.asarray(data.pooled[rows], dtype=np.float32))
    key = sha256_bytes(json.dumps([backbone.identity, asdict(config), cfg.seed, phrases.record()["sha256"],
                                   image_ids, sha256_bytes(features.numpy().tobytes())]).encode())[:32]
    out = Path(cache_root) / "oti" / key
    run_oti(backbone, image_ids, features, phrases, out, config, seed=cfg.seed, log=log)
    ids, tokens = load_oti_tokens(out)
    if ids != image_ids:
        raise ZscirError(f"{out}: the OTI tokens belong to other images: delete the folder and run again")
    concepts = nearest_concepts(features, concept_features(backbone, phrases.vocabulary), config.top_k).cpu()
    tokens = tokens.float()
    record = {"phrases": phrases.record(), "oti": {"dir": str(out), "config": json.loads(json.dumps(asdict(config))),
                                                   "seed": cfg.seed, "num_images": len(ids),
                                                   "of_training_images": len(data)}}
    position = np.full(len(data), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))  # base item -> its row of tokens / concepts

    def extra(base_rows: np.ndarray, epoch: int) -> dict:
        at = torch.from_numpy(position[base_rows])
        return {"oti_tokens": tokens[at].to(backbone.device), "concepts": concepts[at], "phrases": phrases}

    return ExtendedSet(data, rows, extra, record)


# ---------------------------------------------------------------- SEARLE-XL-OTI at query time
def oti_compose(phrases: ConceptPhrases, config: OTIConfig = OTIConfig(), seed: int = 0) -> Callable:
    """A compose function (backbone, network, ref, texts) -> query features that inverts each reference by OTI
    (``network`` is not used) and fills "a photo of * that {text}" with the token. Each call draws from a
    generator seeded by ``seed``, so the same batch gives the same queries."""
    cache: dict = {}  # the concept features of the last backbone used

    def compose(backbone, network, ref, texts) -> torch.Tensor:
        if cache.get("backbone") is not backbone:
            cache.update(backbone=backbone, features=concept_features(backbone, phrases.vocabulary))
        generator = torch.Generator().manual_seed(seed)
        tokens = invert(backbone, ref.pooled, phrases, config, generator, cache["features"]).tokens
        return backbone.encode_prompts([prompts.that_query_prompt(t) for t in texts], tokens)

    compose.record = {"query": "searle-xl-oti", "oti": json.loads(json.dumps(asdict(config))), "seed": seed,
                      "phrases": phrases.record()}
    return compose
