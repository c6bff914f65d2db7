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


def build_tiny_blip2(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (BertTokenizer, Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS), *".,;:!?-'0123456789"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 encoder_hidden_size=32, vocab_size=len(vocab), max_position_embeddings=64,
                                 use_qformer_text_input=True, cross_attention_frequency=1)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), num_query_tokens=4,
                         image_text_hidden_size=16)
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
