"""Training-free methods that put language models in the loop: CIReVL, LDRE, SEIZE and CVSI.

Each captions the reference image, has a language model rewrite the caption as the modification says, and
retrieves with the rewritten text (CVSI fuses a pseudo-word query too). They read captions and edits from a
:class:`~zscir.models.training_free.generations.Generations` (a released file, or a generation cache), never
from a model run of their own, and score by the one query interface (:mod:`zscir.models.composed`).
"""
