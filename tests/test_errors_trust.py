"""Issue 27's misleading lines: a refused write names its file and cause, errors start their own line, a resume
with other settings is refused, explain lists words only, and a bad --device is one line.

Each runs the CLI in-process through ``zscir.cli.main`` (as tests/test_bad_input.py) or the library function
the CLI calls. Full and read-only disks are real tmpfs mounts where this process may mount (root), else
skipped; the same failures are also injected as the errors the writers raise, which runs everywhere.
"""

import errno
import json
import os
import subprocess
from pathlib import Path

import click
import pytest
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

import zscir.cli as cli_module
from zscir.checkpoint import save_checkpoint
from zscir.cli import main
from zscir.errors import WriteFailedError, ZscirError, user_message
from zscir.utils.atomic import atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(args, capsys):
    """(exit code, stderr) of ``zscir ARGS`` run in-process; the error must be one line starting ``error:``."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return exit_info.value.code, lines[0]


def _mount(where: Path, options: str) -> None:
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                           capture_output=True).returncode:
        pytest.skip("a real full or read-only disk needs root and permission to mount a tmpfs")


@pytest.fixture
def full_dir(tmp_path):
    """A 64 KiB tmpfs with 4 KiB left."""
    full = tmp_path / "full"
    _mount(full, "size=64k")
    (full / "filler").write_bytes(b"\0" * (60 * 1024))
    yield full
    subprocess.run(["umount", "--lazy", str(full)], check=True)  # lazy: a failed writer's file may still be open


@pytest.fixture
def readonly_dir(tmp_path):
    ro = tmp_path / "ro"
    _mount(ro, "size=64k,ro")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


# ------------------------------------------------------------------ a refused write: its file and its cause

def _assert_names(exc_info, path: Path, cause: str):
    message = user_message(exc_info.value)
    assert isinstance(exc_info.value, WriteFailedError), repr(exc_info.value)
    assert message.startswith(f"{path}: cannot write it: {cause}"), message
    assert ".tmp" not in message and "safetensors file" not in message and "\n" not in message


def test_a_full_disk_names_the_file_being_written_whatever_the_writer(full_dir):
    for write, path in [(lambda p: atomic_write_text(p, "x" * 100_000), full_dir / "page.html"),
                        (lambda p: save_checkpoint(p.with_suffix(""), {"w": torch.zeros(50_000)}, {}),
                         full_dir / "model.safetensors"),  # safetensors' own "I/O error ... (os error 28)"
                        (lambda p: _torch_save(p), full_dir / "state.pt")]:  # torch: "unexpected pos ..."
        with pytest.raises(ZscirError) as e:
            write(path)
        _assert_names(e, path, "no space left on device (ENOSPC)")
        assert sorted(p.name for p in full_dir.iterdir()) == ["filler"]  # no half file, no temp file


def _torch_save(path):
    with atomic_path(path) as tmp:
        torch.save({"w": torch.zeros(50_000)}, tmp)


def test_a_read_only_disk_names_the_file_not_its_temporary_file(readonly_dir):
    page = readonly_dir / "results.html"  # `retrieve --html` writes through atomic_write_text
    with pytest.raises(ZscirError) as e:
        atomic_write_text(page, "<html></html>")
    _assert_names(e, page, "read-only file system (EROFS)")


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device (ENOSPC)"),
                                         (errno.EROFS, "read-only file system (EROFS)"),
                                         (errno.EACCES, "permission denied (EACCES)")])
def test_injected_write_failures_name_the_destination(tmp_path, monkeypatch, code, cause):
    """The same without a mount: each place a write can fail (create, write, rename) raises the OSError."""
    import zscir.utils.atomic as atomic

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    out = tmp_path / "out" / "config.json"
    for target in ("replace", "chmod"):
        with monkeypatch.context() as m:
            m.setattr(atomic.os, target, refuse)
            with pytest.raises(ZscirError) as e:
                atomic_write_text(out, "{}")
        _assert_names(e, out, cause)
    with monkeypatch.context() as m:  # mkstemp names its temporary file in the OSError: reported as the file
        m.setattr(atomic.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(
            OSError(code, os.strerror(code), str(out.parent / ".config.json.abc.tmp"))))
        with pytest.raises(ZscirError) as e:
            atomic_write_text(out, "{}")
    _assert_names(e, out, cause)
    assert list(out.parent.iterdir()) == []


def test_a_full_disk_under_safetensors_is_no_damaged_file(tmp_path, monkeypatch):
    """What pretrain and import-checkpoint saw: safetensors' serialising error read as "not a readable
    safetensors file ... download it again", naming another file or none."""
    import zscir.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(ZscirError) as e:
        save_checkpoint(tmp_path / "run" / "train_state", {"w": torch.zeros(3)}, {"kind": "train-state"})
    _assert_names(e, tmp_path / "run" / "train_state.safetensors", "no space left on device (ENOSPC)")


