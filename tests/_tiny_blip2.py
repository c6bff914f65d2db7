"""A tiny random BLIP-2 (transformers Blip2ForImageTextRetrieval), its BertTokenizer and image processor, in a folder.

Vision: width 32, 1 layer, 32 px images, 8 px patches; Q-Former: width 32, 1 layer, 4 query tokens; a word
vocabulary that covers the shapes world's modification texts.
"""

from pathlib import Path

WORDS = """make change turn the a an it to and be is are with of in at on into add remove take away replace by
put move left right top bottom middle center centre upper lower corner large small big tiny medium red green blue
yellow purple orange white black gray grey pink brown circle square triangle star cross heart ring diamond hexagon
striped dotted plain solid background shape shapes one two three all every other bigger smaller larger so that
instead next near above below make change color colour size position same keep""".split()


# the backbone tests' variant (tests/test_backbone_blip2.py, test_blip2_rerank.py): a 20-word vocabulary, a 2-layer
# Q-Former cross-attending in its first layer, weights and query tokens drawn at std 0.2 so that images are told apart
# (the ViT's default, 1e-10, gives every image one feature; the query tokens start at zeros, every token alike)
SMALL_VOCAB = "a photo of the red blue green circle square make it small big with and thing".split()
DRAWN = dict(words=SMALL_VOCAB, vision={"initializer_range": 0.2}, query_std=0.2,
             qformer={"num_hidden_layers": 2, "initializer_range": 0.2, "cross_attention_frequency": 2})


def build_tiny_blip2(folder: Path, seed: int = 0, words=None, vision: dict | None = None,
                     qformer: dict | None = None, query_std: float | None = None) -> Path:
    """The tiny BLIP-2 saved to ``folder``; ``vision`` / ``qformer`` override the configs' fields, ``words`` the
    vocabulary after the specials (default: the world's words and punctuation), ``query_std`` redraws the query
    tokens (after the model's own init, from the same seed)."""
    import torch
    from transformers import (BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = [*dict.fromkeys(WORDS), *".,;:!?-'0123456789"] if words is None else list(words)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    vision = Blip2VisionConfig(**{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8), **(vision or {})})
    qformer = Blip2QFormerConfig(**{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, encoder_hidden_size=32, vocab_size=len(vocab),
                                           max_position_embeddings=64, use_qformer_text_input=True,
                                           cross_attention_frequency=1), **(qformer or {})})
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), num_query_tokens=4,
                         image_text_hidden_size=16)
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    if query_std is not None:
        with torch.no_grad():
            model.query_tokens.normal_(0.0, query_std)
    model.save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def drawn_tiny_blip2(folder: Path, seed: int = 0) -> Path:
    """The backbone tests' variant (``DRAWN``): images and query tokens told apart."""
    return build_tiny_blip2(folder, seed, **DRAWN)
