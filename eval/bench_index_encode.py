"""`zscir index` end to end vs the pure encoder forward, and 1 vs 2 processes.

    python eval/bench_index_encode.py                      # 500 photo JPEGs, world CLIP + ViT-B-32
    python eval/bench_index_encode.py --n 200 --models world --no-scaling

The gallery: ``--n`` JPEGs made from skimage's sample photographs (random crops, flips and
sizes around 640x480, quality 85-95). For each model, in one run, same batch and device:

- forward: the image tower alone on pre-decoded, preprocessed tensors (fp32, and bf16
  autocast where the CPU has native bf16) -- the bound ``zscir index`` can reach; the fp32
  forward is measured just before and just after the draft-decoding index, and the draft
  ratio divides by their mean (the machine's speed drifts between runs seconds apart);
- index: ``build_index`` into a fresh directory, end to end (listing, hashing, decoding in
  worker processes, forward, shards, consolidation, faiss index), with JPEG draft decoding
  (the default) and with ``--decode full``; ratio = index images/s / forward images/s;
- scaling (world CLIP, and ViT-B-32 unless --no-scaling-vit): the ``zscir index`` command
  on 1 process (all cores' threads, and 1 thread) vs ``torchrun --nproc_per_node 2`` (each
  process 1 thread), wall time of the whole command including start-up; efficiency =
  (faster single process / two processes) / 2.

ViT-B-32 runs with random weights (as ``--pretrained none``, saved to a file so that every
process loads the same ones): the speed of a forward does not depend on the weights. Prints a table and writes JSON with ``--json-out``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image


def make_photos(folder: Path, n: int) -> None:
    import skimage.data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry(),
              np.stack([skdata.camera()] * 3, -1), skdata.retina(), np.stack([skdata.page()] * 3, -1)]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)]).convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        size = (int(rng.integers(600, 681)), int(rng.integers(450, 511)))
        if rng.random() < 0.25:
            size = size[::-1]  # portrait
        im.resize(size, Image.BICUBIC).save(folder / f"photo{i:04d}.jpg", quality=int(rng.integers(85, 96)))


def cpu_info() -> dict:
    from zscir.utils.cpu import cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = cpu_flags()
    return {"model": model, "cores": len(os.sched_getaffinity(0)),
            "flags": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni"))}


def load(model: str, tmp: Path):
    """(backbone, the CLI options that load the same weights)."""
    if model == "world":
        from zscir.world.shipped import shapes_backbone

        return shapes_backbone(), []
    from safetensors.torch import save_file

    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone(model, None)  # random weights: speed only; saved so that every process loads the same
    weights = tmp / f"{model}-random.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(weights))
    return load_backbone(model, str(weights)), ["--clip", model, "--pretrained", str(weights)]


def forward_rate(bb, tensors: torch.Tensor, batch: int, precision: str) -> float:
    from zscir.features.precision import autocast

    def run():
        with torch.inference_mode(), autocast(precision, "cpu"):
            for s in range(0, len(tensors), batch):
                bb.encode_image(tensors[s:s + batch])
    with torch.inference_mode(), autocast(precision, "cpu"):
        bb.encode_image(tensors[:batch])  # warm-up
    t = time.perf_counter()
    run()
    return len(tensors) / (time.perf_counter() - t)


def index_rate(bb, images: Path, batch: int, **kw) -> float:
    from zscir.index.gallery import build_index

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = build_index(Path(tmp) / "idx", bb, images=images, batch_size=batch, progress=False, **kw)
        seconds = time.perf_counter() - t
    assert s["count"] == len(list(images.glob("*.jpg"))), s
    return s["count"] / seconds


def command_seconds(images: Path, clip: list[str], batch: int, nproc: int, port: int, threads: int | None = None,
                    ) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["index", "--images", str(images), "--out", str(Path(tmp) / "idx"), "--batch-size", str(batch),
                "--no-progress", "--json", *clip]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        if nproc == 1:
            cmd = [sys.executable, "-m", "zscir.cli", *args]
        else:
            env["OMP_NUM_THREADS"] = "1"  # the cores are shared by the processes
            cmd = [shutil.which("torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(port),
                   "-m", "zscir.cli", *args]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t


@click.command()
@click.option("--n", default=500, show_default=True, help="Number of photo JPEGs.")
@click.option("--batch", default=64, show_default=True)
@click.option("--models", default="world,ViT-B-32", show_default=True, help="Comma-separated: world and/or open_clip names.")
@click.option("--images", type=click.Path(path_type=Path), default=None, help="Gallery folder (made if empty).")
@click.option("--no-scaling", is_flag=True, help="Skip the 1 vs 2 processes part.")
@click.option("--no-scaling-vit", is_flag=True, help="Scaling for the world CLIP only.")
@click.option("--rounds", default=2, show_default=True, help="Back-to-back forward/index rounds (median ratio).")
@click.option("--threads", type=int, default=None,
              help="torch threads of the forward (default: torch's). On shared, oversubscribed cores 2-thread "
                   "OpenMP regions wait for each other's time slices; 1 thread then measures the model, not the queue.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(n, batch, models, images, no_scaling, no_scaling_vit, rounds, threads, json_out):
    from zscir.data.images import decode_image
    from zscir.features.loader import default_decode_workers
    from zscir.utils.cpu import has_native

    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="zscir-bench-encode-"))
    images = images or tmp / "photos"
    if not images.is_dir() or not any(images.glob("*.jpg")):
        make_photos(images, n)
    files = sorted(images.glob("*.jpg"))
    if len(files) != n:
        raise click.UsageError(f"--images {images} holds {len(files)} JPEGs, not --n {n}")
    info = {"cpu": cpu_info(), "torch_threads": torch.get_num_threads(), "decode_workers": default_decode_workers(),
            "n": len(files), "batch": batch, "models": {}}
    print(f"CPU: {info['cpu']['model']}, {info['cpu']['cores']} cores, flags {' '.join(info['cpu']['flags'])}")
    bf16 = has_native("bf16")
    for name in models.split(","):
        bb, clip = load(name, tmp)
        tensors = torch.stack([bb.preprocess(decode_image(p.read_bytes())) for p in files])
        row = {"image_size": bb.image_size, "weights": "shipped" if name == "world" else "random (--pretrained none)"}
        # rounds of [forward, index] pairs, each ratio from a pair measured back to back: the cores are
        # shared with other jobs, so absolute rates drift; the median ratio is what we report
        runs: dict[str, list[float]] = {}
        for _ in range(rounds):
            for label, fn in (("forward_fp32", lambda: forward_rate(bb, tensors, batch, "fp32")),
                              ("index_draft_fp32", lambda: index_rate(bb, images, batch)),
                              ("forward_fp32_after", lambda: forward_rate(bb, tensors, batch, "fp32")),
                              ("index_full_fp32", lambda: index_rate(bb, images, batch, draft=False)),
                              *((("forward_bf16", lambda: forward_rate(bb, tensors, batch, "bf16")),
                                 ("index_draft_bf16", lambda: index_rate(bb, images, batch, precision="bf16")))
                                if bf16 else ())):
                runs.setdefault(label, []).append(fn())
                print(f"  {name} {label}: {runs[label][-1]:.2f} img/s", flush=True)
        row["runs"] = runs
        for label, values in runs.items():
            row[label] = float(np.median(values))
        for ratio, (num, den) in {"ratio_draft_fp32": ("index_draft_fp32", "forward_fp32"),
                                  "ratio_full_fp32": ("index_full_fp32", "forward_fp32"),
                                  "ratio_draft_bf16": ("index_draft_bf16", "forward_bf16")}.items():
            if num in runs:
                forward = runs[den]
                if num == "index_draft_fp32":   # the forward just before and just after it: the machine drifts
                    forward = [(x + y) / 2 for x, y in zip(runs[den], runs["forward_fp32_after"])]
                per_round = [a / b for a, b in zip(runs[num], forward)]
                row[ratio], row[ratio + "_rounds"] = float(np.median(per_round)), per_round
        info["models"][name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
        del tensors
        if not no_scaling and shutil.which("torchrun") and (name == "world" or not no_scaling_vit):
            # one process with all cores' threads, and with 1 thread (OpenMP threads spin when the cores
            # are oversubscribed, as on a shared machine: then 1 thread can be the faster single process)
            one_all = command_seconds(images, clip, batch, 1, 0)
            one_1t = command_seconds(images, clip, batch, 1, 0, threads=1)
            two = command_seconds(images, clip, batch, 2, 29591)
            one = min(one_all, one_1t)
            row["scaling"] = {"one_process_s": one_all, "one_process_1_thread_s": one_1t, "two_processes_s": two,
                              "speedup": one / two, "efficiency": one / two / 2}
            print(f"{name}: 1 process {one_all:.1f} s ({one_1t:.1f} s with 1 thread), 2 processes {two:.1f} s: "
                  f"speedup over the faster single process {one / two:.2f}, efficiency {one / two / 2:.2f}",
                  flush=True)
    print()
    print(f"| model | forward fp32 img/s | index img/s (draft) | ratio | index (full decode) | ratio "
          f"| forward bf16 | index bf16 | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in info["models"].items():
        print(f"| {name} | {r['forward_fp32']:.0f} | {r['index_draft_fp32']:.0f} | {r['ratio_draft_fp32']:.2f}x "
              f"| {r['index_full_fp32']:.0f} | {r['ratio_full_fp32']:.2f}x | {r.get('forward_bf16', 0):.0f} "
              f"| {r.get('index_draft_bf16', 0):.0f} | {r.get('ratio_draft_bf16', 0):.2f}x |")
    if json_out:
        json_out.write_text(json.dumps(info, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
