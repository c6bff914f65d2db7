"""Bad input ends in one line (exit 1 or 2, no traceback) and never damages the user's files.

Most cases run the CLI in-process through ``zscir.cli.main`` (an exception it does not
turn into a line would fail the test as that exception); the cases that need a real
process (Ctrl-C, start-up imports) run ``python -m zscir.cli`` with this checkout first on
the path. eval/bad_input_matrix.py runs the whole matrix as subprocesses.
"""

import errno
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from zscir.cli import main
from zscir.errors import ZscirError
from zscir.utils.paths import repo_checkpoints_dir
from zscir.utils.testpoint import interruptible, pause_env, wait_paused

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SHIPPED = repo_checkpoints_dir()


def run_cli(args, capsys):
    """(exit code, the one error line); fails if the command prints more than one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and not line.lstrip().startswith(("evaluating", "queries", "caption ["))]
    assert len(err) == 1, err
    return exit_info.value.code, err[0]


def assert_one_line(args, capsys, *needles, code=None):
    rc, line = run_cli(args, capsys)
    assert rc in ((1, 2) if code is None else (code,)), (rc, line)
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture
def files(tmp_path):
    d = tmp_path
    (d / "notes.txt").write_text("my notes\nthe last line has no newline")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(d / "photo.jpg", "JPEG")
    os.makedirs(d / "imgs")
    for i in range(3):
        Image.new("RGB", (20 + i, 20), (60 * i, 80, 90)).save(d / "imgs" / f"a{i}.png")
    return d


# ------------------------------------------------------------------ option values, before any work

BAD_OPTIONS = [
    (["pretrain", "--epochs", "0"], "--epochs"),
    (["pretrain", "--max-steps", "0"], "--max-steps"),
    (["pretrain", "--batch-size", "-8"], "--batch-size"),
    (["pretrain", "--lr", "-1"], "--lr"),
    (["pretrain", "--lr", "nan"], "--lr"),
    (["pretrain", "--dropout", "2"], "--dropout"),
    (["train-supervised", "--temperature", "0"], "--temperature"),
    (["train-supervised", "--lr", "inf"], "--lr"),
    (["world", "generate", "--workers", "-2"], "--workers"),
    (["world", "train-backbone", "--steps", "0"], "--steps"),
    (["eval", "shapes", "--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize("args,option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_values_are_refused_before_any_work(args, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line(args, capsys, f"'{option}'", code=2)
    assert "range" in line or "expected a finite number" in line, line
    assert list(tmp_path.iterdir()) == []  # no run folder, no world, nothing written


def test_finite_float_type_bounds():
    import click

    from zscir.utils.options import DROPOUT, POSITIVE_FLOAT

    assert POSITIVE_FLOAT.convert("1e-4", None, None) == 1e-4 and DROPOUT.convert("0", None, None) == 0.0
    for bad in ("0", "-1", "nan", "inf", "-inf", "x"):
        with pytest.raises(click.BadParameter):
            POSITIVE_FLOAT.convert(bad, None, None)
    for bad in ("1", "1.5", "-0.1", "nan"):
        with pytest.raises(click.BadParameter):
            DROPOUT.convert(bad, None, None)


# ------------------------------------------------------------------ weights files

def _weights_fixtures(d: Path) -> dict[str, Path]:
    shipped = (SHIPPED / "shapes_clip.safetensors").read_bytes()
    out = {"corrupt": d / "corrupt.safetensors", "empty": d / "empty.safetensors",
           "truncated": d / "truncated.safetensors", "pickle-bytes": d / "pickle.safetensors",
           "planted-pt": d / "planted.pt", "planted-pkl": d / "planted.pkl", "garbage-bin": d / "garbage.bin"}
    out["corrupt"].write_bytes(bytes(range(256)) * 16)
    out["empty"].write_bytes(b"")
    out["truncated"].write_bytes(shipped[: len(shipped) // 2])
    torch.save({"w": torch.zeros(2)}, out["pickle-bytes"])

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PLANTED'}",))

    torch.save({"w": Planted()}, out["planted-pt"])
    out["planted-pkl"].write_bytes(pickle.dumps({"w": Planted()}, protocol=4))
    out["garbage-bin"].write_bytes(b"\x00\x01garbage" * 100)
    return out


def test_unreadable_weights_as_pretrained_are_one_line_and_never_unpickled(tmp_path, capsys):
    for kind, path in _weights_fixtures(tmp_path).items():
        line = assert_one_line(["backbone", "--clip", "zscir-shapes-vit", "--pretrained", path], capsys,
                               "--pretrained", str(path), code=1)
        assert ("empty" in line) == (kind == "empty"), line
    assert not (tmp_path / "PLANTED").exists()


def test_weights_of_another_architecture_are_one_line(tmp_path, capsys, tiny_backbone):
    other = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(other))
    assert_one_line(["backbone", "--clip", "zscir-shapes-vit", "--pretrained", other], capsys, str(other),
                    "architecture", code=1)


def _fti_copy(d: Path, name: str, weights: bytes, reseal: bool) -> Path:
    from zscir.utils.hashing import sha256_file

    sidecar = json.loads((SHIPPED / "shapes_fti.json").read_text())
    (d / f"{name}.safetensors").write_bytes(weights)
    if reseal:  # a sidecar that matches the damaged bytes: the damage itself must be reported
        sidecar["weights_sha256"] = sha256_file(d / f"{name}.safetensors")
    (d / f"{name}.json").write_text(json.dumps(sidecar))
    return d / f"{name}.safetensors"


def test_damaged_model_checkpoints_are_one_line_errors(tmp_path):
    from zscir.models.query import load_query_encoder

    good = (SHIPPED / "shapes_fti.safetensors").read_bytes()
    pickled = (tmp_path / "p.pt")
    torch.save({"w": torch.zeros(2)}, pickled)
    cases = {"empty": b"", "truncated": good[: len(good) // 2], "pickle": pickled.read_bytes(),
             "header": b"\xff" * 8 + good[8:]}
    for name, data in cases.items():
        for reseal in (False, True):
            path = _fti_copy(tmp_path, f"{name}-{reseal}", data, reseal)
            with pytest.raises(ZscirError, match="sha256 differs" if not reseal else "not a readable safetensors"):
                load_query_encoder(str(path))
    (tmp_path / "bin.safetensors").write_bytes(good)
    (tmp_path / "bin.json").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(ZscirError, match="bin.json is not valid JSON"):
        load_query_encoder(str(tmp_path / "bin.safetensors"))


def test_sidecar_sha256_is_checked_on_the_first_load(tmp_path):
    """A damaged header under an intact sidecar: today's first load (verify=False) hit the safetensors parser."""
    from zscir.models.query import load_query_encoder

    good = (SHIPPED / "shapes_fti.safetensors").read_bytes()
    path = _fti_copy(tmp_path, "m", b"\x00" * 8 + good[8:], reseal=False)
    with pytest.raises(ZscirError, match="sha256 differs"):
        load_query_encoder(str(path))


