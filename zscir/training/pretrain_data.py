"""What pretraining iterates over: per image, cached frozen-CLIP features and a split caption
(:class:`PretrainingSet`); or, for a language-only method (LinCIR), per caption its cached
frozen text feature and its keyword-masked form (:class:`CaptionSet`).

Features come from the shared feature store (computed once, fp16, memory-mapped),
so epochs after the first cost only the mapping network and the text encoder.
``feature_cache`` chooses how much is cached:

- ``full``: pooled features and tokens (fastest; tokens are large: logged before writing);
- ``globals``: pooled features only, tokens recomputed from the images each step;
- ``off``: nothing cached, one visual pass per image per step (the official code's way;
  kept for the benchmark in ``eval/bench_pretrain_cache.py``).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from zscir.backbone import PLACEHOLDER
from zscir.data.caption_cache import caption_images
from zscir.generation.lookup import read_caption_file, read_world_captions
from zscir.generation.registry import build_captioner
from zscir.data.sources import open_image_source
from zscir.data.splitter import get_splitter
from zscir.errors import ZscirError
from zscir.features import EncodeOptions, FeatureStore
from zscir.models.prompts import clean_text, single_training_prompt
from zscir.utils.atomic import atomic_write_bytes
from zscir.utils.hashing import sha256_bytes

FEATURE_CACHE_MODES = ("full", "globals", "off")


@dataclass
class Batch:
    pooled: torch.Tensor           # [b, D] float32
    tokens: torch.Tensor | None    # [b, 1+P, W] float32, None when the method needs none
    subjects: list[str]
    attributes: list[str]
    extra: dict = field(default_factory=dict)  # a method's own per-item fields (:class:`ExtendedSet`)


class PretrainingSet:
    """Aligned ids, split captions, and features (cached or recomputed) of the pretraining images."""

    def __init__(self, ids: Sequence[str], subjects: Sequence[str], attributes: Sequence[str], backbone,
                 sources=None, pooled: np.ndarray | None = None, tokens=None, mode: str = "full",
                 need_tokens: bool = True):
        if mode not in FEATURE_CACHE_MODES:
            raise ZscirError(f"unknown --feature-cache {mode!r}: expected one of {', '.join(FEATURE_CACHE_MODES)}")
        if not (len(ids) == len(subjects) == len(attributes)):
            raise ValueError("ids, subjects and attributes must align")
        if mode != "full" and sources is None:
            raise ValueError(f"feature cache mode {mode!r} recomputes features and needs the image sources")
        if mode == "full" and need_tokens and tokens is None:
            raise ValueError("feature cache mode 'full' needs cached tokens")
        self.ids, self.subjects, self.attributes = list(ids), list(subjects), list(attributes)
        self.backbone, self.sources, self.mode, self.need_tokens = backbone, sources, mode, need_tokens
        self.pooled, self.tokens = pooled, tokens
        self.last_wait_s = 0.0  # time the last batch() spent reading or recomputing features

    def __len__(self) -> int:
        return len(self.ids)

    def _encode_images(self, idx: np.ndarray):
        pixels = torch.stack([self.backbone.preprocess(self.sources[i].load()) for i in idx])
        return self.backbone.encode_image(pixels, with_tokens=self.need_tokens)

    def batch(self, idx: np.ndarray, epoch: int = 0) -> Batch:
        """The items ``idx``, in that order (``epoch`` is not used: the same items every epoch)."""
        start = time.perf_counter()
        batch = self._batch(np.asarray(idx, dtype=np.int64))
        self.last_wait_s = time.perf_counter() - start
        return batch

    def _batch(self, idx: np.ndarray) -> Batch:
        order = np.argsort(idx, kind="stable")  # memmaps read fastest in file order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(idx))
        if self.mode == "off":
            feats = self._encode_images(idx)
            pooled, tokens = feats.pooled, feats.tokens
        else:
            pooled = torch.from_numpy(np.asarray(self.pooled[idx[order]], dtype=np.float32)[inverse])
            if not self.need_tokens:
                tokens = None
            elif self.mode == "full":
                tokens = torch.from_numpy(np.asarray(self.tokens[idx[order]], dtype=np.float32)[inverse])
            else:
                tokens = self._encode_images(idx).tokens
        return Batch(pooled.to(self.backbone.device), None if tokens is None else tokens.to(self.backbone.device),
                     [self.subjects[i] for i in idx], [self.attributes[i] for i in idx])


class ExtendedSet:
    """A :class:`PretrainingSet` restricted to some of its items, each batch carrying a method's own fields.

    ``rows``: the base set's item of each item here; ``extra(rows, epoch)`` -> the batch's
    :attr:`Batch.extra` for those base items (SEARLE: their OTI tokens and concepts; SCOT: this
    epoch's caption edits). What it adds to the data record goes in ``record``.
    """

    def __init__(self, base: PretrainingSet, rows: np.ndarray, extra: Callable[[np.ndarray, int], dict],
                 record: dict):
        self.base, self.rows, self.extra, self.record = base, np.asarray(rows, dtype=np.int64), extra, record
        self.ids = [base.ids[i] for i in self.rows]
        self.last_wait_s = 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray, epoch: int = 0) -> Batch:
        start = time.perf_counter()
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        batch = self.base.batch(rows, epoch)
        batch.extra.update(self.extra(rows, epoch))
        self.last_wait_s = time.perf_counter() - start
        return batch


def token_cache_bytes(num_images: int, backbone) -> int:
    """fp16 bytes of the token cache: N x (1 + P) x W x 2."""
    patches = (backbone.image_size // backbone.model.visual.patch_size[0]) ** 2
    return num_images * (1 + patches) * backbone.vision_width * 2


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024


def build_pretraining_set(images: str, captions: str | None, captioner: str, backbone, cache_root,
                          feature_cache: str = "full", need_tokens: bool = True, batch_size: int = 64,
                          log=print, splitter: str = "auto") -> tuple[PretrainingSet, dict]:
    """Images + captions -> a :class:`PretrainingSet` with cached features, and a record of what was used."""
    source = open_image_source(images)
    captioner_obj = build_captioner("file", path=captions) if captions else build_captioner(captioner)
    texts = caption_images(source, captioner_obj, batch_size=batch_size)
    # FTI4CIR's rule for every source, the world included (its own "all objects / all attributes"
    # split is a different convention; the splitter agrees with the rule on world captions)
    splits = {}
    caption_splitter = get_splitter(splitter)
    for item_id, text in texts.items():
        split = caption_splitter.split(text)
        if split is not None:
            splits[item_id] = split
    items = [i for i in source if i.id in splits]
    dropped_captions = len(texts) - len(splits)
    log(f"{len(items)} captioned images from {images}" + (f"; {dropped_captions} captions under 4 words or "
        "without an attribute part are left out" if dropped_captions else ""))

    store = FeatureStore.for_backbone(cache_root, backbone)
    with_tokens = need_tokens and feature_cache == "full"
    if with_tokens:
        log(f"token cache for {len(items)} images: about {_human(token_cache_bytes(len(items), backbone))} "
            f"in {store.root} (use --feature-cache globals to cache only global features)")
    if feature_cache != "off":
        report = store.update(backbone, items, EncodeOptions(with_tokens=with_tokens, batch_size=batch_size))
        log(report.summary())
        corrupt = {i for i, _ in report.corrupt}
        items = [i for i in items if i.id not in corrupt]
        feats = store.load([i.id for i in items], tokens=with_tokens)
        pooled, tokens = feats.pooled, feats.tokens
    else:
        pooled = tokens = None
    data = PretrainingSet([i.id for i in items], [splits[i.id][0] for i in items], [splits[i.id][1] for i in items],
                          backbone, sources=items, pooled=pooled, tokens=tokens, mode=feature_cache,
                          need_tokens=need_tokens)
    record = {"images": str(images), "captions": captions, "captioner": captioner_obj.identity,
              "num_images": len(items), "dropped_captions": dropped_captions,
              "skipped_images": source.skipped.to_dict(),
              "feature_cache": feature_cache, "feature_store": str(store.root),
              "splitter": getattr(caption_splitter, "name", splitter)}
    return data, record


# --- language-only training (LinCIR) ------------------------------------------------------------

# LinCIR's keywords (navervision/lincir loader.py, extract_keywords_spacy): maximal runs of
# NOUN / PROPN / ADJ / DET words; zscir's taggers fold PROPN into NOUN.
KEYWORD_TAGS = frozenset({"DET", "ADJ", "NOUN"})


def lincir_caption(caption: str) -> str:
    """The caption as LinCIR trains on it: lower-cased, ``$`` removed (official ``clean_caption``),
    zscir's placeholder removed (it would claim a pseudo-word)."""
    return clean_text(caption.lower().replace("$", " "))


def keyword_mask(caption: str, tagger) -> str:
    """LinCIR's self-masking: each maximal run of keyword words (:data:`KEYWORD_TAGS`) becomes one ``*``
    slot, so "a red car parked near a fence" -> "* parked near *". Word-based, where the official code
    replaces each keyword string anywhere in the caption. A caption with no keyword becomes
    "a photo of *" (the official's last fallback; its first, one random word, is not used: no randomness
    outside torch's RNG, so a resumed run sees the same)."""
    words = caption.split()
    out: list[str] = []
    for word, tag in zip(words, tagger(words)):
        if tag not in KEYWORD_TAGS:
            out.append(word)
        elif not out or out[-1] != PLACEHOLDER:
            out.append(PLACEHOLDER)
    return " ".join(out) if PLACEHOLDER in out else single_training_prompt()


@dataclass
class CaptionBatch:
    text_features: torch.Tensor    # [b, D] float32: the frozen text tower's (unnormalised) caption features
    masked: list[str]              # the captions with their keywords as placeholder slots


class CaptionSet:
    """Captions, their keyword-masked forms and their cached text features: LinCIR's training data."""

    def __init__(self, captions: Sequence[str], masked: Sequence[str], text_features: np.ndarray, backbone):
        if not (len(captions) == len(masked) == len(text_features)):
            raise ValueError("captions, masked captions and text features must align")
        self.captions, self.masked, self.text_features = list(captions), list(masked), text_features
        self.backbone = backbone
        self.last_wait_s = 0.0

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, idx: np.ndarray, epoch: int = 0) -> CaptionBatch:
        """The captions ``idx``, in that order (``epoch`` is not used)."""
        start = time.perf_counter()
        idx = np.asarray(idx, dtype=np.int64)
        feats = torch.from_numpy(np.asarray(self.text_features[idx], dtype=np.float32)).to(self.backbone.device)
        batch = CaptionBatch(feats, [self.masked[i] for i in idx])
        self.last_wait_s = time.perf_counter() - start
        return batch


