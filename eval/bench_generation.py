"""Generation throughput: the transformers editor batched vs one input at a time, and the endpoint
client's concurrency vs serial against a real llama.cpp server -- same model, same run.

    python eval/bench_generation.py                       # 64 edits, a 4-layer 256-wide Llama
    python eval/bench_generation.py --pairs 32 --no-endpoint --json-out eval/results/generation.json

The model: a random Llama (``--hidden``, ``--layers``; byte-level BPE trained on a few
sentences) built here, greedy, ``--max-new-tokens`` new tokens per edit. Each mode runs
``--repeats`` times, alternating, and the best time counts (the machine's speed drifts).

- transformers: ``HFEditor.edit`` on batches of ``--batch-size`` vs on one pair at a time;
  the outputs of both are compared (left padding must not change a greedy edit);
- endpoint (needs ``pip install 'zscir[llm]'``): the same weights written to GGUF and served by
  llama-cpp-python's server on 127.0.0.1; the ``openai`` editor with ``--concurrency`` requests in
  flight vs one at a time; the agreement of its edits with the transformers editor's is reported.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _generation import CORPUS, save_causal_lm, start_llama_server  # noqa: E402

from zscir.generation import Decoding, EditInput, build_editor  # noqa: E402
from zscir.utils.cpu import cpu_name  # noqa: E402

INSTRUCTIONS = ["make it bigger", "change the colour to purple", "remove the square", "add two dogs"]


def best_of(repeats: int, *runs):
    """Run each callable ``repeats`` times, alternating; (best seconds per callable, last outputs per callable)."""
    best, outputs = [float("inf")] * len(runs), [None] * len(runs)
    for _ in range(repeats):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            outputs[k] = run()
            best[k] = min(best[k], time.perf_counter() - start)
    return best, outputs


@click.command()
@click.option("--pairs", "n_pairs", default=64, show_default=True)
@click.option("--hidden", default=256, show_default=True)
@click.option("--layers", default=4, show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--concurrency", default=4, show_default=True)
@click.option("--repeats", default=2, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads and llama.cpp threads.")
@click.option("--no-endpoint", is_flag=True, help="Skip the llama.cpp part.")
@click.option("--json-out", default=None, type=click.Path(dir_okay=False))
def main(n_pairs, hidden, layers, max_new_tokens, batch_size, concurrency, repeats, threads, no_endpoint, json_out):
    torch.set_num_threads(threads)
    captions = [line for line in dict.fromkeys(CORPUS) if not line.startswith("Image")]
    pairs = [EditInput(f"{captions[i % len(captions)]} {i}", INSTRUCTIONS[i % len(INSTRUCTIONS)])
             for i in range(n_pairs)]
    decoding = Decoding(max_new_tokens=max_new_tokens)
    report = {"cpu": cpu_name(), "threads": threads, "pairs": n_pairs, "hidden": hidden, "layers": layers,
              "max_new_tokens": max_new_tokens, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_causal_lm(Path(tmp) / "lm", ascii_only=True, hidden=hidden, layers=layers)
        editor = build_editor(f"hf-lm:{folder}", device="cpu", decoding=decoding)
        batched = lambda: [o for s in range(0, n_pairs, batch_size) for o in editor.edit(pairs[s:s + batch_size])]
        single = lambda: [editor.edit([p])[0] for p in pairs]
        (t_batched, t_single), (out_batched, out_single) = best_of(repeats, batched, single)
        report["transformers"] = {
            "batch_size": batch_size, "batched_s": round(t_batched, 3), "single_s": round(t_single, 3),
            "batched_edits_per_s": round(n_pairs / t_batched, 2), "single_edits_per_s": round(n_pairs / t_single, 2),
            "ratio_batched_over_single": round(t_single / t_batched, 2),
            "same_edits": sum(a == b for a, b in zip(out_batched, out_single))}
        if not no_endpoint:
            report["endpoint"] = endpoint_part(folder, Path(tmp), pairs, decoding, concurrency, repeats, threads,
                                               out_single)
    print(json.dumps(report, indent=2))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")


def endpoint_part(folder, tmp, pairs, decoding, concurrency, repeats, threads, reference) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zscir.generation.gguf_export import export_llama_gguf

    path = export_llama_gguf(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                             tmp / "model.gguf")
    proc, url = start_llama_server(path, tmp / "server.log", threads=threads)
    try:
        same = {"repeat_penalty": 1.0}  # llama-cpp-python's server default is 1.1; transformers applies none
        serial = build_editor(f"openai:bench@{url}", decoding=decoding, concurrency=1, params=same)
        parallel = build_editor(f"openai:bench@{url}", decoding=decoding, concurrency=concurrency, params=same)
        (t_serial, t_parallel), (out_serial, out_parallel) = best_of(
            repeats, lambda: serial.edit(pairs), lambda: parallel.edit(pairs))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"server": "llama-cpp-python server", "concurrency": concurrency, "serial_s": round(t_serial, 3),
            "concurrent_s": round(t_parallel, 3), "ratio_concurrent_over_serial": round(t_serial / t_parallel, 2),
            "serial_edits_per_s": round(len(pairs) / t_serial, 2),
            "same_as_transformers": sum(a == b for a, b in zip(out_serial, reference)),
            "concurrent_same_as_serial": sum(a == b for a, b in zip(out_serial, out_parallel)), "of": len(pairs)}


if __name__ == "__main__":
    main()