def test_a_network_of_another_architecture_as_model_is_one_line(tmp_path, capsys, monkeypatch):
    """Even on a fresh cache: the model is checked before the default world would be built."""
    from zscir.utils.hashing import sha256_file

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "empty-cache"))
    path = _fti_copy(tmp_path, "other", (SHIPPED / "shapes_single.safetensors").read_bytes(), reseal=True)
    assert sha256_file(path) == json.loads(path.with_suffix(".json").read_text())["weights_sha256"]
    assert_one_line(["eval", "shapes", "--split", "val", "--no-progress", "--out", tmp_path / "ev", "--model", path],
                    capsys, str(path), "another architecture", code=1)
    assert not (tmp_path / "empty-cache" / "worlds").exists()


# ------------------------------------------------------------------ output folders and files

@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only folder: a read-only tmpfs as root (permissions do not stop root), else chmod 555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("args", [
    ["eval", "shapes", "--out", "{ro}/run"], ["pretrain", "--out", "{ro}/run"], ["train-supervised", "--out", "{ro}/r"],
    ["world", "generate", "--tiny", "--out", "{ro}/w"], ["world", "train-backbone", "--out", "{ro}/c.safetensors"],
    ["caption", "--images", "{imgs}", "--cache", "{ro}/c.jsonl"], ["caption", "--images", "{imgs}", "--out", "{ro}/o"]],
    ids=lambda a: " ".join(a[:2]) + " " + a[-2])
