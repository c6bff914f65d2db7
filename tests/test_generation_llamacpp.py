"""A REAL OpenAI-compatible server: llama.cpp's (llama-cpp-python[server]) on 127.0.0.1 serving a tiny
transformers Llama built here and written to GGUF; the endpoint editor and the transformers editor give the
same greedy edits on the same weights.

Needs the optional extras (`pip install 'zscir[llm]'`, which compiles llama.cpp): skipped without them.
"""

from __future__ import annotations

import pytest
import torch

from _generation import save_causal_lm, start_llama_server
from zscir.generation import Decoding, EditInput, build_editor

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed (pip install 'zscir[llm]')")
pytest.importorskip("gguf", reason="gguf is not installed (pip install 'zscir[llm]')")

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.multiprocess]

PAIRS = [EditInput(c, i) for c in ("a red circle next to a blue square", "a photo of a cat on a sofa",
                                   "a small green triangle above a large yellow star", "the man is wearing a black shirt")
         for i in ("make the circle bigger", "remove the square and add two dogs")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zscir.generation.gguf_export import export_llama_gguf

    root = tmp_path_factory.mktemp("llamacpp")
    folder = save_causal_lm(root / "lm", ascii_only=True, hidden=64)
    path = export_llama_gguf(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                             root / "tiny.gguf")
    proc, url = start_llama_server(path, root / "server.log")
    yield folder, url
    proc.terminate()
    proc.wait(timeout=600)


def test_llama_cpp_server_gives_the_transformers_editors_greedy_edits(served):
    folder, url = served
    torch.set_num_threads(1)
    decoding = Decoding(max_new_tokens=12)
    local = build_editor(f"hf-lm:{folder}", device="cpu", decoding=decoding).edit(PAIRS)
    # llama-cpp-python's server applies repeat_penalty 1.1 unless told otherwise; transformers applies none
    remote = build_editor(f"openai:tiny@{url}", decoding=decoding, concurrency=2,
                          params={"repeat_penalty": 1.0}).edit(PAIRS)
    assert all(local) and len(set(local)) > 1
    agreement = sum(a == b for a, b in zip(local, remote)) / len(PAIRS)
    print(f"llama.cpp vs transformers, greedy, {len(PAIRS)} edits: agreement {agreement:.3f}")
    assert remote == local
