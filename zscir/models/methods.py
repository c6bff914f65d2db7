"""The pseudo-word methods zscir evaluates, one registry entry each.

A :class:`~zscir.models.method.Method` names the mapping network that produces the pseudo-words and
how a query is composed from them: the query prompt, what the network reads (the pooled feature, the
image tokens, the prompt's text feature), the FashionIQ caption rule and the preprocessing of its
official evaluation; a trainable method also carries its :class:`~zscir.models.method.Training` facts
(objective, default network config, data). Each record lives in its method's module, beside its
network; :data:`METHODS` names it by import path and imports it on first use. The query encoder
(:mod:`zscir.models.query`) and the network factory (:mod:`zscir.models.factory`) read this table.
"""

from __future__ import annotations

from zscir.errors import ZscirError
from zscir.models.method import Method, Training
from zscir.utils.registry import Entries

# method name -> its record, in the order commands list them
METHODS: Entries = Entries({
    "fti": "zscir.models.fti:METHOD",
    "single": "zscir.models.single:SINGLE",
    "searle": "zscir.models.searle:METHOD",
    "lincir": "zscir.models.single:LINCIR",
    "pic2word": "zscir.models.pic2word:METHOD",
    "scot": "zscir.models.combiner:METHOD",
    "context-i2w": "zscir.models.context_i2w:METHOD",
})


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ZscirError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name]


def trainable_methods() -> list[str]:
    """Names of the methods ``zscir pretrain --method`` trains, in registry order."""
    return [name for name, m in METHODS.items() if m.training is not None]


def get_training(name: str) -> Training:
    """The training facts of method ``name``; a one-line error naming --method for any other name."""
    method = METHODS.get(name)
    if method is None or method.training is None:
        raise ZscirError(f"--method {name!r} is not a trainable method: expected one of {', '.join(trainable_methods())}")
    return method.training
