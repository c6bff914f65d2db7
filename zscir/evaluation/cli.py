"""`zscir eval`: evaluate query encoders on a benchmark; a thin shell over :func:`zscir.evaluation.run.evaluate`."""

from __future__ import annotations

import json
import sys

import click

from zscir.backbone.options import backbone_options, check_device, resolve_pretrained
from zscir.benchmarks import BENCHMARKS
from zscir.benchmarks.fine import FINE_GALLERIES
from zscir.evaluation import report
from zscir.evaluation.protocol import FIQ_CAPTION_MODES, Protocol
from zscir.errors import ZscirError
from zscir.generation.cli import captioner_options, decoding_options, generator_kwargs
from zscir.utils.options import OUTPUT_DIR, OUTPUT_FILE, POSITIVE_INT


@click.command("eval")
@click.argument("benchmark", type=click.Choice(list(BENCHMARKS)))
@click.option("--root", type=click.Path(file_okay=False), help="Benchmark folder (default for shapes: the built-in world).")
@click.option("--model", "models", multiple=True,
              help="image | text | sum | searle-xl-oti[:VOCAB.txt,PHRASES.txt] (training-free, need --clip; "
                   "searle-xl-oti inverts each reference by OTI: slow), cirevl | ldre | seize | cvsi:MAPPING.safetensors "
                   "(language-model methods, read --generations) or a checkpoint path; repeatable. "
                   "Default: the baselines (shapes: plus the shipped checkpoints).")
@click.option("--generations", "generations", multiple=True,
              help="Captions and language-model edits for cirevl/ldre/seize/cvsi: a released LDRE/SEIZE annotation "
                   "JSON (PATH or PATH#captions=KEY,edits=KEY) or a zscir generation cache (PATH or "
                   "PATH#captioner=KEY,editor=KEY); repeatable, asked in order before --captioner/--editor.")
@click.option("--captioner", default=None, metavar="SPEC",
              help="Caption the references (and, for cvsi, the gallery) where --generations has no caption: "
                   "blip2:MODEL, hf-vlm:MODEL, blip:MODEL, openai:MODEL@URL ... (as `zscir caption`); cached.")
@click.option("--editor", default=None, metavar="SPEC",
              help="Edit the captions where --generations has no edit: hf-lm:MODEL or openai:MODEL@URL (as "
                   "`zscir edit`), one prompt per benchmark kind (CIReVL's templates); cached.")
@captioner_options
@decoding_options
@click.option("--generation-cache", default=None, type=OUTPUT_FILE, metavar="FILE",
              help="One generation cache file for the captions and edits (default: each generator's own file "
                   "under the zscir cache dir, as `zscir caption` / `zscir edit` use).")
@click.option("--generation-batch-size", type=POSITIVE_INT, default=16, show_default=True,
              help="Images or captions per captioner/editor call.")
@backbone_options("Default: the benchmark's own (shapes: the world's CLIP), else each checkpoint's.",
                  random_weights=True, preprocess=None, preprocess_note="Default: targetpad, or the checkpoint's.")
@click.option("--split", "splits", multiple=True, help="Split(s) to run, repeatable (default: val; shapes: val and val_coarse).")
@click.option("--category", "categories", multiple=True, type=click.Choice(["dress", "shirt", "toptee"]),
              help="FashionIQ categories (default: all three).")
@click.option("--out", "out_dir", type=OUTPUT_DIR, help="Run directory (default runs/eval-BENCHMARK-TIME).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
@click.option("--fiq-captions", type=click.Choice(FIQ_CAPTION_MODES), default="method", show_default=True,
              help="How FashionIQ's two captions form the query: each model's own official rule (method), "
                   "or one rule for all.")
@click.option("--remove-reference/--keep-reference", default=None,
              help="Drop the reference from its ranking (default: the benchmark's official choice).")
@click.option("--fine-gallery", type=click.Choice(FINE_GALLERIES), default="fine", show_default=True,
              help="Fine-FashionIQ gallery: FineCIR's smaller one or the full split.")
@click.option("--cache-dir", type=OUTPUT_DIR, help="Feature cache (default: ZSCIR_CACHE/features/eval).")
@click.option("--batch-size", type=POSITIVE_INT, default=64, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--no-oracles", is_flag=True, help="Leave out the benchmark's oracle rows (shapes: caption, edit, "
                                                  "inversion and reference-caption ceilings).")
def eval_command(benchmark, root, models, generations, captioner, editor, preset, prompt, generation_cache,
                 generation_batch_size, clip, pretrained, preprocess, device, splits, categories, out_dir, as_json,
                 fiq_captions, remove_reference, fine_gallery, cache_dir, batch_size, no_progress, no_oracles,
                 **generator_options):
    """Evaluate on BENCHMARK: metrics table, results.json/.md and top-50 rankings (submission format) in the run dir."""
    # deferred: the runner loads torch (through the models it evaluates); `zscir eval --help` must not
    from zscir.evaluation.run import EvalRequest, evaluate
    from zscir.models.training_free.backends import ENDPOINT_KEYS, BackendConfig

    kw = generator_kwargs(generator_options)
    endpoint_kw = {k: kw.pop(k) for k in ENDPOINT_KEYS if k in kw}
    captioner_kw = {**kw, **{k: v for k, v in (("preset", preset), ("prompt", prompt)) if v is not None}}
    if captioner_kw and captioner is None:
        raise ZscirError("--preset/--prompt/--n/--decoding/...: these set the captioner: also give --captioner SPEC")
    backends = None
    if captioner or editor:
        backends = BackendConfig(captioner, editor, captioner_kw, endpoint_kw, device, generation_cache,
                                 generation_batch_size, progress=not no_progress)
    elif endpoint_kw or generation_cache:
        raise ZscirError("--generation-cache/--endpoint-*: give --captioner SPEC and/or --editor SPEC")

    pretrained, device = resolve_pretrained(clip, pretrained), check_device(device)  # --pretrained none: random
    protocol = Protocol(fiq_captions=fiq_captions, remove_reference=remove_reference, fine_gallery=fine_gallery,
                        preprocess=preprocess)
    results = evaluate(EvalRequest(
        benchmark=benchmark, root=root, splits=splits or None, models=models or None, clip=clip,
        pretrained=pretrained, protocol=protocol, categories=categories or None, out_dir=out_dir,
        cache_root=cache_dir, device=device, batch_size=batch_size, progress=not no_progress,
        command=" ".join(["zscir"] + sys.argv[1:]), oracles=not no_oracles,
        generations=generations or None, backends=backends))
    click.echo(json.dumps(results, indent=2) if as_json else report.text(results))