def test_an_os_error_of_a_plain_write_names_its_file_and_cause(tmp_path):
    path = tmp_path / "log.jsonl"

    def append(log):
        log.write("{}\n")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk makes write() fail

    with open(path, "a") as log:
        with pytest.raises(OSError) as e:
            append(log)
    assert user_message(e.value) == f"{path}: no space left on device (ENOSPC): free some space or write it to " \
                                    f"another disk"
    assert "read-only file system (EROFS)" in user_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))


def test_a_reading_error_inside_an_atomic_write_is_not_called_a_write_failure(tmp_path):
    """An input the caller reads inside the ``with`` (another file) keeps its own error."""
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "out.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.jpg"))


# ------------------------------------------------------------------ errors start their own line

@click.command("boom")
def boom():
    bar = tqdm(total=10, desc="working", file=None)
    bar.update(3)
    raise ZscirError("something/at/fault.json: the field 'x' is missing")


def test_an_error_after_an_unfinished_progress_bar_starts_its_own_line(monkeypatch, capsys):
    monkeypatch.setitem(cli_module.COMMANDS, "boom", f"{__name__}:boom")
    with pytest.raises(SystemExit) as e:
        main(["boom"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert "working" in err and "\nerror: something/at/fault.json: the field 'x' is missing\n" in err, repr(err)
    assert not [bar for bar in getattr(tqdm, "_instances", ()) if not bar.disable]  # the bar was closed


# ------------------------------------------------------------------ pretrain --resume with other settings

def _run(tmp_path, **settings):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"pretrain": {"method": "fti", "network_config": None, "epochs": 2,
                                                              "batch_size": 8, "lr": 0.001, "seed": 0, **settings}}))
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return run


def test_resume_with_another_batch_size_is_refused_naming_each_option(tmp_path, capsys):
    run = _run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    missing = ["--images", tmp_path / "no-such-folder"]  # checked later: a resume not refused fails fast on it
    code, line = one_error_line(["pretrain", "--out", run, "--resume", "--batch-size", "16", "--lr", "0.001",
                                 "--epochs", "5", *missing], capsys)
    assert code == 1
    assert "--batch-size 8 -> 16" in line and str(run) in line
    assert "--epochs 2" not in line and "--lr" not in line.split("(only")[0]  # may change / unchanged
    assert "--epochs" in line.split("(only")[1]  # says which options may change
    code, line = one_error_line(["pretrain", "--out", run, "--resume", "--batch-size", "16", "--lr", "0.01",
                                 "--seed", "3", *missing], capsys)
    assert "--batch-size 8 -> 16" in line and "--lr 0.001 -> 0.01" in line and "--seed 0 -> 3" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


def test_resume_with_the_same_settings_and_a_longer_run_passes_the_check(tmp_path):
    from zscir.training.pretrain import PretrainConfig, check_resume_settings
    from zscir.training.state import check_run_dir

    run = _run(tmp_path)
    same = {"epochs": 9, "batch_size": 8, "lr": 0.001, "seed": 0, "max_steps": 40, "dropout": None}
    assert check_run_dir(run, True, False, "pretrain", expect={"method": "fti"}, settings=same) == "resume"
    # the library's own guard (train() on resume): a config of another batch size is refused there too
    check_resume_settings(run, PretrainConfig(out=str(run), epochs=9, batch_size=8, lr=0.001))
    with pytest.raises(ZscirError, match=r"--batch-size 8 -> 32.*--save-every"):
        check_resume_settings(run, PretrainConfig(out=str(run), epochs=9, batch_size=32, lr=0.001))


# ------------------------------------------------------------------ explain lists words only

def test_explain_lists_no_broken_byte_tokens_with_the_world_clip():
    from zscir.backbone import load_backbone
    from zscir.models.explain import nearest_words

    bb = load_backbone("zscir-shapes-vit", str(ROOT / "checkpoints" / "shapes_clip.safetensors"))
    tok, table = bb.tokenizer, bb.model.token_embedding.weight.detach()
    broken = [i for i in range(300) if "\ufffd" in tok.decode([i])]
    assert broken, "the world CLIP's BPE has byte tokens that decode to no character alone"
    words = nearest_words(bb, table[broken[:3]] * 2.0, k=5)  # pseudo-words sitting on broken tokens
    for row in words:
        assert all(w["word"] and w["word"].isprintable() and "\ufffd" not in w["word"] for w in row), row
        assert not {w["token_id"] for w in row} & set(broken)
    cat = tok.encode("circle")[0]
    assert nearest_words(bb, table[[cat]], k=1)[0][0]["word"] == "circle"  # words stay found


