"""SEARLE's training data (``zscir pretrain --method searle``): the OTI tokens and concepts of the training images.

The method's registry record (:data:`zscir.models.searle.METHOD`) names :func:`prepare_training` by import path.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.models.concepts import DEFAULT_VOCABULARY, ConceptPhrases, concept_features, nearest_concepts
from zscir.models.oti import load_oti_tokens, oti_config, run_oti
from zscir.training.pretrain_data import ExtendedSet
from zscir.utils.hashing import sha256_bytes


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
    return ConceptPhrases.named(DEFAULT_VOCABULARY)


def prepare_training(cfg, data, backbone, world, cache_root, accelerator, log=print):
    """SEARLE's training data: every training image inverted by OTI (cached under ``cache_root/oti``, resumable
    chunk by chunk, shared by runs with the same settings) and its concepts, beside the image features.

    OTI's options: ``cfg.oti_steps``, ``cfg.oti_batch_size`` and ``cfg.oti_top_k`` (the official 350, 32
    and 15 unless set; ``top_k`` at most the vocabulary's size). ``cfg.oti_images``: invert only a subset
    of that many images (drawn with the run's seed, kept in the data's order) and train phi on those.
    """
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
