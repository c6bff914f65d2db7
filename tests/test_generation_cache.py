"""The one generation cache: edits beside captions in one file, a SIGKILL mid-run loses no finished edit,
old caption caches read as before, and `zscir edit` on a JSONL or a benchmark split's queries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from zscir.generation.base import EditInput, Editor
from zscir.generation.cache import GenerationCache, captioner_key, edit_key
from zscir.generation.edits import edit_pairs

FAKE_EDITOR = '''
import time
from zscir.generation.base import Editor


class FakeEditor(Editor):
    name, identity = "fake", "fake-editor-v1"

    def __init__(self, log, hang_on_call=None, marker=None):
        self.log, self.hang_on_call, self.marker, self.calls = log, hang_on_call, marker, 0

    def edit(self, pairs):
        self.calls += 1
        if self.calls == self.hang_on_call:
            open(self.marker, "w").close()
            time.sleep(600)  # killed here, in the middle of a batch
        with open(self.log, "a") as f:
            f.write("".join(p.caption + "\\n" for p in pairs))
        return [p.caption.upper() + " / " + p.instruction for p in pairs]
'''

RUN = '''
import sys
sys.path.insert(0, {tmp!r})
from fake_editor import FakeEditor
from zscir.generation.base import EditInput
from zscir.generation.edits import edit_pairs

pairs = [(f"q{{i}}", EditInput(f"caption{{i:02d}}", "make it red")) for i in range(20)]
edit_pairs(pairs, FakeEditor({log!r}, hang_on_call=4, marker={marker!r}), {cache!r}, batch_size=3, progress=False)
'''


@pytest.mark.multiprocess
def test_sigkill_in_the_middle_of_edits_loses_no_finished_edit(tmp_path):
    (tmp_path / "fake_editor.py").write_text(FAKE_EDITOR)
    log, cache, marker = tmp_path / "calls.log", tmp_path / "gen.jsonl", tmp_path / "hanging"
    proc = subprocess.Popen([sys.executable, "-c", RUN.format(tmp=str(tmp_path), log=str(log), marker=str(marker),
                                                              cache=str(cache))])
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, "the edit run ended before reaching the kill point"
        assert time.time() < deadline, "the edit run never reached the kill point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().split()) == 9  # three batches of 3 finished before the kill

    sys.path.insert(0, str(tmp_path))
    try:
        from fake_editor import FakeEditor
    finally:
        sys.path.remove(str(tmp_path))
    pairs = [(f"q{i}", EditInput(f"caption{i:02d}", "make it red")) for i in range(20)]
    result = edit_pairs(pairs, FakeEditor(str(log)), cache, batch_size=3, progress=False)
    calls = Counter(log.read_text().split())
    assert len(calls) == 20 and max(calls.values()) == 1  # none lost, none edited twice
    assert (result.from_cache, result.edited) == (9, 11)
    assert result["q13"] == ["CAPTION13 / make it red"]


class Upper(Editor):
    name, identity = "upper", "upper-v1"
    calls = 0

    def edit(self, pairs):
        Upper.calls += len(pairs)
        return [p.caption.upper() for p in pairs]


def test_captions_and_edits_share_one_file_and_old_caption_caches_read_as_before(tmp_path):
    path = tmp_path / "gen.jsonl"
    key = captioner_key("cap-A")
    path.write_text(json.dumps({"captioner": "cap-A", "c": key}) + "\n"  # a cache written before the header
                    + json.dumps({"h": "h1", "c": key, "id": "a.png", "caption": "a cat"}) + "\n")
    result = edit_pairs([("x", EditInput("a cat", "add a hat"))], Upper(), path, progress=False)
    assert result == {"x": ["A CAT"]}
    with GenerationCache(path, "cap-A") as captions:
        assert captions.entries == {"h1": "a cat"} and captions.outputs("h1") == ["a cat"]
        captions.add_many([("h2", "b.png", ["a dog", "a puppy"])])
    with GenerationCache(path, "upper-v1", kind="edit") as edits:
        assert edits.outputs(edit_key("a cat", "add a hat")) == ["A CAT"] and len(edits) == 1
    with GenerationCache(path, "cap-A") as captions:
        assert captions.get("h2") == "a dog" and captions.outputs("h2") == ["a dog", "a puppy"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"captioner": "cap-A", "c": key} and {"editor": "upper-v1", "c": captioner_key("upper-v1")} in lines


def test_edit_cli_on_a_pairs_file_then_resumes_for_free(tmp_path, monkeypatch, capsys):
    from zscir.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p1", "caption": "a cat", "instruction": "add a hat"}) + "\n"
                     + json.dumps({"caption": "a dog", "instruction": "make it red"}) + "\n")
    monkeypatch.setattr("zscir.generation.cli.build_editor", lambda spec, **kw: Upper())
    args = ["edit", "--editor", "hf-lm:unused", "--pairs", str(pairs), "--cache", str(tmp_path / "c.jsonl"),
            "--out", str(tmp_path / "out.jsonl"), "--json", "--quiet"]
    Upper.calls = 0
    for expected_now in (2, 0):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["edited_now"] == expected_now and summary["pairs"] == 2 and Upper.calls == 2
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"id": "p1", "caption": "a cat", "instruction": "add a hat", "edits": ["A CAT"]},
                    {"id": "2", "caption": "a dog", "instruction": "make it red", "edits": ["A DOG"]}]


def test_edit_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from zscir.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "a cat"}\n')
    for args, expected in [(["edit", "--editor", "hf-lm:x"], "exactly one of --pairs FILE and --benchmark NAME"),
                           (["edit", "--editor", "hf-lm:x", "--pairs", str(bad)], "line 1: expected an object"),
                           (["edit", "--editor", "hf-lm:x", "--benchmark", "shapes"], "also give --captions FILE"),
                           (["edit", "--editor", "hf-lm:x", "--pairs", str(bad), "--n", "2"], "--decoding beam")]:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 1 and expected in err and len(err.strip().splitlines()) == 1, err


def test_edit_cli_on_a_benchmark_split_edits_every_caption_of_each_reference(tmp_path, monkeypatch, capsys):
    from zscir.benchmarks import load_splits
    from zscir.cli import main
    from zscir.utils.hashing import sha256_file

    (split,) = load_splits("shapes", None, "val")
    queries = split.queries[:5]
    monkeypatch.setattr(split, "queries", queries)
    monkeypatch.setattr("zscir.generation.cli.load_splits", lambda *a, **k: [split])
    captions = tmp_path / "captions.jsonl"
    with GenerationCache(captions, "fake-captioner|n=2") as cache:  # two captions per reference but the last
        rows = [(sha256_file(split.images[q.reference]), q.reference, [f"ref {q.reference}", f"alt {q.reference}"])
                for q in queries[:-1]]
        cache.add_many(rows)
    monkeypatch.setattr("zscir.generation.cli.build_editor", lambda spec, **kw: Upper())
    Upper.calls = 0
    with pytest.raises(SystemExit) as e:
        main(["edit", "--editor", "hf-lm:unused", "--benchmark", "shapes", "--captions", str(captions),
              "--cache", str(tmp_path / "edits.jsonl"), "--out", str(tmp_path / "out.jsonl"), "--json", "--quiet"])
    assert e.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    distinct = {(c, " and ".join(q.captions)) for q in queries[:-1] for c in (f"ref {q.reference}", f"alt {q.reference}")}
    assert summary["captioner"] == "fake-captioner|n=2" and summary["references_without_caption"] == 1
    assert summary["edited_now"] == Upper.calls == len(distinct)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in rows] == [q.qid for q in queries[:-1]]
    first = rows[0]
    assert first["captions"] == [f"ref {queries[0].reference}", f"alt {queries[0].reference}"]
    assert first["edits"] == [[c.upper()] for c in first["captions"]]
    assert first["instruction"] == " and ".join(queries[0].captions)


def test_a_job_starting_beside_another_never_replaces_the_file_the_other_appends_to(tmp_path, monkeypatch):
    # Two ranks open one new cache: the first creates it and appends while the second is still
    # preparing its header; the second must join that file, not replace it (the first's lines were lost).
    import zscir.generation.cache as cache_module

    path = tmp_path / "gen.jsonl"
    first = {}
    real_mkstemp = cache_module.tempfile.mkstemp

    def the_other_job_wins(*args, **kwargs):
        if not first:
            first["cache"] = None  # the first job's own creation goes through here too
            first["cache"] = GenerationCache(path, "cap-A")
            first["cache"].add_many([("h1", "a.png", "a cat")])
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", the_other_job_wins)
    second = GenerationCache(path, "cap-A")
    second.add_many([("h2", "b.png", "a dog")])
    first["cache"].add_many([("h3", "c.png", "a cow")])
    first["cache"].close()
    second.close()
    monkeypatch.undo()
    with GenerationCache(path, "cap-A") as reread:
        assert reread.entries == {"h1": "a cat", "h2": "a dog", "h3": "a cow"}
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["zscir"] == "caption-cache" and sum('"captioner"' in line for line in lines) == 1


def test_an_empty_file_made_by_hand_gets_the_header_in_place(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.touch()
    inode = path.stat().st_ino
    with GenerationCache(path, "cap-A") as cache:
        cache.add_many([("h1", "a.png", "a cat")])
    assert path.stat().st_ino == inode
    with GenerationCache(path, "cap-A") as reread:
        assert reread.entries == {"h1": "a cat"}
