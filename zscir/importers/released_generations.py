"""Released captions and language-model edits (LDRE's and SEIZE's annotation JSONs) as generations.

LDRE (SIGIR 2024) and SEIZE (ACM MM 2024) ship their benchmark annotation files with the outputs of their
models added to each query (``CIRCO/annotations/test.json`` in both repositories), so that retrieval needs no
model run. A query record keeps the benchmark's own fields (CIRCO ``reference_img_id`` / ``relative_caption``,
CIRR ``reference`` / ``caption``, FashionIQ ``candidate`` / ``captions``) and adds, per (captioner, language
model) pair:

  ``multi_caption_opt``  15 BLIP-2 OPT captions of the reference (LAVIS ``blip2_opt`` ``caption_coco_opt6.7b``,
                         nucleus sampling)           -> ``multi_gpt-3.5_opt`` their 15 edits by gpt-3.5-turbo
                         (``multi_gpt-4_opt``, ``multi_gpt-4o_opt`` where present: SEIZE's ``--gpt_version``)
  ``blip2_caption``      one BLIP-2 OPT caption     -> ``gpt-3.5-turbo`` its edit
  ``blip2_caption_t5``   one BLIP-2 Flan-T5-XXL caption (``blip2_t5`` ``pretrain_flant5xxl``) -> ``gpt-3.5-turbo_t5``
  ``shared_concept``     CIRCO's annotated shared concept (no model) -> ``gpt-3.5-turbo_none``

A file is read into a :class:`~zscir.models.training_free.generations.TableGenerations`: the reference id ->
its captions, and (caption, instruction) -> the edits, the instruction formed from the record's caption(s) as
the methods form it (:func:`~zscir.models.training_free.templates.instruction_of`). Its provenance records the
file, its sha256, the keys used and the models the keys name. ``FILE#captions=KEY,edits=KEY`` picks a pair;
otherwise the first pair of :data:`PAIRS` the file has.
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir.errors import ZscirError
from zscir.models.training_free.cache_file import CacheFileGenerations, is_generation_cache
from zscir.models.training_free.generations import Stacked, TableGenerations
from zscir.models.training_free.templates import instruction_of
from zscir.utils.hashing import sha256_file

# (captions key, edits key), in the order a file's default pair is chosen
PAIRS = (("multi_caption_opt", "multi_gpt-3.5_opt"), ("multi_caption_opt", "multi_gpt-4o_opt"),
         ("multi_caption_opt", "multi_gpt-4_opt"), ("blip2_caption", "gpt-3.5-turbo"),
         ("blip2_caption_t5", "gpt-3.5-turbo_t5"), ("shared_concept", "gpt-3.5-turbo_none"))

# key -> the model (and decoding) it names, as the releasing code generated it
KEY_MODELS = {
    "multi_caption_opt": "BLIP-2 OPT-6.7B COCO captioner (LAVIS blip2_opt caption_coco_opt6.7b), nucleus sampling, 15 captions",
    "multi_caption_t5": "BLIP-2 Flan-T5-XXL (LAVIS blip2_t5 pretrain_flant5xxl), nucleus sampling, 15 captions",
    "blip2_caption": "BLIP-2 OPT-6.7B COCO captioner (LAVIS blip2_opt caption_coco_opt6.7b), default decoding",
    "blip2_caption_t5": "BLIP-2 Flan-T5-XXL (LAVIS blip2_t5 pretrain_flant5xxl), default decoding",
    "shared_concept": "CIRCO's annotated shared concept (no model)",
    "multi_gpt-3.5_opt": "gpt-3.5-turbo (OpenAI chat API)", "multi_gpt-4_opt": "gpt-4 (OpenAI chat API)",
    "multi_gpt-4o_opt": "gpt-4o (OpenAI chat API)", "gpt-3.5-turbo": "gpt-3.5-turbo (OpenAI chat API)",
    "gpt-3.5-turbo_t5": "gpt-3.5-turbo (OpenAI chat API)", "gpt-3.5-turbo_none": "gpt-3.5-turbo (OpenAI chat API)",
}
REFERENCE_FIELDS = ("reference_img_id", "reference", "candidate")
INSTRUCTION_FIELDS = ("relative_caption", "caption", "captions")


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ZscirError(f"--generations {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZscirError(f"--generations {path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ZscirError(f"--generations {path}: expected a list of query records (LDRE/SEIZE annotation format)")
    return data


def _pair(path: Path, records: list[dict], chosen: dict) -> tuple[str, str]:
    if chosen:
        if set(chosen) != {"captions", "edits"}:
            raise ZscirError(f"--generations {path}#...: expected captions=KEY,edits=KEY")
        return chosen["captions"], chosen["edits"]
    keys = set(records[0]) if records else set()
    for pair in PAIRS:
        if set(pair) <= keys:
            return pair
    raise ZscirError(f"--generations {path}: no captions/edits key pair of LDRE or SEIZE in its records (expected "
                     f"one of {', '.join('+'.join(p) for p in PAIRS)})")


def _field(record: dict, names: tuple[str, ...], path: Path, n: int):
    for name in names:
        if name in record:
            return record[name]
    raise ZscirError(f"--generations {path}, record {n}: expected one of the fields {', '.join(names)}")


def read_released(spec: str) -> TableGenerations:
    """One released file (``PATH`` or ``PATH#captions=KEY,edits=KEY``) as generations."""
    file, _, options = spec.partition("#")
    path = Path(file)
    chosen = dict(part.partition("=")[::2] for part in filter(None, options.split(",")))
    records = _records(path)
    cap_key, edit_key = _pair(path, records, chosen)
    table = TableGenerations()
    for n, record in enumerate(records):
        reference = str(_field(record, REFERENCE_FIELDS, path, n))
        given = _field(record, INSTRUCTION_FIELDS, path, n)
        instruction = instruction_of(given if isinstance(given, list) else [given])
        captions, edits = record.get(cap_key), record.get(edit_key)
        if captions is None or edits is None:
            raise ZscirError(f"--generations {path}, record {n}: missing {cap_key if captions is None else edit_key!r}")
        captions = [captions] if isinstance(captions, str) else list(captions)
        edits = [edits] if isinstance(edits, str) else list(edits)
        if len(captions) != len(edits):
            raise ZscirError(f"--generations {path}, record {n}: {len(captions)} captions ({cap_key}) but "
                             f"{len(edits)} edits ({edit_key}): expected one edit per caption")
        table.add_caption(reference, captions)
        grouped: dict[str, list[str]] = {}
        for caption, edit in zip(captions, edits):
            grouped.setdefault(caption, []).append(edit)   # a sampled caption may repeat: its edits in order
        for caption, outputs in grouped.items():
            table.add_edit(caption, instruction, outputs)
    table.add_source({
        "source": "imported file", "path": str(path.resolve()), "sha256": sha256_file(path), "records": len(records),
        "captions_key": cap_key, "edits_key": edit_key,
        "captioner": KEY_MODELS.get(cap_key, f"named by key {cap_key!r}"),
        "editor": KEY_MODELS.get(edit_key, f"named by key {edit_key!r}"),
        "n": max((len(r[cap_key]) if isinstance(r[cap_key], list) else 1) for r in records) if records else 0})
    return table


def read_source(spec: str):
    """A released annotation file, or a zscir generation cache (``FILE#captioner=KEY,editor=KEY``)."""
    file, _, options = spec.partition("#")
    if is_generation_cache(file):
        return CacheFileGenerations(file, dict(p.partition("=")[::2] for p in filter(None, options.split(","))))
    return read_released(spec)


def load_generations(specs) -> Stacked:
    """Every ``--generations`` file, asked in the order given."""
    return Stacked([read_source(str(s)) for s in specs])
