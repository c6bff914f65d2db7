"""Every transformers backend on tiny random models built here: captions and edits through the real code path,
N outputs reproducible with the seed, the cache reused (model calls counted), a changed prompt or decoding
regenerates, a missing model is one line."""

from __future__ import annotations

import json

import pytest
import torch

from _generation import noise_images, save_blip2, save_causal_lm, save_seq2seq_lm, save_vlm
from zscir.data.caption_cache import caption_images
from zscir.data.sources import open_image_source
from zscir.errors import MissingWeightsError, ZscirError
from zscir.generation import Decoding, EditInput, PromptTemplate, build_captioner, build_editor
from zscir.generation.edits import edit_pairs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PAIRS = [EditInput("a red circle next to a blue square", "make the circle bigger"),
         EditInput("a photo of a cat on a sofa", "add two dogs"),
         EditInput("a small green triangle", "remove the triangle")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_models")
    return {"lm": save_causal_lm(root / "lm"), "lm-plain": save_causal_lm(root / "lm-plain", chat=False),
            "t5": save_seq2seq_lm(root / "t5"), "blip2-opt": save_blip2(root / "blip2-opt", "opt"),
            "blip2-t5": save_blip2(root / "blip2-t5", "t5"), "vlm": save_vlm(root / "vlm")}


def counting(generator, method: str):
    """Count the inputs the generator's model is asked for."""
    calls = []
    original = getattr(generator, method)

    def wrapped(batch, *rest):
        calls.append(len(batch) if rest == () or rest[0] is None else len(rest[0]))
        return original(batch, *rest)

    setattr(generator, method, wrapped)
    return calls


CAPTIONERS = ["blip2-opt", "blip2-t5", "vlm"]
SPEC = {"blip2-opt": "blip2", "blip2-t5": "blip2", "vlm": "hf-vlm"}


@pytest.mark.parametrize("name", CAPTIONERS)
def test_captioners_batched_equal_one_at_a_time_and_depend_on_the_image(models, name):
    captioner = build_captioner(f"{SPEC[name]}:{models[name]}", device="cpu", decoding=Decoding(max_new_tokens=6))
    assert captioner.identity.startswith(f"{SPEC[name]}:local-sha256:") and "|greedy,new<=6|prompt=" in captioner.identity
    images = noise_images(3, seed=5)
    batched = captioner.caption(None, images)
    assert all(isinstance(c, str) and c.strip() for c in batched)
    assert len(set(batched)) > 1  # the image matters
    assert [captioner.caption(None, [im])[0] for im in images] == batched


def test_blip2_opt_caption_matches_a_direct_generate_call(models):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    captioner = build_captioner("blip2", model=str(models["blip2-opt"]), prompt="a photo of",
                                decoding=Decoding("beam", num_beams=2, max_new_tokens=5), device="cpu")
    image = noise_images(1, seed=2)[0]
    model = Blip2ForConditionalGeneration.from_pretrained(models["blip2-opt"]).eval()
    processor = Blip2Processor.from_pretrained(models["blip2-opt"])
    inputs = processor(images=[image], text=["a photo of"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, num_beams=2, max_new_tokens=5, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert captioner.caption(None, [image]) == [expected]


@pytest.mark.parametrize("name", ["lm", "lm-plain", "t5"])
def test_editors_batched_equal_one_at_a_time_and_match_a_direct_call(models, name):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    editor = build_editor(f"hf-lm:{models[name]}", device="cpu", decoding=Decoding(max_new_tokens=7))
    assert ("|chat|" in editor.identity) == (name == "lm") and editor.seq2seq == (name == "t5")
    batched = editor.edit(PAIRS)
    assert all(isinstance(e, str) and e for e in batched) and len(set(batched)) == 3
    assert [editor.edit([p])[0] for p in PAIRS] == batched

    # the reference: the prompt as the model reads it, generated directly
    tokenizer = AutoTokenizer.from_pretrained(models[name])
    loader = AutoModelForSeq2SeqLM if name == "t5" else AutoModelForCausalLM
    model = loader.from_pretrained(models[name]).eval()
    text = PromptTemplate.fill(editor.template, *PAIRS[1])
    if name == "lm":
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        assert text.startswith("user: Image description: a photo of a cat") and text.endswith("assistant:")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=name != "lm")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0] if name == "t5" else out[0, ids.shape[1]:]
    assert tokenizer.decode(new, skip_special_tokens=True).strip() == batched[1]


def test_n_sampled_outputs_are_reproducible_with_the_seed_and_independent_of_the_batch(models):
    sample = Decoding("sample", n=3, seed=7, top_p=0.95, max_new_tokens=6)
    editor = build_editor(f"hf-lm:{models['lm']}", device="cpu", decoding=sample)
    assert "sample(p=0.95,t=1.0,seed=7),n=3" in editor.identity
    first = editor.edit(PAIRS)
    assert all(isinstance(o, list) and len(o) == 3 for o in first)
    assert len({tuple(o) for o in first}) == 3 and any(len(set(o)) > 1 for o in first)  # they are samples
    assert editor.edit(PAIRS) == first                                   # the same seed, the same outputs
    assert editor.edit(PAIRS[::-1]) == first[::-1]                       # order / batch does not matter
    other = build_editor(f"hf-lm:{models['lm']}", device="cpu", decoding=Decoding("sample", n=3, seed=8, top_p=0.95,
                                                                               max_new_tokens=6))
    assert other.edit(PAIRS) != first

    captioner = build_captioner(f"blip2:{models['blip2-t5']}", device="cpu", decoding=sample)
    images = noise_images(2, seed=3)
    once = captioner.caption(None, images)
    assert once == captioner.caption(None, images) and [captioner.caption(None, [images[1]])[0]] == once[1:]


def test_beam_n_gives_the_n_best_beams(models):
    editor = build_editor(f"hf-lm:{models['t5']}", device="cpu", decoding=Decoding("beam", n=3, max_new_tokens=5))
    assert "beam3,n=3" in editor.identity
    outputs = editor.edit(PAIRS[:2])
    assert all(len(o) == 3 and len(set(o)) == 3 for o in outputs)
    greedy_beam = build_editor(f"hf-lm:{models['t5']}", device="cpu", decoding=Decoding("beam", num_beams=3,
                                                                                       max_new_tokens=5))
    assert [o[0] for o in outputs] == greedy_beam.edit(PAIRS[:2])  # the first of N beams is the best beam


def test_edit_cache_reused_and_changed_prompt_or_decoding_regenerates(models, tmp_path):
    cache = tmp_path / "gen.jsonl"
    pairs = [(f"q{i}", p) for i, p in enumerate(PAIRS)] + [("q-again", PAIRS[0])]
    editor = build_editor(f"hf-lm:{models['lm']}", device="cpu", decoding=Decoding(max_new_tokens=5))
    calls = counting(editor, "edit")
    first = edit_pairs(pairs, editor, cache, batch_size=2, progress=False)
    assert sum(calls) == 3 and first.edited == 3 and first["q-again"] == first["q0"]  # a repeated pair: once
    again = edit_pairs(pairs, editor, cache, progress=False)
    assert sum(calls) == 3 and again.from_cache == 3 and dict(again) == dict(first)  # no model call on rerun

    reprompt = build_editor(f"hf-lm:{models['lm']}", device="cpu", decoding=Decoding(max_new_tokens=5),
                            template=PromptTemplate("Caption: {caption}. Change: {instruction}. New caption:"))
    recalls = counting(reprompt, "edit")
    edit_pairs(pairs, reprompt, cache, progress=False)
    assert sum(recalls) == 3 and reprompt.identity != editor.identity
    longer = build_editor(f"hf-lm:{models['lm']}", device="cpu", decoding=Decoding(max_new_tokens=6))
    longer_calls = counting(longer, "edit")
    edit_pairs(pairs, longer, cache, progress=False)
    assert sum(longer_calls) == 3

    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    declarations = [r for r in lines if "editor" in r]
    assert len(declarations) == 3 and declarations[0]["about"]["prompt"]["sha256"]
    entry = next(r for r in lines if r.get("id") == "q1")
    assert entry["input"] == {"caption": PAIRS[1].caption, "instruction": PAIRS[1].instruction}
    assert entry["outputs"] == first["q1"]


def test_caption_images_with_n_captions_stores_them_and_reuses_them(models, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(noise_images(3, seed=9)):
        im.save(folder / f"{i}.png")
    captioner = build_captioner(f"blip2:{models['blip2-opt']}", device="cpu",
                                decoding=Decoding("sample", n=2, seed=1, max_new_tokens=5))
    calls = counting(captioner, "caption")
    first = caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", batch_size=2,
                           progress=False)
    assert sum(calls) == 3 and all(len(first.outputs[i]) == 2 for i in first)
    assert all(first[i] == first.outputs[i][0] for i in first)
    second = caption_images(open_image_source(str(folder)), captioner, tmp_path / "c.jsonl", progress=False)
    assert sum(calls) == 3 and second.from_cache == 3 and second.outputs == first.outputs


def test_vlm_without_chat_template_is_refused(models, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from zscir.generation.hf_captioners import VlmCaptioner

    processor = AutoProcessor.from_pretrained(models["vlm"])
    processor.chat_template = None
    with pytest.raises(ZscirError, match="no chat template"):
        VlmCaptioner(AutoModelForImageTextToText.from_pretrained(models["vlm"]), processor, "x", device="cpu")


@pytest.mark.parametrize("spec", ["blip2", "hf-vlm", "hf-lm"])
def test_missing_model_offline_is_one_line_saying_how_to_supply_it(spec, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    build = build_editor if spec == "hf-lm" else build_captioner
    with pytest.raises(MissingWeightsError) as e:
        build(f"{spec}:nobody/not-a-model", cache_dir=str(tmp_path / "empty"))
    message = str(e.value)
    assert "\n" not in message and "'nobody/not-a-model'" in message and "hf download nobody/not-a-model" in message


def test_bad_specs_and_options_are_one_line():
    with pytest.raises(ZscirError, match="--editor nope: expected one of hf-lm, openai"):
        build_editor("nope")
    with pytest.raises(ZscirError, match="greedy decoding gives one output"):
        Decoding(n=2)
    with pytest.raises(ZscirError, match="--preset nope: expected one of cirevl, ldre"):
        build_captioner("blip2", preset="nope")
    with pytest.raises(ZscirError, match="only the fields"):
        PromptTemplate("{caption} {other}").fill("a", "b")
