"""CVSI (Ye et al., 2026, "complementary visual-semantic integration") as a query encoder of the one interface.

As CVSI's official code (``core/retrieval_engine.py``, ``compute_results.py``) computes it, per query:
  ``edited``    the normalised text feature of the language model's edit of the reference's N captions joined
                by ", " (one edit, the family's template)
  ``pseudo``    the normalised feature of "a photo of * that {instruction}. And the photo should have {added}."
                with ``*`` the mapping network's pseudo-word of the reference (LinCIR's network in CVSI; any zscir
                mapping checkpoint here) and ``{added}`` the language model's "objects most likely added" answer
  ``reference`` the normalised image feature of the reference
scored against the gallery's image features and its caption features (column ``caption``: the normalised mean
of the normalised text features of each gallery image's captions) by
  ``(a_e * edited + a_p * pseudo + a_r * reference) @ (b_i * image + b_c * caption).T``.
Weights (config; defaults per generation style as CVSI's code): CIRR and CIRCO a = (0.6, 0.4, 0), b = (0.8,
0.2); FashionIQ a = (0.2, 0.6, 0.2), b = (0.9, 0.1). ``--model cvsi:MAPPING[,ae=…,ap=…,ar=…,bi=…,bc=…]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.models import prompts
from zscir.models.composed import Linear, QueryItem, Vectors
from zscir.models.query import PseudoWordQuery
from zscir.models.training_free.generations import need_captions, need_edit, require_generations
from zscir.models.training_free.methods import LanguageModelQuery, parse_options
from zscir.models.training_free.templates import ADDED_OBJECTS, edit_template, instruction_of

# generation style -> ((a_edited, a_pseudo, a_reference), (b_image, b_caption))
WEIGHTS = {"structural": ((0.6, 0.4, 0.0), (0.8, 0.2)), "contextual": ((0.6, 0.4, 0.0), (0.8, 0.2)),
           "fashion": ((0.2, 0.6, 0.2), (0.9, 0.1))}
WEIGHT_KEYS = ("ae", "ap", "ar", "bi", "bc")
COLUMN_BATCH = 256   # gallery caption texts per text-tower call


class CVSIQuery(LanguageModelQuery):
    name = "cvsi"
    n = None   # every caption the generations hold for the reference

    def __init__(self, backbone, mapping: PseudoWordQuery, checkpoint: str, weights: dict[str, float]):
        super().__init__(mapping.backbone, checkpoint=checkpoint, **weights)
        self.mapping, self.overrides = mapping, weights
        self.needs_tokens = mapping.needs_tokens

    @classmethod
    def from_spec(cls, backbone, options: str):
        path, _, rest = options.partition(",")
        if not path:
            raise ZscirError("--model cvsi: needs a mapping network: --model cvsi:CHECKPOINT (LinCIR's imported "
                             "with `zscir import --from lincir`, or any zscir mapping checkpoint)")
        weights = parse_options(cls.name, rest, {k: float for k in WEIGHT_KEYS})
        return cls(backbone, PseudoWordQuery.from_checkpoint(path, backbone), path, weights)

    @property
    def rule(self) -> Linear:
        (ae, ap, ar), (bi, bc) = WEIGHTS.get(self.style, WEIGHTS["structural"])
        w = {"ae": ae, "ap": ap, "ar": ar, "bi": bi, "bc": bc, **self.overrides}
        return Linear(tuple((v, c, w[a] * w[b]) for v, a in (("edited", "ae"), ("pseudo", "ap"), ("reference", "ar"))
                            for c, b in (("image", "bi"), ("caption", "bc")) if w[a] * w[b] != 0.0))

    def edit_inputs(self, item: QueryItem, captions: list[str]) -> list[tuple[str, str, str]]:
        """The reference's captions joined by ", ", asked for its edit and for the objects likely added."""
        joined, instruction = ", ".join(captions), instruction_of(item.captions)
        return [(joined, instruction, "edit"), (joined, instruction, "added")]

    def encode_items(self, ref, items: list[QueryItem]) -> Vectors:
        gen = require_generations(self.generations, self.name)
        template = edit_template(self.style)
        self.fetch(items)
        edited, pseudo_prompts = [], []
        for item in items:
            captions = need_captions(gen, item.reference, None, self.name)
            caption, instruction = ", ".join(captions), instruction_of(item.captions)
            answers = [need_edit(gen, caption, instruction, self.name), need_edit(gen, caption, instruction,
                                                                                  self.name, task="added")]
            self.count_generated("caption", captions)
            self.count_generated("edit", answers)
            edited.append(template.parse(answers[0], instruction))
            added = ADDED_OBJECTS.parse(answers[1], "")
            pseudo_prompts.append(f"a photo of {prompts.PLACEHOLDER} that {prompts.clean_text(instruction)}. "
                                  f"And the photo should have {prompts.clean_text(added)}.")
        with torch.no_grad():
            feats = ref.to(self.backbone.device, torch.float32)
            subject = self.mapping.network(feats.pooled, feats.tokens).subject
            pseudo = self.backbone.encode_prompts(pseudo_prompts, subject).float().cpu()
        return {"edited": F.normalize(self.text_features(edited), dim=-1), "pseudo": F.normalize(pseudo, dim=-1),
                "reference": F.normalize(ref.pooled.float(), dim=-1)}

    def gallery_column(self, name: str, images) -> torch.Tensor:
        if name != "caption":
            return super().gallery_column(name, images)
        gen = require_generations(self.generations, self.name)
        gen.prefetch(images=images)   # the gallery's captions, in batches, through the generation cache
        captions = [need_captions(gen, image, None, self.name) for image in images]
        texts = list(dict.fromkeys(t for caps in captions for t in caps))   # each distinct caption encoded once
        feats = F.normalize(torch.cat([self.text_features(texts[i:i + COLUMN_BATCH])
                                       for i in range(0, len(texts), COLUMN_BATCH)]), dim=-1)
        row_of = {t: n for n, t in enumerate(texts)}
        return torch.stack([F.normalize(feats[[row_of[t] for t in caps]].mean(dim=0), dim=-1) for caps in captions])
