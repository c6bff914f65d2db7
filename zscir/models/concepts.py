"""SEARLE's concepts: the vocabulary of concept words, the regulariser's phrases, and concepts by CLIP zero-shot.

Each image gets the ``top_k`` words of a vocabulary nearest to it by CLIP zero-shot classification,
each word's text feature the normalised mean of its normalised features in the PALAVRA templates
(the official ``image_concepts_association.py``; its vocabulary is the Open Images V7 class names).
The regulariser's phrases are templates with one ``{}`` slot, from files the user supplies or from a
registered vocabulary (:data:`VOCABULARIES`: the shapes world's own words, a plugin above this layer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from zscir.backbone import PLACEHOLDER
from zscir.errors import ZscirError
from zscir.models.losses import cosine_pull
from zscir.utils.registry import Entries
from zscir.utils.hashing import sha256_bytes

# name -> () -> ConceptPhrases, by import path (a domain's own words: concepts and phrases)
VOCABULARIES: Entries = Entries({"shapes": "zscir.world.plugins_models:concept_phrases"})
DEFAULT_VOCABULARY = "shapes"   # SEARLE's words when the user gives none (SEARLE-XL-OTI, pretraining on the world)

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
def check_entries(entries: list[tuple[str, str]], what: str, is_phrase: bool) -> tuple[str, ...]:
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
        object.__setattr__(self, "vocabulary", check_entries(
            [(f"vocabulary word {i}", w) for i, w in enumerate(self.vocabulary)], "vocabulary", False))
        object.__setattr__(self, "phrases", check_entries(
            [(f"phrase {i}", p) for i, p in enumerate(self.phrases)], "phrases", True))

    @classmethod
    def from_files(cls, vocabulary, phrases) -> "ConceptPhrases":
        """One word a line in ``vocabulary``, one phrase (with its ``{}`` slot) a line in ``phrases``."""
        words = check_entries(_read_lines(vocabulary), str(vocabulary), False)
        texts = check_entries(_read_lines(phrases), str(phrases), True)
        return cls(words, texts, {"kind": "user", "vocabulary": str(vocabulary), "phrases": str(phrases)})

    @classmethod
    def named(cls, name: str = None) -> "ConceptPhrases":
        """A registered vocabulary (:data:`VOCABULARIES`; default :data:`DEFAULT_VOCABULARY`, the shapes world's
        shape nouns as concepts and phrases from its other attributes' canonical words)."""
        name = name or DEFAULT_VOCABULARY
        if name not in VOCABULARIES:
            raise ZscirError(f"unknown concept vocabulary {name!r}: expected one of {', '.join(VOCABULARIES)}")
        return VOCABULARIES[name]()

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
