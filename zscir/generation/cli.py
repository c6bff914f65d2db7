"""``zscir edit``: precompute LLM edits of captions, once, into the generation cache.

Also holds the decoding and endpoint options that ``zscir caption`` shares.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zscir.benchmarks import load_splits
from zscir.backbone.options import check_device, device_option
from zscir.errors import ZscirError
from zscir.features.distributed import current_ranks
from zscir.generation.base import DEFAULT_EDIT_PROMPT, Decoding, EditInput, PromptTemplate
from zscir.generation.cache import HEADER, captioner_key, check_cache_file, json_line
from zscir.generation.edits import edit_pairs
from zscir.generation.registry import build_editor
from zscir.utils.atomic import atomic_path
from zscir.utils.hashing import sha256_file
from zscir.utils.jsonl import read_jsonl
from zscir.utils.options import OUTPUT_FILE


def decoding_options(f):
    """--n, --decoding, --num-beams, --top-p, --temperature, --seed, --max-new-tokens, endpoint options."""
    options = [
        click.option("--n", "--num-outputs", "n", default=None, type=click.IntRange(min=1), metavar="N",
                     help="Outputs per input (needs --decoding beam or sample; default 1). Under torchrun spell it "
                          "--num-outputs (torchrun reads --n as its own option)."),
        click.option("--decoding", default=None, type=click.Choice(["greedy", "beam", "sample"]),
                     help="Decoding: greedy (default), beam search, or nucleus sampling with --seed."),
        click.option("--num-beams", default=None, type=click.IntRange(min=1), metavar="K", help="Beam width (beam)."),
        click.option("--top-p", default=None, type=click.FloatRange(0, 1, min_open=True), metavar="P",
                     help="Nucleus sampling mass (sample; default 0.9)."),
        click.option("--temperature", default=None, type=click.FloatRange(0, min_open=True), metavar="T"),
        click.option("--seed", default=None, type=int, metavar="S", help="Sampling seed, recorded (default 0)."),
        click.option("--max-new-tokens", default=None, type=click.IntRange(min=1), metavar="N"),
        click.option("--endpoint-concurrency", default=None, type=click.IntRange(min=1), metavar="N",
                     help="openai: requests in flight at once (default 4)."),
        click.option("--endpoint-timeout", default=None, type=click.FloatRange(0, min_open=True), metavar="S",
                     help="openai: seconds per request (default 60)."),
        click.option("--endpoint-retries", default=None, type=click.IntRange(min=0), metavar="N",
                     help="openai: retries on 429/5xx/timeouts/malformed answers, with exponential backoff (default 4)."),
        click.option("--endpoint-param", "endpoint_params", multiple=True, metavar="KEY=JSON",
                     help="openai: an extra request field for the server's own options, recorded in the identity "
                          "(repeatable), e.g. repeat_penalty=1.0 for llama-cpp-python's server (its default is 1.1)."),
        click.option("--key-env", default=None, metavar="VAR",
                     help="openai: the environment variable holding the API key (default OPENAI_API_KEY; none sent when unset)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def captioner_option(default: str | None = None, note: str = ""):
    """--captioner SPEC: the one declaration (`zscir caption`, `zscir index`, `zscir retrieve`)."""
    return click.option("--captioner", default=default, show_default=default is not None, metavar="NAME",
                        help="blip, blip2, hf-vlm, openai, lavis, file, webdataset-txt or shapes-world; 'name:arg' "
                             "fills the main argument (file:caps.jsonl, blip:/path/to/model, "
                             "blip2:Salesforce/blip2-opt-2.7b, hf-vlm:DIR, openai:MODEL@http://host/v1, "
                             "shapes-world:/path/to/world)." + (f" {note}" if note else ""))


def editor_option(required: bool = False, note: str = ""):
    """--editor SPEC: the one declaration (`zscir edit`, `zscir retrieve`)."""
    return click.option("--editor", required=required, default=None, metavar="SPEC",
                        help="hf-lm:MODEL (a causal or seq2seq LM: Hugging Face id or save_pretrained folder) or "
                             "openai:MODEL@URL (an OpenAI-compatible chat endpoint)." + (f" {note}" if note else ""))


def generations_option(f):
    """--generations FILE (repeatable): the one declaration (`zscir eval`, `zscir retrieve`)."""
    return click.option("--generations", "generations", multiple=True,
                        help="Captions and language-model edits for cirevl/ldre/seize/cvsi: a released LDRE/SEIZE "
                             "annotation JSON (PATH or PATH#captions=KEY,edits=KEY) or a zscir generation cache "
                             "(PATH or PATH#captioner=KEY,editor=KEY); repeatable, asked in order before "
                             "--captioner/--editor.")(f)


def captioner_options(f):
    """--preset and --prompt: a captioner's settings (``zscir caption`` and ``zscir eval --captioner``)."""
    f = click.option("--prompt", default=None, metavar="TEXT", help="blip2, hf-vlm, openai: the captioning prompt.")(f)
    return click.option("--preset", default=None, metavar="NAME",
                        help="blip2: a method's settings (cirevl, ldre, ldre-opt, ldre-t5); other options override "
                             "them.")(f)


