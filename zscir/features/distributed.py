"""Gallery encoding split across processes: ``accelerate launch`` or ``torchrun``.

Every process runs the same command. The main process (rank 0) plans the update of the
feature store under its lock (hashes the images, drops rows no longer wanted) and
broadcasts the ids still to encode; process r takes the r-th contiguous slice of them
and encodes it into its own store ``<store>/ranks/rank-<r>/`` (fp16 shards with a
manifest, committed per shard: a killed run keeps every finished shard and a rerun
encodes only the rest). After a barrier the main process adopts the rank stores'
shards into its manifest in rank order (hard links, so the order of rows is the order
one process would have written), consolidates, and deletes the rank stores; the caller
(``zscir index``) then builds the search index on the main process alone.

One process and N processes therefore give the same store, row for row. The store itself
knows nothing of processes: :func:`update_store` is where a caller's update goes multi-process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Iterable

from zscir.errors import ZscirError
from zscir.features.options import EncodeOptions
from zscir.features.sources import _item_id
from zscir.features.store import FeatureStore, UpdateReport, backbone_fingerprint
from zscir.utils.process_group import end_at_exit

RANKS_DIR = "ranks"
PLAN_TIMEOUT_HOURS = 24


@dataclass
class Ranks:
    """This process's place among the processes of one job, and the few collectives it needs."""

    rank: int
    world: int
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """``obj`` of the main process, on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list  # heavy (torch): only with several processes

        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object  # heavy (torch): only with several processes

        return gather_object([obj])

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def launched_world() -> int:
    """The number of processes this one was launched among (torchrun / accelerate launch set WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def process_device(device: str) -> str:
    """Under a launcher each process takes its own GPU: ``cuda`` becomes ``cuda:<LOCAL_RANK>``."""
    if launched_world() > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def current_ranks(device: str = "cpu") -> Ranks:
    """The job this process belongs to: one process, or the launcher's (gloo on CPUs, nccl on GPUs)."""
    if launched_world() <= 1:
        return Ranks(0, 1)
    from accelerate import Accelerator  # heavy (torch): only under a launcher
    from accelerate.utils import InitProcessGroupKwargs

    # the others wait while the main process hashes a new gallery (hours at 100M images): no 30-min timeout
    accelerator = Accelerator(cpu=str(device) == "cpu",
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=PLAN_TIMEOUT_HOURS))])
    end_at_exit()
    return Ranks(accelerator.process_index, accelerator.num_processes, accelerator)


def share(n: int, rank: int, world: int) -> slice:
    """The contiguous slice of ``n`` items process ``rank`` of ``world`` encodes (sizes differ by at most 1)."""
    return slice(rank * n // world, (rank + 1) * n // world)


def rank_store(store: FeatureStore, rank: int) -> FeatureStore:
    return FeatureStore(store.root / RANKS_DIR / f"rank-{rank:05d}", repair_hint=store.repair_hint)


def fail(ranks: Ranks, message: str) -> None:
    """Main process: tell the others (waiting for the plan) that there is none, so they stop too."""
    ranks.broadcast({"error": message})


def update_store(store: FeatureStore, backbone, items: Iterable[Any], options: EncodeOptions,
                 ranks: Ranks | None = None) -> UpdateReport:
    """``store.update`` in this process, or across ``ranks`` when there are 2+ (every process calls it)."""
    if ranks is not None and ranks.world > 1:
        return distributed_update(store, backbone, items, ranks, options)
    return store.update(backbone, items, options)


def distributed_update(store: FeatureStore, backbone, items: Iterable[Any], ranks: Ranks,
                       options: EncodeOptions) -> UpdateReport:
    """:meth:`FeatureStore.update` across ``ranks``; every process calls it with the same ``items``.

    Returns the main process's report (images encoded by all processes) on the main
    process, and the process's own report on the others.
    """
    items = list(items)
    precision = options.precision
    if not ranks.is_main:
        plan = ranks.broadcast(None)
        if plan.get("error"):
            raise ZscirError(f"process {ranks.rank}: the main process stopped: {plan['error']}")
        if plan["fingerprint"] != backbone_fingerprint(backbone, precision):
            error = (f"process {ranks.rank} loaded {backbone_fingerprint(backbone)['backbone']} but the main process "
                     f"{plan['fingerprint']['backbone']} (random weights, --pretrained none, differ per process: "
                     "pass a weights file)")
            ranks.gather({"error": error, "encoded": 0, "corrupt": [], "images_per_s": 0.0})
            raise ZscirError(error)
        mine = _encode_share(store, backbone, items, plan, ranks, replace(options, progress=False))
        ranks.gather(mine)
        return UpdateReport(**{k: v for k, v in mine.items() if k in ("encoded", "seconds", "images_per_s")},
                            corrupt=[tuple(c) for c in mine.get("corrupt", [])])
    with contextlib.ExitStack() as stack:
        try:
            if options.force:
                shutil.rmtree(store.root / RANKS_DIR, ignore_errors=True)
            manifest, todo, report = stack.enter_context(store.planned_update(backbone, items, options))
        except BaseException as e:
            fail(ranks, str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        plan = ranks.broadcast({"error": None, "todo": [s.id for s in todo], "hashes": store.known_hashes(),
                                "fingerprint": backbone_fingerprint(backbone, precision)})
        mine = _encode_share(store, backbone, items, plan, ranks, options)
        results = ranks.gather(mine)  # also the barrier: every process has finished its share
        errors = [f"process {r}: {res['error']}" for r, res in enumerate(results) if res.get("error")]
        if errors:
            raise ZscirError("; ".join(errors) + " (the shards already encoded are kept: rerun to continue)")
        report.encoded = sum(store.adopt_shards(manifest, rank_store(store, r)) for r in range(ranks.world))
        report.corrupt += [tuple(c) for res in results for c in res["corrupt"]]
        report.images_per_s = sum(res["images_per_s"] for res in results)
        report.by_process = [res["encoded"] for res in results]
        store.finish_update(manifest)
        shutil.rmtree(store.root / RANKS_DIR, ignore_errors=True)  # adopted: the main store links every file
    return report


def _encode_share(store, backbone, items, plan, ranks, options: EncodeOptions) -> dict[str, Any]:
    """Encode this process's slice of the plan into its rank store; a summary (or the error) to gather.
    A rank store holds exactly its slice (prune) and is never forced: what it finished is kept."""
    todo = plan["todo"]
    wanted = set(todo[share(len(todo), ranks.rank, ranks.world)])
    mine = [item for item in items if _item_id(item) in wanted]
    try:
        report = rank_store(store, ranks.rank).update(backbone, mine, replace(options, prune=True, force=False),
                                                      known_hashes=plan.get("hashes"), consolidate=False)
    except ZscirError as e:
        return {"error": str(e), "encoded": 0, "corrupt": [], "images_per_s": 0.0}
    return {"error": None, "encoded": report.encoded, "corrupt": [list(c) for c in report.corrupt],
            "images_per_s": report.images_per_s, "seconds": report.seconds}