def test_a_read_only_output_folder_is_refused_before_any_work(args, readonly_dir, files, capsys):
    args = [a.format(ro=readonly_dir, imgs=files / "imgs") for a in args]
    assert_one_line(args, capsys, "not writable", str(readonly_dir), code=2)


def test_a_full_disk_is_one_line_naming_the_file(files, monkeypatch, capsys):
    """A full disk injected as the OSError ``write`` raises (the matrix uses a real full tmpfs as root)."""
    import zscir.utils.atomic as atomic

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)
    captions = files / "caps.jsonl"
    captions.write_text("".join(json.dumps({"id": f"a{i}.png", "caption": "a shape"}) + "\n" for i in range(3)))
    out = files / "out" / "captions.jsonl"
    assert_one_line(["caption", "--images", files / "imgs", "--captions", captions, "--quiet", "--out", out], capsys,
                    str(out), "no space left", code=1)
    assert not out.exists() and not [p for p in out.parent.iterdir()]  # no half-written file, no temp file


def test_os_errors_become_one_line_naming_the_file():
    from zscir.errors import user_message

    assert user_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x/run")).startswith("/mnt/x/run: ")
    assert "read-only" in user_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert "not a folder" in user_message(OSError(errno.ENOTDIR, "Not a directory", "/a/file/run"))
    assert "no space" in user_message(OSError(errno.ENOSPC, "No space left on device", "/d/f"))
    assert user_message(ValueError("a bug")) is None  # not the user's: the traceback stays


@pytest.mark.parametrize("args", [["eval", "shapes", "--out", "{f}"], ["pretrain", "--out", "{f}"],
                                  ["pretrain", "--out", "{f}/below"], ["world", "generate", "--out", "{f}"],
                                  ["world", "train-backbone", "--run-dir", "{f}"]],
                         ids=lambda a: " ".join(a))
def test_out_naming_a_file_is_one_line_and_leaves_the_file(args, files, capsys):
    notes = files / "notes.txt"
    before = notes.read_bytes()
    assert_one_line([a.format(f=notes) for a in args], capsys, str(notes), code=2)
    assert notes.read_bytes() == before


# ------------------------------------------------------------------ runs

def _fake_run(folder: Path, kind: str, section: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({kind: section}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / i}) + "\n" for i in range(1, 4)))
    return folder


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", "pretrain", {"method": "fti", "network_config": None})
    log = (run / "log.jsonl").read_bytes()
    assert_one_line(["pretrain", "--out", run], capsys, "--resume", "--overwrite", code=1)
    assert_one_line(["pretrain", "--out", run, "--resume", "--method", "single"], capsys, "--method fti", code=1)
    assert_one_line(["pretrain", "--out", run, "--resume", "--network-config", "fti4cir-tiny"], capsys,
                    "--network-config fti4cir", code=1)
    assert_one_line(["pretrain", "--out", run, "--resume", "--overwrite"], capsys, "exclude", code=1)
    assert (run / "log.jsonl").read_bytes() == log

    sup = _fake_run(tmp_path / "sup", "supervised", {"head": "finecir", "dataset": "shapes", "texts": "fine"})
    assert_one_line(["train-supervised", "--out", sup, "--resume", "--head", "combiner"], capsys, "--head finecir")
    assert_one_line(["train-supervised", "--out", sup], capsys, "--resume")
    assert_one_line(["pretrain", "--out", sup, "--resume"], capsys, "not the config of a zscir pretrain run")
    (sup / "config.json").write_text('{"supervised": ')
    assert_one_line(["train-supervised", "--out", sup, "--resume"], capsys, "config.json")


