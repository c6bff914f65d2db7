"""The documented example queries for `zscir retrieve` on a fresh install (the shapes world).

``shapes_examples.json`` (beside this file) lists reference images and fine modification
texts from the default world's val split, each with its true target. They are the first
val queries, in id order, on which the shipped FTI model ranks the true target in the
top 5; the file records how many val queries were scanned to find them and the hit rate
over those, so the selection is visible rather than hidden. Regenerate after shipping a
new checkpoint or world generator:

    python -m zscir.index.examples_cli        # writes zscir/index/shapes_examples.json

Try one:

    zscir retrieve --ref ~/.cache/zscir/worlds/shapes-v3-seed0/<ref> --text "<text>" -k 5
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES_FILE = Path(__file__).with_name("shapes_examples.json")
COUNT = 24
TOP_K = 5


def load_examples(path: Path = EXAMPLES_FILE) -> dict:
    return json.loads(Path(path).read_text())


def examples_jsonl(world: Path, out: Path, path: Path = EXAMPLES_FILE) -> Path:
    """Write the examples as `zscir retrieve --queries` rows with absolute reference paths."""
    rows = [{"ref": str(Path(world) / ex["ref"]), "text": ex["text"]} for ex in load_examples(path)["examples"]]
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(out)
