"""Released checkpoints of other ZS-CIR methods -> zscir checkpoints, one importer per release format.

    from zscir.importers import import_checkpoint
    import_checkpoint("SEARLE_ViT-L14.pt", "searle", "runs/imported/searle-vitl14")

Importers are registered by name in :data:`IMPORTERS` (the ``--from`` values);
each reads its file without running any of its code
(:mod:`zscir.utils.safe_pickle`) and maps the official key names onto zscir's
network for that method (:data:`zscir.models.methods.METHODS`).
"""

from __future__ import annotations

from zscir.errors import ZscirError
from zscir.importers.base import Importer, import_checkpoint
from zscir.importers.fti4cir import FTI4CIRImporter
from zscir.importers.pic2word import ContextI2WImporter, Pic2WordImporter
from zscir.importers.searle import LinCIRImporter, SEARLEImporter

IMPORTERS: dict[str, Importer] = {}


def register_importer(importer: Importer) -> Importer:
    IMPORTERS[importer.name] = importer
    return importer


for _cls in (FTI4CIRImporter, SEARLEImporter, Pic2WordImporter, LinCIRImporter, ContextI2WImporter):
    register_importer(_cls())


def get_importer(name: str) -> Importer:
    if name not in IMPORTERS:
        raise ZscirError(f"unknown release format {name!r} (option --from): expected one of {', '.join(IMPORTERS)}")
    return IMPORTERS[name]


__all__ = ["IMPORTERS", "Importer", "get_importer", "import_checkpoint", "register_importer"]