def test_overwrite_removes_the_runs_files_only_and_a_foreign_folder_is_refused(tmp_path, files, capsys):
    from zscir.training.state import check_run_dir

    run = _fake_run(tmp_path / "run", "pretrain", {"method": "fti"})
    (run / "model.safetensors").write_bytes(b"x")
    (run / "my-notes.txt").write_text("keep me")
    assert check_run_dir(run, resume=False, overwrite=True, kind="pretrain", expect={}) == "overwrite"
    assert sorted(p.name for p in run.iterdir()) == ["my-notes.txt"]
    assert check_run_dir(tmp_path / "new", resume=False, overwrite=False, kind="pretrain", expect={}) == "new"
    assert_one_line(["pretrain", "--out", files / "imgs", "--overwrite"], capsys, "holds no zscir run", code=1)
    assert len(list((files / "imgs").iterdir())) == 3


def test_resume_trims_the_log_to_the_saved_state(tmp_path):
    from zscir.training.state import trim_log

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 8)) + '{"step": 8, "lo')
    trim_log(log, 5)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_train_backbone_writes_under_runs_by_default_never_the_shipped_checkpoint():
    from zscir.world.cli import train_backbone_command

    defaults = {p.name: p.default for p in train_backbone_command.params}
    assert Path(defaults["out"]).parts[0] == "runs" and Path(defaults["run_dir"]).parts[0] == "runs"
    assert "checkpoints" not in Path(defaults["out"]).parts


# ------------------------------------------------------------------ foreign files where zscir writes or reads

def test_caption_refuses_a_foreign_cache_file_and_leaves_it_untouched(files, capsys):
    for name in ("notes.txt", "photo.jpg"):
        before = (files / name).read_bytes()
        assert_one_line(["caption", "--images", files / "imgs", "--cache", files / name], capsys,
                        f"--cache {files / name}", "not a zscir caption cache", code=1)
        assert (files / name).read_bytes() == before


def test_a_cache_written_before_the_header_is_still_read_and_extended(tmp_path):
    from zscir.data.caption_cache import CaptionCache, captioner_key

    path, key = tmp_path / "old.jsonl", captioner_key("cap-A")
    path.write_text(json.dumps({"captioner": "cap-A", "c": key}) + "\n"
                    + json.dumps({"h": "h1", "c": key, "id": "a.png", "caption": "a cat"}) + "\n")
    with CaptionCache(path, "cap-A") as cache:
        assert cache.get("h1") == "a cat"
        cache.add_many([("h2", "b.png", "a dog")])
    with CaptionCache(path, "cap-A") as cache:
        assert cache.entries == {"h1": "a cat", "h2": "a dog"}
    assert len(path.read_text().splitlines()) == 3  # appended, nothing rewritten


def test_a_binary_queries_file_is_one_line(files, capsys):
    assert_one_line(["retrieve", "--queries", files / "photo.jpg"], capsys, str(files / "photo.jpg"), "UTF-8", code=1)


# ------------------------------------------------------------------ non-UTF-8 file names in caption

def test_caption_survives_file_names_that_are_not_utf8_and_resumes_from_the_cache(tmp_path):
    from zscir.data.caption_cache import caption_images
    from zscir.generation.base import Captioner
    from zscir.data.cli import _write_out
    from zscir.data.keys import fs_name
    from zscir.data.sources import open_image_source

    class Widths(Captioner):
        name, identity = "widths", "widths-v1"
        calls = 0

        def caption(self, items, images):
            Widths.calls += len(items)
            return [f"width {im.size[0]}" for im in images]

    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [b"plain.png", b"caf\xe9-latin1.png", b"bad\xff\xfe.png"]
    for i, name in enumerate(names):
        Image.new("RGB", (10 + i, 8)).save(os.path.join(os.fsencode(folder), name), "PNG")
    cache = tmp_path / "cache.jsonl"
    first = caption_images(open_image_source(str(folder)), Widths(), cache, batch_size=2, progress=False)
    # ids are bytes-safe (\xNN for a byte that is not UTF-8, as zscir index writes them); fs_name maps them back
    assert sorted(os.fsencode(fs_name(i)) for i in first) == sorted(names) and Widths.calls == 3
    cache.read_bytes().decode("utf-8")  # every line stays UTF-8
    again = caption_images(open_image_source(str(folder)), Widths(), cache, batch_size=2, progress=False)
    assert dict(again) == dict(first) and again.from_cache == 3 and Widths.calls == 3
    _write_out(again, str(tmp_path / "out.jsonl"), "none")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().decode("utf-8").splitlines()]
    assert {os.fsencode(fs_name(r["id"])): r["caption"] for r in rows} == \
        {os.fsencode(fs_name(k)): v for k, v in first.items()}


