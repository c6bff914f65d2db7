"""zscir's architecture rules, checked on the source's import graph (CONTRIBUTING.md, "Rules").

The graph is built with `ast` from every module under zscir/: every `import` and `from ... import`,
at module level or inside a function body, relative ones resolved. `importlib.import_module` calls are
not imports: they are how a lower layer reaches a plugin above it through a registry entry named by
import path. Each test lists every violation it finds, one per line, with file and line.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "zscir"

# The layers, lowest first: a module imports only from its own layer or lower. A prefix covers the
# module of that name and everything under it; "zscir" alone is the package's __init__.
LAYERS = [
    ("L1", ["zscir", "zscir.errors", "zscir.utils"]),
    ("L2", ["zscir.checkpoint", "zscir.text", "zscir.backbone"]),
    ("L3", ["zscir.data", "zscir.generation"]),  # generation: captioners, editors, the generation cache
    ("L4", ["zscir.features"]),
    ("L5", ["zscir.models"]),
    ("L6", ["zscir.benchmarks"]),
    ("L7", ["zscir.index"]),
    ("L8", ["zscir.resolve"]),  # the one resolver: --clip/--pretrained/--model/--index -> backbone, model, gallery
    ("L9", ["zscir.evaluation", "zscir.training", "zscir.importers"]),
    ("L10", ["zscir.serve", "zscir.client"]),  # client: the Python client of `zscir serve`
    ("L11", ["zscir.world"]),  # the shapes world: a plugin on top, reached from below only through registries
    ("L12", ["zscir.cli"]),  # command modules; also every module named `cli` or ending in `_cli`
]

# Deferred (function-body) imports are allowed only for these heavy third-party modules, where the
# start-up time of a command that does not need them matters (each such import carries a short comment).
ALLOWED_DEFERRED = {
    "torch",  # ~1-2 s to import; `zscir --help` and the world generator do not need it
    "torchvision",  # pulls torch
    "open_clip",  # pulls torch, timm, huggingface_hub
    "transformers",  # captioners and LinCIR's text tower only
    "tokenizers",  # pulled by transformers
    "accelerate",  # multi-process pretraining only
    "faiss",  # index building and ANN search only
    "fastapi",  # `zscir serve` only
    "starlette",  # `zscir serve` only
    "uvicorn",  # `zscir serve` only
    "spacy",  # the optional scene-graph parser / caption splitter
    "skimage",  # sample photographs for benchmarks and tests only
    "llama_cpp",  # optional local language models
    "gguf",  # optional local language models
    "httpx",  # the HTTP client of the serve tests and remote captioners
    "huggingface_hub",  # the Hugging Face cache look-ups of model loading only
    "lavis",  # optional: LAVIS's BLIP captioner, where installed
    "sng_parser",  # optional: the scene-graph parser, where installed
}

MAX_LINES = 400
# Modules allowed over MAX_LINES, each with the reason (keep this list short).
SIZE_EXCEPTIONS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported zscir module (internal) or top-level package name (external)
    internal: bool
    deferred: bool  # inside a function body
    where: str  # path:line


def _module_names(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    mods = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _known_prefix(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _walk(node, in_function: bool = False):
    """Yield (import node, inside a function body) for every import under node."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, nested)


def build_graph(package_dir: pathlib.Path = PACKAGE_DIR):
    """Return (modules {dotted name: path}, [Import]) for the package at package_dir."""
    mods = _module_names(package_dir)
    pkg = package_dir.name
    imports = []
    for cur, path in mods.items():
        rel = path.relative_to(package_dir.parent)
        for node, deferred in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{rel}:{node.lineno}"
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    parts = cur.split(".") if path.name == "__init__.py" else cur.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in dict.fromkeys(names):
                if name == pkg or name.startswith(pkg + "."):
                    target = _known_prefix(name, mods) or name
                    if target != cur:
                        imports.append(Import(cur, target, True, deferred, where))
                else:
                    imports.append(Import(cur, name.split(".")[0], False, deferred, where))
    return mods, imports