# ------------------------------------------------------------------ caption --device: one line (data/cli.py)

DEVICE_CHECKED = "check_device" in (ROOT / "zscir" / "data" / "cli.py").read_text()


@pytest.mark.skipif(not DEVICE_CHECKED, reason="runs once zscir/data/cli.py checks --device with check_device "
                    "(branch h8-gen owns that file)")
def test_caption_with_a_bad_or_missing_device_is_one_line(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(tmp_path / "imgs" / "a.png")
    code, line = one_error_line(["caption", "--images", tmp_path / "imgs", "--device", "banana"], capsys)
    assert code == 1 and "--device banana: expected cpu, cuda, cuda:N or mps" in line
    if not torch.cuda.is_available():
        code, line = one_error_line(["caption", "--images", tmp_path / "imgs", "--device", "cuda"], capsys)
        assert code == 1 and "--device cuda: no CUDA device available" in line


def test_a_full_disk_under_the_generation_cache_names_the_cache_file(tmp_path):
    """`caption --cache` / `edit --cache` on a full disk: the line names the cache file and the cause."""
    from zscir.errors import user_message
    from zscir.generation.cache import GenerationCache

    cache = GenerationCache(tmp_path / "captions.jsonl", "test-captioner:1")
    real = cache._file

    class FullDisk:
        def __getattr__(self, name):
            return getattr(real, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    cache._file = FullDisk()
    with pytest.raises(OSError) as e:
        cache.add_many([("h1", "a.png", "a red circle")])
    line = user_message(e.value)
    assert str(tmp_path / "captions.jsonl") in line and "no space left on device (ENOSPC)" in line
    cache._file = real
    assert cache.outputs("h1") is None  # nothing half-recorded


def test_a_folder_given_as_ref_or_queries_is_called_a_folder(tmp_path, capsys):
    """Issue 27: a folder given to --ref / --queries was reported as "does not exist"."""
    code, line = one_error_line(["retrieve", "--ref", tmp_path, "--text", "make it red"], capsys)
    assert code == 1 and f"'{tmp_path}' is a folder: expected an image file" in line, line
    code, line = one_error_line(["retrieve", "--queries", tmp_path], capsys)
    assert code == 1 and f"'{tmp_path}' is a folder: expected a JSONL file (option --queries)" in line, line
    code, line = one_error_line(["retrieve", "--ref", tmp_path / "nope.png", "--text", "make it red"], capsys)
    assert code == 1 and "does not exist" in line, line


def test_a_query_text_that_is_no_string_names_its_line_and_field(tmp_path, capsys):
    """Issue 27: {"text": 42} was reported as an empty text; it is a malformed line of the file."""
    from PIL import Image

    from zscir.index.queries import check_text

    Image.new("RGB", (16, 16), (10, 200, 10)).save(tmp_path / "a.png")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"ref": "a.png", "text": "make it red"}) + "\n"
                       + json.dumps({"ref": "a.png", "text": 42}) + "\n")
    code, line = one_error_line(["retrieve", "--queries", queries], capsys)
    assert code == 1 and line == f'error: {queries}:2: field "text" is 42: expected a string', line
    with pytest.raises(ZscirError, match="is 42, not text: expected a string"):
        check_text(42)
    with pytest.raises(ZscirError, match="is empty"):
        check_text("  ")


def test_caption_on_an_empty_folder_is_refused_as_index_refuses_it(tmp_path, capsys):
    """Issue 27: `caption` exited 0 on a folder without images, where `index` refuses it."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    (tmp_path / "caps.jsonl").write_text(json.dumps({"id": "a.png", "caption": "a red circle"}) + "\n")
    code, line = one_error_line(["caption", "--images", tmp_path / "empty", "--captions", tmp_path / "caps.jsonl",
                                 "--quiet", "--out", tmp_path / "out.jsonl"], capsys)
    assert code == 1 and f"no images (.jpg, .png, .webp, ...) found under '{tmp_path / 'empty'}'" in line, line
    assert not (tmp_path / "out.jsonl").exists()
