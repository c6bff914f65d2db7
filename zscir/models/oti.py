"""SEARLE's optimisation-based textual inversion (OTI), its resumable driver, and SEARLE-XL-OTI at query time.

One token per image, initialised N(0, 0.02) and optimised with AdamW so that a template with the
token ("a photo of *") has the image's text feature (cosine), regularised by phrases: a random
phrase holding the token should encode like the same phrase holding one of the image's concept
words (:mod:`zscir.models.concepts`). The result is the exponential moving average of the token
over the steps (the official ``train_phi.py`` reads ``ema_oti_pseudo_tokens.pt``). At query time
SEARLE-XL-OTI runs OTI on the reference image (:func:`oti_compose`, :class:`OTIQuery`).

Sampling uses a ``torch.Generator``: one per chunk of images, from the seed, so a resumed run
draws what the uninterrupted one drew.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from zscir.backbone import PLACEHOLDER, Backbone
from zscir.checkpoint import load_checkpoint, save_checkpoint
from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.concepts import (DEFAULT_VOCABULARY, PALAVRA_TEMPLATES, ConceptPhrases, check_entries,
                                   concept_features, fill, nearest_concepts, phrase_regulariser, sample_phrases)
from zscir.models.losses import cosine_pull
from zscir.models.query import QueryEncoder
from zscir.utils.atomic import atomic_write_json
from zscir.utils.hashing import sha256_bytes


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
        check_entries([(f"OTI template {i}", t) for i, t in enumerate(self.templates)], "OTI templates", True)
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


class OTIQuery(QueryEncoder):
    """SEARLE-XL-OTI (Baldrati et al.): no network; each reference is inverted by OTI at query time
    (:func:`oti_compose`, the official OTI settings) into "a photo of * that {text}".

    ``--model searle-xl-oti``: the default vocabulary's concepts and phrases (the shapes world's words);
    ``--model searle-xl-oti:VOCABULARY.txt,PHRASES.txt``: yours (a word a line; a phrase with one {} slot a line).
    350 optimisation steps per batch of references: slow, and meant for small query sets.
    """

    name = "searle-xl-oti"
    fiq_captions = "searle"

    def __init__(self, backbone: Backbone, phrases, seed: int = 0):
        super().__init__(backbone)
        self.compose = oti_compose(phrases, oti_config(phrases), seed)

    @classmethod
    def from_spec(cls, backbone: Backbone, options: str):
        if not options:
            return cls(backbone, ConceptPhrases.named(DEFAULT_VOCABULARY))
        files = options.split(",")
        if len(files) != 2:
            raise ZscirError(f"--model {cls.name}:{options}: expected {cls.name}:VOCABULARY.txt,PHRASES.txt")
        return cls(backbone, ConceptPhrases.from_files(*files))

    @property
    def identity(self) -> dict:
        return {**super().identity, **self.compose.record}

    def _encode(self, ref, texts):
        return self.compose(self.backbone, None, ref, texts)
