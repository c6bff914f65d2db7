"""Write a shapes world to disk, in CIRCO's layout, deterministically by seed.

    WORLD/
      world.json                                   generator version, seed, config, counts
      annotations/{val,test}.json                  CIRCO schema, fine texts (+ "edits", "kinds")
      annotations/{val,test}_coarse.json           the same queries, coarse texts and their ground truth
      annotations/train.json, train_coarse.json    train triplets; images in train_gallery/
      COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   evaluation gallery {"images": [{id, file_name}]}
      COCO2017_unlabeled/unlabeled2017/<file_name>                   its images (PNG)
      train_gallery/image_info.json, train_gallery/images/<file_name>
      unlabeled/images/<file>, unlabeled/captions.jsonl   {"id", "file", "caption", "subject", "attribute"}
      annotations/multiturn.json, multiturn_coarse.json   multi-turn sequences (+ "sequence", "turn"); gallery below
      multiturn_gallery/image_info.json, multiturn_gallery/images/<file_name>
      scenes.jsonl                                 every image's spec: {"id", "split", "role", "background", "objects"}

Everything is derived from the seed through named random streams, and each
image is rendered from (seed, image id): the same seed gives the same bytes.
The world is assembled in ``OUT.partial`` (images written atomically, so a
killed build resumes where it stopped) and renamed to ``OUT`` when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_write_json, atomic_write_text
from zscir.utils.hashing import sha256_bytes
from zscir.utils.jsonl import read_jsonl
from zscir.utils.locks import file_lock
from zscir.utils.paths import cache_dir
from zscir.utils.pools import spawn_pool
from zscir.utils.testpoint import testpoint
from zscir.world.captions import random_caption
from zscir.world.matching import GalleryIndex
from zscir.world.multiturn import sample_sequence
from zscir.world.render import DEFAULT_IMAGE_SIZE, png_bytes, render_image
from zscir.world.spec import MAX_OBJECTS, Scene, sample_scene
from zscir.world.triplets import Triplet, gallery_items, sample_triplet

# 2: coarse moves/adds land on cells empty in the reference
# 2.1: + the multiturn split (own stream, ids after all others): every v2 image and annotation is unchanged
GENERATOR_VERSION = "3"
GALLERY_LIST = Path("COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")
GALLERY_DIR = Path("COCO2017_unlabeled/unlabeled2017")
TRAIN_LIST = Path("train_gallery/image_info.json")
TRAIN_DIR = Path("train_gallery/images")
MULTITURN_LIST = Path("multiturn_gallery/image_info.json")
MULTITURN_DIR = Path("multiturn_gallery/images")
UNLABELED_DIR = Path("unlabeled/images")
CAPTIONS = Path("unlabeled/captions.jsonl")

# named random streams: adding a stream or changing one part never shifts the others
RENDER_CHUNK = 256  # images per job sent to a rendering process

STREAMS = {"eval": 1, "train": 2, "unlabeled": 3, "captions": 4, "distractors": 5, "shuffle": 6, "multiturn": 7}


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    image_size: int = DEFAULT_IMAGE_SIZE
    num_val: int = 500
    num_test: int = 500
    num_train: int = 3000
    num_unlabeled: int = 12000
    distractor_fraction: float = 0.1   # random evaluation-part scenes added to the gallery, per gallery image
    max_objects: int = MAX_OBJECTS
    num_multiturn: int = 200           # multi-turn sequences (2-5 turns each), with their own gallery

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 0:
                raise ZscirError(f"world option {f.name} must be >= 0, got {value}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ZscirError(f"world option max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        if self.image_size < 24:
            raise ZscirError(f"world option image_size must be >= 24 pixels, got {self.image_size}")

    @staticmethod
    def tiny(seed: int = 0) -> "WorldConfig":
        """A world built in seconds, for tests."""
        return WorldConfig(seed=seed, num_val=16, num_test=16, num_train=16, num_unlabeled=40, num_multiturn=6)


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def stream(config: WorldConfig, name: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, STREAMS[name]])


@dataclass
class WorldImage:
    id: int
    scene: Scene
    split: str   # "eval" | "train_gallery" | "unlabeled" | "multiturn"
    role: str
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / file_name(self.id)


class IdCounter:
    def __init__(self, start: int = 1):  # ids start at 1: a 0 id is too easily taken for "missing"
        self.next = start

    def take(self) -> int:
        self.next += 1
        return self.next - 1


# --- plan: every image and annotation, before any pixel is drawn ----------------------------------

def plan_eval(config: WorldConfig, ids: IdCounter):
    rng = stream(config, "eval")
    triplets = [sample_triplet(rng, "eval", config.max_objects) for _ in range(config.num_val + config.num_test)]
    items = []  # (query index or None, role, scene)
    for q, t in enumerate(triplets):
        items += [(q, role, scene) for role, scene in gallery_items(t, rng, "eval")]
    drng = stream(config, "distractors")
    items += [(None, "distractor", sample_scene(drng, "eval", config.max_objects))
              for _ in range(int(round(config.distractor_fraction * len(items))))]
    order = stream(config, "shuffle").permutation(len(items))  # ids carry no hint of roles
    images, reference_of, target_of = [], {}, {}
    for k in order:
        q, role, scene = items[int(k)]
        image = WorldImage(ids.take(), scene, "eval", role, GALLERY_DIR)
        images.append(image)
        if role == "reference":
            reference_of[q] = image.id
        elif role == "target":
            target_of[q] = image.id
    images.sort(key=lambda im: im.id)
    return triplets, images, reference_of, target_of


def plan_train(config: WorldConfig, ids: IdCounter):
    rng = stream(config, "train")
    triplets = [sample_triplet(rng, "train", config.max_objects) for _ in range(config.num_train)]
    images, reference_of, target_of = [], {}, {}
    for q, t in enumerate(triplets):
        ref = WorldImage(ids.take(), t.reference, "train_gallery", "reference", TRAIN_DIR)
        tgt = WorldImage(ids.take(), t.target, "train_gallery", "target", TRAIN_DIR)
        images += [ref, tgt]
        reference_of[q], target_of[q] = ref.id, tgt.id
    return triplets, images, reference_of, target_of


def plan_unlabeled(config: WorldConfig, ids: IdCounter):
    rng, crng = stream(config, "unlabeled"), stream(config, "captions")
    images, rows = [], []
    for _ in range(config.num_unlabeled):
        image = WorldImage(ids.take(), sample_scene(rng, "train", config.max_objects), "unlabeled", "unlabeled", UNLABELED_DIR)
        caption = random_caption(image.scene, crng)
        images.append(image)
        rows.append({"id": image.id, "file": file_name(image.id), **caption.to_json()})
    return images, rows


def plan_multiturn(config: WorldConfig, ids: IdCounter):
    """Sequences of turns (one triplet each) and their gallery; turn k's reference is turn k-1's target image."""
    rng = stream(config, "multiturn")
    sequences = [sample_sequence(rng, "eval", config.max_objects) for _ in range(config.num_multiturn)]
    items = []  # ((sequence, turn) or None, role, scene); turn 0's "target" is the starting scene
    for s, turns in enumerate(sequences):
        items.append(((s, 0), "target", turns[0].reference))
        for k, t in enumerate(turns, 1):
            items += [((s, k), role, scene) for role, scene in gallery_items(t, rng, "eval") if role != "reference"]
    items += [(None, "distractor", sample_scene(rng, "eval", config.max_objects))
              for _ in range(int(round(config.distractor_fraction * len(items))))]
    images, state_image = [], {}
    for k in rng.permutation(len(items)):  # ids carry no hint of roles or turns
        where, role, scene = items[int(k)]
        image = WorldImage(ids.take(), scene, "multiturn", role if where is None else f"{role}_turn{where[1]}",
                           MULTITURN_DIR)
        images.append(image)
        if role == "target":
            state_image[where] = image.id
    images.sort(key=lambda im: im.id)
    triplets, turn_of, reference_of, target_of = [], [], {}, {}
    for s, turns in enumerate(sequences):
        for k, t in enumerate(turns, 1):
            q = len(triplets)
            triplets.append(t)
            turn_of.append((s, k))
            reference_of[q], target_of[q] = state_image[(s, k - 1)], state_image[(s, k)]
    return triplets, turn_of, images, reference_of, target_of


def annotations(triplets: list[Triplet], images: list[WorldImage], reference_of, target_of) -> tuple[list, list]:
    """CIRCO records for fine and coarse texts, ground truth computed over ``images`` from their specs."""
    index = GalleryIndex([im.id for im in images], [im.scene for im in images])
    fine_records, coarse_records = [], []
    for q, t in enumerate(triplets):
        target = target_of[q]
        fine_gt = index.fine_ground_truth(t.reference, t.edits)
        coarse_gt = index.coarse_ground_truth(t.reference, t.coarse)
        if target not in fine_gt or not set(fine_gt) <= set(coarse_gt):
            raise RuntimeError(f"world generator bug: query {q} ground truth is inconsistent")
        base = {"id": q, "reference_img_id": reference_of[q], "target_img_id": target,
                "shared_concept": ", ".join(t.kinds)}
        fine_records.append({**base, "relative_caption": t.fine_text,
                             "gt_img_ids": [target] + [i for i in fine_gt if i != target], "edits": t.edits})
        coarse_records.append({**base, "relative_caption": t.coarse_text,
                               "gt_img_ids": [target] + [i for i in coarse_gt if i != target], "edits": t.coarse})
    return fine_records, coarse_records


# --- render ------------------------------------------------------------------------------------------

def _render_chunk(args) -> int:
    root, seed, size, jobs = args
    for image_id, scene_json, rel in jobs:
        path = Path(root) / rel
        if not path.exists():  # resuming: files appear by rename, an existing one is complete
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(png_bytes(render_image(Scene.from_json(scene_json), seed, image_id, size)))
            os.replace(tmp, path)  # no fsync per image: the whole folder is renamed into place at the end
    return len(jobs)


def render_all(root: Path, images: list[WorldImage], config: WorldConfig, workers: int, progress: bool = True) -> None:
    for folder in {im.folder for im in images}:
        (root / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(im.id, im.scene.to_json(), str(im.path)) for im in images]
    chunks = [(str(root), config.seed, config.image_size, jobs[i:i + RENDER_CHUNK]) for i in range(0, len(jobs), RENDER_CHUNK)]
    bar = tqdm(total=len(jobs), desc="rendering", unit="img", disable=not progress)
    if workers <= 1:
        for chunk in chunks:
            bar.update(_render_chunk(chunk))
    else:
        # workers ignore Ctrl-C from their start: the main process alone stops the pool; rerun resumes
        with spawn_pool(workers) as pool:
            for n in pool.imap_unordered(_render_chunk, chunks):
                bar.update(n)
                testpoint("world.render")  # tests: Ctrl-C after the n-th chunk (zscir.utils.testpoint)
    bar.close()


# --- the whole world ---------------------------------------------------------------------------------

def world_record(config: WorldConfig, counts: dict) -> dict:
    return {"generator": "zscir-shapes-world", "generator_version": GENERATOR_VERSION, "seed": config.seed,
            "config": asdict(config), "counts": counts}


def is_complete(out: Path, config: WorldConfig) -> bool:
    try:
        record = json.loads((out / "world.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("generator_version") == GENERATOR_VERSION and record.get("config") == asdict(config)


def generate_world(out: str | os.PathLike, config: WorldConfig = WorldConfig(), workers: int = 2,
                   force: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Build the world ``config`` describes in ``out``; return ``out``. An up-to-date world is kept as is."""
    out = Path(out)
    if is_complete(out, config) and not force:
        log(f"world {out} is already built (generator v{GENERATOR_VERSION}, seed {config.seed})")
        return out
    if out.exists() and any(out.iterdir()) and not force:
        raise ZscirError(f"--out {out} exists and holds something else than this world "
                         f"(seed {config.seed}, generator v{GENERATOR_VERSION}): pass --force to replace it, or choose another folder")
    start = time.time()
    partial = out.with_name(out.name + ".partial")
    stamp = partial / ".config.json"
    if partial.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != world_record(config, {})):
        shutil.rmtree(partial)  # left by a build of another world
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, world_record(config, {}))

    ids = IdCounter()
    eval_triplets, eval_images, eval_refs, eval_tgts = plan_eval(config, ids)
    train_triplets, train_images, train_refs, train_tgts = plan_train(config, ids)
    unlabeled_images, caption_rows = plan_unlabeled(config, ids)
    mt_triplets, mt_turns, mt_images, mt_refs, mt_tgts = plan_multiturn(config, ids)
    all_images = eval_images + train_images + unlabeled_images + mt_images
    render_all(partial, all_images, config, workers, progress)

    fine, coarse = annotations(eval_triplets, eval_images, eval_refs, eval_tgts)
    n_val = config.num_val
    splits = {"val": fine[:n_val], "test": fine[n_val:], "val_coarse": coarse[:n_val], "test_coarse": coarse[n_val:]}
    for name in ("test", "test_coarse"):  # CIRCO's rule: a record's id is its position in its file
        splits[name] = [dict(r, id=i) for i, r in enumerate(splits[name])]
    splits["train"], splits["train_coarse"] = annotations(train_triplets, train_images, train_refs, train_tgts)
    if mt_triplets:
        mt_fine, mt_coarse = annotations(mt_triplets, mt_images, mt_refs, mt_tgts)
        for records in (mt_fine, mt_coarse):
            for r, (seq, turn) in zip(records, mt_turns):
                r.update(sequence=seq, turn=turn)
        splits["multiturn"], splits["multiturn_coarse"] = mt_fine, mt_coarse
    for name, records in splits.items():
        atomic_write_json(partial / "annotations" / f"{name}.json", records)
    atomic_write_json(partial / GALLERY_LIST, {"images": [{"id": im.id, "file_name": file_name(im.id)} for im in eval_images]})
    atomic_write_json(partial / TRAIN_LIST, {"images": [{"id": im.id, "file_name": file_name(im.id)} for im in train_images]})
    if mt_images:
        atomic_write_json(partial / MULTITURN_LIST, {"images": [{"id": im.id, "file_name": file_name(im.id)}
                                                                for im in mt_images]})
    atomic_write_text(partial / CAPTIONS, "".join(json.dumps(r) + "\n" for r in caption_rows))
    atomic_write_text(partial / "scenes.jsonl", "".join(
        json.dumps({"id": im.id, "split": im.split, "role": im.role, **im.scene.to_json()}) + "\n" for im in all_images))
    counts = {"eval_gallery": len(eval_images), "val": n_val, "test": config.num_test,
              "train_triplets": len(train_triplets), "train_gallery": len(train_images),
              "unlabeled": len(unlabeled_images), "multiturn_sequences": config.num_multiturn,
              "multiturn_turns": len(mt_triplets), "multiturn_gallery": len(mt_images), "images": len(all_images)}
    atomic_write_json(partial / "world.json", world_record(config, counts))
    stamp.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log(f"world written to {out} in {time.time() - start:.1f} s: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out


def default_world_dir(seed: int = 0) -> Path:
    return cache_dir() / "worlds" / f"shapes-v{GENERATOR_VERSION}-seed{seed}"


def default_world(seed: int = 0, progress: bool = True, log: Optional[Callable[[str], None]] = None,
                  config: Optional[WorldConfig] = None) -> Path:
    """The default world, built into the cache directory on first use (about a minute) and reused afterwards.

    ``config`` replaces the default sizes (tests build a tiny world this way, under its own folder name).
    """
    config = config or WorldConfig(seed=seed)
    out = default_world_dir(seed) if config == WorldConfig(seed=seed) else default_world_dir(seed).with_name(
        f"shapes-v{GENERATOR_VERSION}-custom-{sha256_bytes(json.dumps(asdict(config), sort_keys=True).encode())[:12]}")
    if is_complete(out, config):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):  # two processes asking at once: one builds, the other waits
        if not is_complete(out, config):
            say = log or (lambda msg: print(msg, flush=True))
            say(f"building the default shapes world into {out} (first use; reused afterwards)")
            generate_world(out, config, force=True, progress=progress, log=say)
    return out


def read_scenes(world: str | os.PathLike) -> dict[int, dict]:
    """``scenes.jsonl`` of a world: image id -> row (split, role, background, objects)."""
    path = Path(world) / "scenes.jsonl"
    if not path.is_file():
        raise ZscirError(f"shapes world {world}: expected {path}")
    rows = {}
    for _, row in read_jsonl(path):
        rows[int(row["id"])] = row
    return rows
