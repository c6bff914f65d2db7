"""The Dockerfile (Docker is not run here): every COPY source exists, every package its pip installs name is a
dependency in setup.cfg, and the entry point is `zscir serve` on 0.0.0.0 with the options it names existing."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def requirement_names() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~\[; ]", ln.strip())[0].lower().replace("_", "-") for ln in lines if ln.strip()}


def test_dockerfile_installs_only_declared_packages_and_copies_existing_files():
    steps = instructions()
    assert steps[0][0] == "FROM" and re.match(r"python:3\.(1[0-9])", steps[0][1])
    declared = requirement_names()
    installs = 0
    for word, rest in steps:
        if word == "COPY":
            *sources, _ = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), src
        if word == "RUN" and "pip install" in rest:
            installs += 1
            args = shlex.split(rest.split("pip install", 1)[1])
            skip = False
            for arg in args:
                if skip:
                    skip = False
                    continue
                if arg in ("--index-url", "--extra-index-url", "-r"):
                    skip = True
                    continue
                if arg.startswith("-") or arg == ".":
                    continue
                name = re.split(r"[<>=!~\[]", arg)[0].lower()
                assert name in declared, f"the Dockerfile installs {name!r}, which setup.cfg does not declare"
    assert installs >= 1 and any(w == "RUN" and re.search(r"pip install( \S+)* \.$", r) for w, r in steps)


def test_entrypoint_is_zscir_serve_with_known_options():
    from zscir.serve.cli import serve

    entry = next(rest for word, rest in instructions() if word == "ENTRYPOINT")
    argv = __import__("json").loads(entry)
    assert argv[:2] == ["zscir", "serve"] and "0.0.0.0" in argv
    known = {opt for p in serve.params for opt in p.opts}
    assert all(a in known for a in argv[2:] if a.startswith("--")), argv
    # off loopback the server refuses to start without a key: the image needs ZSCIR_API_KEY (documented in it)
    res = CliRunner().invoke(serve, argv[2:], env={"ZSCIR_API_KEY": ""})
    assert res.exit_code != 0 and "api-key" in str(res.output + str(res.exception)).lower()
    assert "ZSCIR_API_KEY" in (ROOT / "Dockerfile").read_text()