def read_captions(path: str | None, world: str | None) -> list[str]:
    """Caption texts from ``path`` (.txt: one caption a line; .jsonl/.csv/.tsv/.json as ``--captions``
    elsewhere), or the shapes world's unlabeled captions when no path is given."""
    if path is None:
        return [row.caption for row in read_world_captions(world)]
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise ZscirError(f"captions file {p}: no such file")
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(read_caption_file(p).exact.values())


def text_features_cached(captions: list[str], backbone, cache_root, batch_size: int = 256, log=print) -> np.ndarray:
    """fp16 text features of ``captions`` [N, D], computed once per (backbone, caption list) and kept
    under ``cache_root/text``."""
    key = sha256_bytes(json.dumps([backbone.identity, captions], sort_keys=True).encode())[:32]
    path = Path(cache_root) / "text" / f"{key}.npy"
    if path.is_file():
        log(f"text features of {len(captions)} captions from {path}")
        return np.load(path, mmap_mode="r")
    feats = np.concatenate([backbone.encode_text(captions[i:i + batch_size]).cpu().numpy().astype(np.float16)
                            for i in range(0, len(captions), batch_size)])
    buf = io.BytesIO()
    np.save(buf, feats)
    atomic_write_bytes(path, buf.getvalue())
    log(f"text features of {len(captions)} captions cached in {path}")
    return feats


def build_caption_set(captions_path: str | None, world: str | None, backbone, cache_root, splitter: str = "auto",
                      log=print) -> tuple[CaptionSet, dict]:
    """A caption file (or the world's captions) -> a :class:`CaptionSet`, and a record of what was used."""
    caption_splitter = get_splitter(splitter)
    tagger = getattr(caption_splitter, "tagger", None)
    if tagger is None:
        raise ZscirError(f"--splitter {splitter} has no word tagger for LinCIR's keyword masking: "
                         "use auto, rules or spacy")
    captions = [c for c in (lincir_caption(t) for t in read_captions(captions_path, world)) if c]
    if not captions:
        raise ZscirError(f"captions file {captions_path or world}: no captions")
    masked = [keyword_mask(c, tagger) for c in captions]
    feats = text_features_cached(captions, backbone, cache_root, log=log)
    log(f"{len(captions)} captions from {captions_path or world}")
    record = {"captions": captions_path, "world": None if captions_path else str(world), "num_captions": len(captions),
              "splitter": getattr(caption_splitter, "name", splitter), "masking": "keyword runs (DET/ADJ/NOUN) -> *",
              "without_keyword": sum(m == single_training_prompt() for m in masked)}
    return CaptionSet(captions, masked, feats, backbone), record