def layer_of(module: str) -> int | None:
    """The layer number (1..12) of a dotted zscir module name, None if it is in no layer."""
    last = module.rpartition(".")[2]
    if last == "cli" or last.endswith("_cli"):
        return len(LAYERS)
    best, best_len = None, -1
    for number, (_, prefixes) in enumerate(LAYERS, start=1):
        for p in prefixes:
            hit = module == p if p == "zscir" else module == p or module.startswith(p + ".")
            if hit and len(p) > best_len:
                best, best_len = number, len(p)
    return best


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def _report(title: str, lines: list[str], count: int | None = None) -> str:
    n = len(lines) if count is None else count
    return f"{title}: {n}\n" + "\n".join("  " + line for line in lines)


_GRAPH = None


def _graph():
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph()
    return _GRAPH


def test_every_module_is_in_a_layer():
    mods, _ = _graph()
    missing = [m for m in mods if layer_of(m) is None]
    assert not missing, _report("modules in no layer (add them to LAYERS and CONTRIBUTING.md)", missing)


def test_no_import_cycles():
    _, imports = _graph()
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.internal:
            edges.setdefault(imp.source, set()).add(imp.target)
    cycles = find_cycles(edges)
    lines = []
    for comp in cycles:
        members = set(comp)
        lines.append(" <-> ".join(comp))
        for imp in imports:
            if imp.internal and imp.source in members and imp.target in members:
                kind = "deferred" if imp.deferred else "top"
                lines.append(f"    {imp.source} -> {imp.target}  ({imp.where}, {kind})")
    assert not cycles, _report("import cycles", lines, len(cycles))


def test_no_import_from_a_higher_layer():
    _, imports = _graph()
    bad = []
    for imp in imports:
        if not imp.internal:
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            bad.append(f"{imp.where}: {imp.source} (L{src}) imports {imp.target} (L{dst})")
    assert not bad, _report("imports from a higher layer", bad)


def test_deferred_imports_only_of_allowed_heavy_modules():
    _, imports = _graph()
    bad = []
    for imp in imports:
        if not imp.deferred:
            continue
        if imp.internal and layer_of(imp.source) == len(LAYERS):
            continue  # a command module defers the library it drives: `--help` starts without torch
        if imp.internal:
            bad.append(f"{imp.where}: deferred internal import of {imp.target} (move it to the module's top)")
        elif imp.target not in ALLOWED_DEFERRED:
            bad.append(f"{imp.where}: deferred import of {imp.target} (not a heavy third-party module)")
    assert not bad, _report("deferred imports that are not allowed", bad)


def test_no_module_over_the_line_limit():
    mods, _ = _graph()
    big = []
    for name, path in mods.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and name not in SIZE_EXCEPTIONS:
            big.append(f"{path.relative_to(PACKAGE_DIR.parent)}: {n} lines")
    assert not big, _report(f"modules over {MAX_LINES} lines", big)


def test_the_graph_builder_on_a_small_package(tmp_path):
    """Relative imports resolved, function bodies seen, importlib calls and submodules told apart."""
    pkg = tmp_path / "zscir"
    (pkg / "index").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("import json\n")
    (pkg / "index" / "__init__.py").write_text("from .rows import Rows\n")
    (pkg / "index" / "rows.py").write_text(
        "import importlib\nfrom ..errors import ZscirError\n"
        "class Rows:\n    def load(self):\n        import torch  # heavy\n        from . import cli\n"
        "        return importlib.import_module('zscir.world')\n"
    )
    (pkg / "index" / "cli.py").write_text("from zscir.index import rows\nfrom zscir import index\n")
    mods, imports = build_graph(pkg)
    assert set(mods) == {"zscir", "zscir.errors", "zscir.index", "zscir.index.rows", "zscir.index.cli"}
    got = {(i.source, i.target, i.internal, i.deferred) for i in imports}
    assert got == {
        ("zscir.errors", "json", False, False),
        ("zscir.index", "zscir.index.rows", True, False),
        ("zscir.index.rows", "importlib", False, False),
        ("zscir.index.rows", "zscir.errors", True, False),
        ("zscir.index.rows", "torch", False, True),
        ("zscir.index.rows", "zscir.index.cli", True, True),
        ("zscir.index.cli", "zscir.index.rows", True, False),
        ("zscir.index.cli", "zscir.index", True, False),
    }
    assert [layer_of(m) for m in ("zscir", "zscir.errors", "zscir.index.rows", "zscir.index.cli")] == [1, 1, 7, 12]
    assert layer_of("zscir.training.pretrain_cli") == 12 and layer_of("zscir.world.oracles") == 11
    assert layer_of("zscir.nowhere") is None
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
