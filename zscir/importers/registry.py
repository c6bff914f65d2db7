"""The release formats ``zscir import-checkpoint --from`` reads: name -> its importer, by import path
(:class:`zscir.utils.registry.Entries`), in the order ``--help`` lists them."""

from __future__ import annotations

from zscir.errors import ZscirError
from zscir.utils.registry import Entries

IMPORTERS: Entries = Entries({
    "fti4cir": "zscir.importers.fti4cir:IMPORTER",
    "searle": "zscir.importers.searle:SEARLE",
    "pic2word": "zscir.importers.pic2word:PIC2WORD",
    "lincir": "zscir.importers.searle:LINCIR",
    "context-i2w": "zscir.importers.pic2word:CONTEXT_I2W",
})


def get_importer(name: str):
    if name not in IMPORTERS:
        raise ZscirError(f"unknown release format {name!r} (option --from): expected one of {', '.join(IMPORTERS)}")
    return IMPORTERS[name]