DECODING_FIELDS = {"decoding": "strategy", "n": "n", "num_beams": "num_beams", "top_p": "top_p",
                   "temperature": "temperature", "seed": "seed", "max_new_tokens": "max_new_tokens"}
ENDPOINT_FIELDS = {"endpoint_concurrency": "concurrency", "endpoint_timeout": "timeout",
                   "endpoint_retries": "retries", "key_env": "key_env"}


def generator_kwargs(options: dict) -> dict:
    """Keyword arguments for build_captioner/build_editor from the shared options (pops them from ``options``)."""
    given = {DECODING_FIELDS[k]: options.pop(k) for k in list(DECODING_FIELDS) if options.get(k) is not None}
    for k in DECODING_FIELDS:
        options.pop(k, None)
    # endpoint options go only to the backends that take them: given to another, they are refused by name
    kw = {ENDPOINT_FIELDS[k]: v for k in list(ENDPOINT_FIELDS) if (v := options.pop(k, None)) is not None}
    params = options.pop("endpoint_params", ())
    if params:
        kw["params"] = dict(_param(p) for p in params)
    if given:
        if "n" in given and "strategy" not in given:
            raise ZscirError(f"--n {given['n']}: say how to get N outputs: --decoding beam or --decoding sample")
        kw["decoding"] = Decoding(**given)
    return kw


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ZscirError(f"--endpoint-param {text}: expected KEY=VALUE (VALUE as JSON, e.g. repeat_penalty=1.0)")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a plain string


def read_pairs_file(path: str) -> list[tuple[str, EditInput]]:
    """JSONL rows {"id"?, "caption", "instruction"} -> (id, EditInput); the id defaults to the line number."""
    pairs = []
    for n, row in read_jsonl(path, lambda n: f"--pairs {path}, line {n}"):
        if not (isinstance(row, dict) and isinstance(row.get("caption"), str)
                and isinstance(row.get("instruction"), str)):
            raise ZscirError(f"--pairs {path}, line {n}: expected an object with string fields caption and instruction")
        pairs.append((str(row.get("id", n)), EditInput(row["caption"], row["instruction"])))
    return pairs


