"""`build_index` under torchrun, with an optional crash: rank R is SIGKILLed after K batches.

  torchrun --nproc_per_node N index_driver.py IMAGES OUT [--kill-rank R --after K]

Prints the main process's summary as JSON. Shards of 2 images, batches of 1, one decoding
process in-process (--workers 0), the shapes world's CLIP.
"""

import argparse
import json
import os
import signal

from zscir.features.distributed import current_ranks
from zscir.index.gallery import build_index
from zscir.world.shipped import shapes_backbone

parser = argparse.ArgumentParser()
parser.add_argument("images")
parser.add_argument("out")
parser.add_argument("--kill-rank", type=int, default=None)
parser.add_argument("--after", type=int, default=0)
args = parser.parse_args()

ranks = current_ranks("cpu")
backbone = shapes_backbone()
if args.kill_rank == ranks.rank:
    forward, calls = backbone.encode_image, [0]

    def encode_then_die(images, with_tokens=False):
        if calls[0] == args.after:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return forward(images, with_tokens)
    backbone.encode_image = encode_then_die
summary = build_index(args.out, backbone, images=args.images, batch_size=1, workers=0, shard_size=2,
                      progress=False, ranks=ranks if ranks.world > 1 else None)
if ranks.is_main:
    print(json.dumps(summary))
