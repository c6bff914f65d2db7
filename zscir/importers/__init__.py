"""Released checkpoints of other ZS-CIR methods -> zscir checkpoints, one importer per release format.

    from zscir.importers import import_checkpoint
    import_checkpoint("SEARLE_ViT-L14.pt", "searle", "runs/imported/searle-vitl14")

Importers are registered by name in :data:`zscir.importers.registry.IMPORTERS` (the ``--from`` values);
each reads its file without running any of its code
(:mod:`zscir.utils.safe_pickle`) and maps the official key names onto zscir's
network for that method (:data:`zscir.models.methods.METHODS`).
"""

from __future__ import annotations

from zscir.importers.base import Importer, import_checkpoint
from zscir.importers.registry import IMPORTERS, get_importer

__all__ = ["IMPORTERS", "Importer", "get_importer", "import_checkpoint"]
