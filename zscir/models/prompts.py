"""Prompt templates with the placeholder ``*`` and the packing of pseudo-words into them.

Pseudo-words are passed to :meth:`Backbone.encode_prompts` in row-major order:
for each prompt, its placeholders from left to right.
"""

from __future__ import annotations

import torch

from zscir.backbone import PLACEHOLDER


def clean_text(text: str) -> str:
    """User text must not contain the placeholder, or it would claim a pseudo-word."""
    return " ".join(text.replace(PLACEHOLDER, " ").split())


def stars(n: int) -> str:
    return " ".join([PLACEHOLDER] * n)


def training_prompt(num_attributes: int) -> str:
    """FTI training prompt: one subject pseudo-word and r attribute pseudo-words."""
    return f"a photo of {PLACEHOLDER} with {stars(num_attributes)}"


def query_prompt(num_attributes: int, modification: str) -> str:
    return f"{training_prompt(num_attributes)} but {clean_text(modification)}"


def single_training_prompt() -> str:
    return f"a photo of {PLACEHOLDER}"


def single_query_prompt(modification: str) -> str:
    return f"a photo of {PLACEHOLDER} but {clean_text(modification)}"


# the tri-wise regulariser's prompts (subject and attribute come from the image's caption)
def caption_prompt(subject: str, attribute: str) -> str:
    return f"a photo of {clean_text(subject)} with {clean_text(attribute)}"


def subject_prompt(attribute: str) -> str:
    return f"a photo of {PLACEHOLDER} with {clean_text(attribute)}"


def attribute_prompt(subject: str, num_attributes: int) -> str:
    return f"a photo of {clean_text(subject)} with {stars(num_attributes)}"


def interleave(subject: torch.Tensor, attributes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, d] subjects and [sum(counts), d] packed attributes -> [B + sum(counts), d] as
    s_0, a_0_1..a_0_r0, s_1, a_1_1, ... (the order of "a photo of * with * *" prompts)."""
    starts = torch.arange(len(counts), device=counts.device) + torch.cumsum(counts, 0) - counts
    total = subject.shape[0] + attributes.shape[0]
    is_attribute = torch.ones(total, dtype=torch.bool, device=subject.device)
    is_attribute[starts] = False
    out = subject.new_zeros(total, subject.shape[1]).index_copy(0, starts, subject)
    return out.masked_scatter(is_attribute.unsqueeze(-1), attributes.to(out.dtype))


# the query prompts of the imported methods, as their official evaluation code writes them
# (their placeholder, ``$`` or ``<|replace|>``, is one token like ``*``: the slot's id never reaches the output)
def that_query_prompt(modification: str) -> str:
    """SEARLE and LinCIR: "a photo of $ that {caption}"."""
    return f"a photo of {PLACEHOLDER} that {clean_text(modification)}"


def comma_query_prompt(modification: str) -> str:
    """Pic2Word and Context-I2W: "a photo of * , {caption}"."""
    return f"a photo of {PLACEHOLDER} , {clean_text(modification)}"