# ------------------------------------------------------------------ Ctrl-C in world generate

def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.multiprocess
def test_ctrl_c_in_world_generate_exits_130_without_traceback_and_the_rerun_completes(tmp_path):
    args = ["--num-unlabeled", "1000", "--num-val", "10", "--num-test", "10", "--num-train", "10", "--workers", "2"]
    cmd = [sys.executable, "-m", "zscir.cli", "world", "generate"]
    out = tmp_path / "w"
    partial = tmp_path / "w.partial"
    # the main process pauses after its n-th rendered chunk (256 images; the world has 5) until the signal
    marker, chunks = tmp_path / "paused", random.Random(7).randint(1, 3)
    proc = subprocess.Popen(cmd + ["--out", str(out)] + args, env={**ENV, **pause_env(marker, {"world.render": chunks})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=interruptible)
    wait_paused(proc, marker)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    stderr = proc.communicate(timeout=600)[1].decode()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("interrupted")]
    assert partial.is_dir() and not out.exists()
    kept = len(list(partial.rglob("*.png")))

    subprocess.run(cmd + ["--out", str(out)] + args, env=ENV, check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(tmp_path / "straight")] + args, env=ENV, check=True, capture_output=True)
    assert kept >= 100 and _tree_digest(out) == _tree_digest(tmp_path / "straight")


# ------------------------------------------------------------------ start-up

def test_zscir_help_imports_no_command_and_lists_their_own_help():
    code = ("import sys\nfrom zscir.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    from zscir.cli import COMMANDS, SHORT_HELP, LazyGroup, cli

    assert set(SHORT_HELP) == set(COMMANDS)
    for name in COMMANDS:
        assert SHORT_HELP[name] == LazyGroup.get_command(cli, None, name).get_short_help_str(10 ** 6), name


def test_subcommand_modules_do_not_import_torch_for_their_help():
    code = ("import sys\nimport zscir.training.pretrain_cli, zscir.training.supervised_cli, zscir.world.cli, "
            "zscir.data.cli, zscir.evaluation.cli\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from zscir.training import pretrain_cli, pretrain_data, supervised, supervised_cli

    assert pretrain_cli.FEATURE_CACHE_MODES == pretrain_data.FEATURE_CACHE_MODES
    assert supervised_cli.DATASETS == tuple(supervised.DATASETS)


def test_damaged_json_of_zscir_files_names_the_file_and_the_fix(tmp_path):
    """A JSONDecodeError escaping any reader is named by the file it was reading, with the hint that fixes it."""
    from zscir.errors import user_message

    def read(path):
        return json.loads(Path(path).read_text())

    index = tmp_path / "gallery-index" / "index.json"
    index.parent.mkdir()
    index.write_text('{"rows": [1, 2')
    sidecar = tmp_path / "model.json"
    (tmp_path / "model.safetensors").write_bytes(b"")
    sidecar.write_text("{")
    other = tmp_path / "notes.json"
    other.write_text("[1,")
    messages = {}
    for path in (index, sidecar, other):
        with pytest.raises(json.JSONDecodeError) as info:
            read(path)
        messages[path] = user_message(info.value)
    assert messages[index].startswith(f"{index}: not valid JSON") and "zscir index --force" in messages[index]
    assert messages[sidecar].startswith(f"{sidecar}: not valid JSON") and "save the checkpoint again" in messages[sidecar]
    assert messages[other].startswith(f"{other}: not valid JSON") and "\n" not in messages[other]
