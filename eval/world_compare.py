"""Check that a newer world generator left an older world's splits byte-identical.

    python eval/world_compare.py OLD_WORLD NEW_WORLD

Every file of OLD_WORLD (images, annotations, gallery lists, captions) must be
in NEW_WORLD with the same bytes, except world.json (version, config, counts)
and scenes.jsonl, whose old rows must be the new file's first rows. Prints one
line per kind of file and exits non-zero on the first difference.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from pathlib import Path


NL = b"\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(old: str, new: str) -> int:
    old, new = Path(old), Path(new)
    same, kinds = 0, Counter()
    for path in sorted(p for p in old.rglob("*") if p.is_file()):
        rel = path.relative_to(old)
        if str(rel) in ("world.json", "scenes.jsonl"):
            continue
        other = new / rel
        if not other.is_file() or digest(path) != digest(other):
            print(f"DIFFERENT: {rel}")
            return 1
        same += 1
        kinds[rel.suffix] += 1
    old_rows, new_rows = (old / "scenes.jsonl").read_bytes(), (new / "scenes.jsonl").read_bytes()
    if not new_rows.startswith(old_rows):
        print("DIFFERENT: scenes.jsonl (old rows are not a prefix of the new file)")
        return 1
    extra = sorted(str(p.relative_to(new).parts[0]) if len(p.relative_to(new).parts) > 1 else str(p.relative_to(new))
                   for p in new.rglob("*") if p.is_file() and not (old / p.relative_to(new)).exists())
    print(f"identical: {same} files ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
          f"scenes.jsonl: the {old_rows.count(NL)} old rows are the first of {new_rows.count(NL)}")
    print(f"new files: {len(extra)} ({', '.join(f'{n} in {k}' for k, n in sorted(Counter(extra).items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