def read_captions(cache_file: str, caption_key: str | None) -> tuple[str, dict[str, list[str]]]:
    """The captioner declared in a generation cache file and its captions: (identity, content hash -> captions)."""
    check_cache_file(cache_file)
    if not Path(cache_file).is_file():
        raise ZscirError(f"--captions {cache_file}: no such file (write it with `zscir caption --cache FILE`)")
    declared: dict[str, str] = {}
    entries: dict[str, dict[str, list[str]]] = {}
    with open(cache_file, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a cut last line
            if not isinstance(record, dict) or record == HEADER:
                continue
            if "captioner" in record:
                declared[record["c"]] = record["captioner"]
            elif "h" in record:
                value = record.get("outputs", record.get("caption"))
                entries.setdefault(record["c"], {})[record["h"]] = [value] if isinstance(value, str) else value
    keys = [caption_key] if caption_key else list(declared)
    if len(keys) != 1 or keys[0] not in declared:
        listed = "; ".join(f"{k} = {v}" for k, v in declared.items()) or "none"
        raise ZscirError(f"--captions {cache_file}: expected exactly one captioner (or --caption-key KEY); "
                         f"declared: {listed}")
    return declared[keys[0]], entries.get(keys[0], {})


def benchmark_pairs(benchmark: str, root: str | None, split: str, captions: dict[str, list[str]], join: str):
    """(pair id, EditInput) for every caption of every query's reference; rows for --out; missing references."""
    pairs, rows, missing, hashes = [], [], [], {}
    for eval_split in load_splits(benchmark, root, split):
        for q in eval_split.queries:
            path = eval_split.images[q.reference]
            if path not in hashes:
                hashes[path] = sha256_file(path)
            found = captions.get(hashes[path])
            if not found:
                missing.append(q.reference)
                continue
            instruction = join.join(c.strip() for c in q.captions)
            ids = [f"{eval_split.name}/{q.qid}/{i}" for i in range(len(found))]
            pairs += [(pid, EditInput(c, instruction)) for pid, c in zip(ids, found)]
            rows.append({"split": eval_split.name, "qid": q.qid, "reference": q.reference,
                         "instruction": instruction, "captions": found, "pair_ids": ids})
    return pairs, rows, missing


@click.command("edit")
@editor_option(required=True)
@click.option("--pairs", "pairs_file", default=None, type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="JSONL of {id?, caption, instruction} rows to edit.")
@click.option("--benchmark", default=None, metavar="NAME", help="Edit the queries of this benchmark's --split instead.")
@click.option("--split", default="val", show_default=True, metavar="SPLIT")
@click.option("--root", default=None, metavar="DIR", help="The benchmark's folder.")
@click.option("--captions", "captions_file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="--benchmark: the caption cache (from `zscir caption --cache FILE`) holding the reference captions.")
@click.option("--caption-key", default=None, metavar="KEY", help="The captioner's key when --captions holds several.")
@click.option("--join", default=" and ", show_default=True, help="How several modification texts become one instruction.")
@click.option("--prompt-file", default=None, type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Prompt template with {caption} and {instruction} (default: zscir's own).")
@click.option("--system", default=None, metavar="TEXT", help="A system message sent before the prompt.")
@decoding_options
@click.option("--cache", "cache_path", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="Generation cache (append-only JSONL; default under the zscir cache dir, one per editor).")
@click.option("--out", "out_path", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="Write one JSON line per pair (or per query with --benchmark) with its edits.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@device_option(None, "hf-lm models; default: cuda when available.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def edit(editor, pairs_file, benchmark, split, root, captions_file, caption_key, join, prompt_file, system,
         cache_path, out_path, batch_size, device, as_json, quiet, **options):
    """Rewrite captions as instructions say, with a language model; rerun to resume, cached edits are free.

    Under `torchrun --nproc_per_node N -m zscir.cli edit ...` or `accelerate launch`, each process edits
    every N-th pair into the one cache and the main process writes --out.
    """
    if (pairs_file is None) == (benchmark is None):
        raise ZscirError("zscir edit: give exactly one of --pairs FILE and --benchmark NAME")
    if benchmark is not None and captions_file is None:
        raise ZscirError("--benchmark: also give --captions FILE (the caption cache of the reference images)")
    if cache_path:
        check_cache_file(cache_path)
    template = DEFAULT_EDIT_PROMPT
    if prompt_file or system:
        text = Path(prompt_file).read_text(encoding="utf-8") if prompt_file else DEFAULT_EDIT_PROMPT.text
        template = PromptTemplate(text, system=system, name=Path(prompt_file).name if prompt_file else "zscir-edit-v1")
    kw = generator_kwargs(options)
    if device is not None:
        kw["device"] = check_device(device)  # "banana", or cuda without a GPU: one line
    if benchmark is not None:
        caption_identity, captions = read_captions(captions_file, caption_key)
        pairs, rows, missing = benchmark_pairs(benchmark, root, split, captions, join)
        if not pairs:
            raise ZscirError(f"--captions {captions_file}: none of the {len(missing)} reference images of "
                             f"{benchmark} {split} has a caption there: run `zscir caption` on them first")
    else:
        caption_identity, pairs, rows, missing = None, read_pairs_file(pairs_file), None, []
    ranks = current_ranks(device or "cpu")
    editor_obj = build_editor(editor, template=template, **kw)
    mine = edit_pairs(pairs, editor_obj, cache_path, batch_size=batch_size, progress=not quiet and ranks.is_main,
                      share=(ranks.rank, ranks.world) if ranks.world > 1 else None)
    counts = ranks.gather(mine.edited)
    ranks.barrier()
    if not ranks.is_main:
        return
    result = mine
    if ranks.world > 1:  # every process appended its share to the one cache: read it all back
        result = edit_pairs(pairs, editor_obj, mine.cache_path, progress=False)
        result.edited = sum(counts)
        result.from_cache -= result.edited
    if out_path:
        _write_out(out_path, pairs, rows, result)
    summary = {**result.summary(), "processes": ranks.world, "captioner": caption_identity,
               "references_without_caption": len(missing), "out": out_path}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"edited {len(result)} pair(s) with {result.identity}: {result.edited} now, "
                   f"{result.from_cache} from the cache (key {captioner_key(result.identity)})")
        click.echo(f"cache: {result.cache_path}")
        if missing:
            click.echo(f"{len(missing)} reference image(s) have no caption in {captions_file} (skipped)")


def _write_out(out_path: str, pairs, rows, result) -> None:
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        if rows is None:
            for pair_id, pair in pairs:
                f.write(json_line({"id": pair_id, **pair._asdict(), "edits": result.get(pair_id)}))
        else:
            for row in rows:
                edits = [result.get(pid) for pid in row.pop("pair_ids")]
                f.write(json_line({**row, "edits": edits}))
