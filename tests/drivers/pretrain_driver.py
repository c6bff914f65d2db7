"""Subprocess driver for the pretraining tests: resume after SIGKILL, and 2-process equivalence.

Usage:
  python pretrain_driver.py train FEATURES.npz RUN_DIR [--pause-points] [--resume]
      [--method fti|pic2word|lincir|searle|scot]
  torchrun --nproc_per_node N pretrain_driver.py grads FEATURES.npz OUT.safetensors
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from zscir.backbone import load_backbone
from zscir.data.splitter import rule_tags
from zscir.models import objective as objective_module
from zscir.training.pretrain import PretrainConfig, batch_loss, epoch_order, make_gather, train
from zscir.training.pretrain_data import CaptionSet, PretrainingSet, keyword_mask
from zscir.utils.testpoint import testpoint

SUBJECTS = ["a dog", "a red car", "a small cat", "a tall tree"]
ATTRIBUTES = ["on the grass", "parked near a fence", "sleeping on a sofa", "in a snowy field"]


def method_files(features) -> dict:
    """SEARLE's vocabulary and phrases, SCOT's caption edits: files beside FEATURES (written once, the same each run)."""
    folder = Path(features).parent
    vocabulary, phrases, edits = folder / "vocabulary.txt", folder / "phrases.txt", folder / "edits.jsonl"
    n = len(np.load(features)["pooled"])
    if not edits.exists():
        vocabulary.write_text("dog\ncar\ncat\ntree\n")
        phrases.write_text("a photo of a {}\na red {} on the grass\nthe {} in a snowy field\n")
        rows = [{"image": str(i), "caption": f"{SUBJECTS[i % 4]} {ATTRIBUTES[i % 4]}",
                 "modification": f"make it {colour}", "edited_caption": f"a {colour} {SUBJECTS[i % 4][2:]} "
                 f"{ATTRIBUTES[i % 4]}"} for i in range(n) for colour in ("blue", "green")]
        edits.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"vocabulary": str(vocabulary), "phrases": str(phrases), "edits": str(edits)}


def prepared(features, method, bb, data):
    """SEARLE's OTI (3 steps, cached beside FEATURES) and SCOT's edits, as `zscir pretrain` adds them."""
    from zscir.models.methods import get_training

    files = method_files(features)
    cfg = PretrainConfig(method=method, seed=3, **({"vocabulary": files["vocabulary"], "phrases": files["phrases"],
                                                   "oti_steps": 3, "oti_batch_size": 8} if method == "searle"
                                                  else {"edits": files["edits"]}))
    data = get_training(method).prepare(cfg, data, bb, None, Path(features).parent / "cache",
                                        SimpleNamespace(num_processes=1), lambda *a: None)
    return cfg, data


def load(features, method="fti"):
    torch.manual_seed(0)
    bb = load_backbone("zscir-tiny-test")
    z = np.load(features)
    n = len(z["pooled"])
    if method == "lincir":  # captions only: "a dog on the grass", ... and their text features
        captions = [f"{SUBJECTS[i % 4]} {ATTRIBUTES[(i // 4) % 4]}" for i in range(n)]
        return bb, CaptionSet(captions, [keyword_mask(c, rule_tags) for c in captions],
                              bb.encode_text(captions).numpy().astype(np.float16), bb)
    data = PretrainingSet([str(i) for i in range(n)], [SUBJECTS[i % 4] for i in range(n)],
                          [ATTRIBUTES[i % 4] for i in range(n)], bb, pooled=z["pooled"], tokens=z["tokens"],
                          need_tokens=method == "fti")
    if method in ("searle", "scot"):
        return bb, prepared(features, method, bb, data)[1]
    return bb, data


NETWORK_CONFIGS = {"fti": "fti4cir-tiny", "pic2word": "pic2word-tiny", "lincir": "lincir-tiny",
                   "searle": "searle-tiny", "scot": "scot-tiny"}


def config(run_dir, method="fti"):
    return PretrainConfig(out=run_dir, method=method, network_config=NETWORK_CONFIGS[method], dropout=0.5, epochs=3,
                          batch_size=8, lr=1e-3, lr_decay_epoch=2, save_every_steps=2, seed=3)


def main():
    torch.set_num_threads(1)
    mode, features, out = sys.argv[1:4]
    method = sys.argv[sys.argv.index("--method") + 1] if "--method" in sys.argv else "fti"
    bb, data = load(features, method)
    if mode == "train":
        if "--pause-points" in sys.argv:  # two more test points: inside a step, and inside a save
            import zscir.checkpoint as checkpoint_module
            import zscir.training.pretrain as pretrain_module
            forward, sidecar = pretrain_module.batch_loss, checkpoint_module.atomic_write_json

            def paused_forward(*args, **kw):
                testpoint("driver.forward")
                return forward(*args, **kw)

            def paused_sidecar(*args, **kw):  # the weights are renamed into place, the sidecar not yet
                testpoint("driver.save")
                return sidecar(*args, **kw)

            pretrain_module.batch_loss, checkpoint_module.atomic_write_json = paused_forward, paused_sidecar
        train(config(out, method), bb, data, resume="--resume" in sys.argv, progress_bar=False)
    elif mode == "grads":
        from accelerate import Accelerator
        from safetensors.torch import save_file

        from zscir.models.factory import backbone_dims, create_mapping_network
        from zscir.models.objective import LossWeights

        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        net = create_mapping_network("fti4cir-tiny", backbone_dims(bb))
        net = acc.prepare(net)
        global_batch = epoch_order(len(data), 0, 0)[:8]
        loss, _ = batch_loss(net, bb, data, global_batch, acc.process_index, acc.num_processes,
                             objective_module.fti_objective, LossWeights(), make_gather(acc))
        acc.backward(loss)
        loss = acc.reduce(loss.detach(), reduction="mean")  # as train() reports it
        if acc.is_main_process:
            grads = {n: p.grad.detach().clone() for n, p in acc.unwrap_model(net).named_parameters()}
            save_file({**grads, "loss": loss.detach().reshape(1), "processes": torch.tensor([acc.num_processes])}, out)
        acc.wait_for_everyone()


if __name__ == "__main__":
    main()
