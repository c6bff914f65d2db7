"""Captioners: one caption per image, behind one interface, chosen by name.

A captioner has an ``identity`` (recorded in the caption cache key, so a new
model or new generation settings never reuse old captions), says whether it
needs decoded images (``needs_images``) and whether its output is worth caching
(``cacheable``: a neural captioner is; a table lookup is not), and captions a
batch: ``caption(items, images) -> list[str | None]`` (None = no caption).

Registered names (``build_captioner(name, **kw)``; ``"name:arg"`` fills the main argument):
- ``blip``           BLIP through transformers (default Salesforce/blip-image-captioning-base),
                     beam search 3, length 10-25 tokens, prompt "a picture of " -- FTI4CIR's settings;
- ``lavis``          LAVIS's BLIP (``blip_caption``/``base_coco``) when salesforce-lavis is installed;
- ``file``           captions from a JSONL, CSV/TSV or JSON (id -> caption) file;
- ``webdataset-txt`` the ``.txt`` member of each webdataset sample (CC3M's alt text);
- ``shapes-world``   the shapes world's own captions (``<world>/unlabeled/captions.jsonl``).
"""

from __future__ import annotations

import csv
import inspect
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

from PIL import Image

from zscir.data.sources import ImageItem
from zscir.errors import MissingWeightsError, ZscirError
from zscir.utils.hashing import sha256_file
from zscir.utils.jsonl import read_jsonl

if TYPE_CHECKING:  # torch is imported only by the captioners that run a model
    import torch

# FTI4CIR's captioning settings (BLIP base, beam search).
BLIP_DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
NUM_BEAMS, MIN_LENGTH, MAX_LENGTH = 3, 10, 25
# BLIP's captioning decoder was fine-tuned with this prompt; lengths include its tokens, as in BLIP.
BLIP_PROMPT = "a picture of "


class Captioner:
    name = "?"
    identity = "?"
    needs_images = True
    cacheable = True

    def caption(self, items: Sequence[ImageItem], images: Sequence[Image.Image] | None) -> list[str | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


# --- neural captioners -------------------------------------------------------------------------

def _pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class BlipCaptioner(Captioner):
    """BLIP (``BlipForConditionalGeneration``) with beam search, batched, on GPU when there is one."""

    name = "blip"

    def __init__(self, model, tokenizer, image_processor, model_ref: str, device: str | None = None,
                 num_beams: int = NUM_BEAMS, min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH,
                 prompt: str = BLIP_PROMPT, preprocess: str = "targetpad", half: bool | None = None):
        import torch

        self.device = _pick_device(device)
        self.dtype = torch.float16 if (half if half is not None else self.device.startswith("cuda")) else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.num_beams, self.min_length, self.max_length, self.prompt = num_beams, min_length, max_length, prompt
        self._pixels = self._make_preprocess(preprocess)
        precision = "fp16" if self.dtype == torch.float16 else "fp32"
        self.identity = (f"blip:{model_ref}|beams={num_beams}|len={min_length}-{max_length}"
                         f"|prompt={prompt!r}|pre={preprocess}|{precision}")

    def _make_preprocess(self, name: str) -> Callable[[list[Image.Image]], "torch.Tensor"]:
        import torch

        size = self.image_processor.size  # {"height": 384, "width": 384} (a dict or a SizeDict)
        size = int(size["height"]) if hasattr(size, "__getitem__") else int(size)
        if name == "targetpad":
            # FTI4CIR captions TargetPad(1.25) images; BLIP normalises with CLIP's mean/std, taken
            # from the checkpoint's own image processor so a different checkpoint stays right.
            from zscir.backbone.preprocess import make_preprocess

            transform = make_preprocess("targetpad", size, self.image_processor.image_mean,
                                        self.image_processor.image_std)
            return lambda images: torch.stack([transform(im) for im in images])
        if name == "blip":  # the checkpoint's processor: squash-resize to size x size
            return lambda images: self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        raise ZscirError(f"BLIP preprocess {name!r}: expected 'targetpad' or 'blip'")

    @classmethod
    def from_pretrained(cls, model: str = BLIP_DEFAULT_MODEL, cache_dir: str | None = None,
                        revision: str | None = None, **kw) -> "BlipCaptioner":
        net, processor, model_ref = _load_blip(model, cache_dir, revision)
        return cls(net, processor.tokenizer, processor.image_processor, model_ref, **kw)

    def caption(self, items, images):
        import torch

        pixels = self._pixels(images).to(self.device, self.dtype)
        prompt_ids = self.tokenizer([self.prompt] * len(images), return_tensors="pt")["input_ids"].to(self.device)
        with torch.no_grad():
            out = self.model.generate(pixel_values=pixels, input_ids=prompt_ids, num_beams=self.num_beams,
                                      min_length=self.min_length, max_length=self.max_length,
                                      do_sample=False, repetition_penalty=1.0)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [_strip_prefix(text, self.prompt) for text in texts]


def _strip_prefix(text: str, prompt: str) -> str:
    text, prompt = text.strip(), prompt.strip()
    return text[len(prompt):].strip() if prompt and text.lower().startswith(prompt.lower()) else text


def _load_blip(model: str, cache_dir: str | None, revision: str | None):
    from huggingface_hub import constants as hub
    from transformers import BlipForConditionalGeneration, BlipProcessor

    local = Path(model).expanduser()
    if local.exists():
        try:
            net = BlipForConditionalGeneration.from_pretrained(local)
            processor = BlipProcessor.from_pretrained(local)
        except (OSError, ValueError) as e:
            raise ZscirError(f"--model {model}: expected a folder written by save_pretrained() with a BLIP "
                             f"model and its processor (config.json, weights, tokenizer, preprocessor_config.json): "
                             f"{str(e).splitlines()[0]}") from None
        weights = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin"))
        digest = "+".join(sha256_file(p)[:16] for p in weights)
        return net, processor, f"local-sha256:{digest}"

    def load(local_only: bool):
        kw = dict(cache_dir=cache_dir, revision=revision, local_files_only=local_only)
        return BlipForConditionalGeneration.from_pretrained(model, **kw), BlipProcessor.from_pretrained(model, **kw)

    try:
        net, processor = load(local_only=True)
    except Exception as cached_error:  # not in the cache (OSError) or a broken cache entry
        reason = str(cached_error).splitlines()[0] if cached_error.args else type(cached_error).__name__
        if hub.is_offline_mode():
            raise MissingWeightsError(_missing_blip_message(model, cache_dir or hub.HF_HUB_CACHE, "offline mode")) from None
        try:
            net, processor = load(local_only=False)
        except Exception as e:  # no network, unknown repo, interrupted download
            reason = str(e).splitlines()[0] if e.args else type(e).__name__
            raise MissingWeightsError(_missing_blip_message(model, cache_dir or hub.HF_HUB_CACHE, reason)) from None
    commit = getattr(net.config, "_commit_hash", None) or revision or "unknown-revision"
    return net, processor, f"{model}@{commit}"


def _missing_blip_message(model: str, cache: str, reason: str) -> str:
    return (f"BLIP weights {model!r} are not in the Hugging Face cache ({cache}) and cannot be downloaded "
            f"({reason}): run `hf download {model}` where there is network and copy that cache here "
            f"(or set HF_HOME), or pass a local folder saved with save_pretrained() as --model DIR")


class LavisCaptioner(Captioner):
    """LAVIS's BLIP captioner; an optional backend (salesforce-lavis pins old transformers and timm)."""

    name = "lavis"

    def __init__(self, model: str = "base_coco", device: str | None = None, num_beams: int = NUM_BEAMS,
                 min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH):
        try:
            from lavis.models import load_model_and_preprocess
        except ImportError:
            raise ZscirError("--captioner lavis needs salesforce-lavis, which is not installed: "
                             "pip install 'zscir[lavis]' in a separate environment (it pins old transformers), "
                             "or use --captioner blip (the same model through transformers)") from None
        self.device = _pick_device(device)
        try:
            self.model, processors, _ = load_model_and_preprocess(
                name="blip_caption", model_type=model, is_eval=True, device=self.device)
        except Exception as e:  # LAVIS downloads its checkpoint from a URL on first use
            raise MissingWeightsError(f"LAVIS blip_caption/{model} could not be loaded ({str(e).splitlines()[0]}): "
                                      "run it once where there is network so LAVIS caches the checkpoint "
                                      "(torch hub cache), then copy that cache here") from None
        self.transform = processors["eval"]
        self.num_beams, self.min_length, self.max_length = num_beams, min_length, max_length
        self.identity = f"lavis:blip_caption/{model}|beams={num_beams}|len={min_length}-{max_length}"

    def caption(self, items, images):
        import torch

        batch = torch.stack([self.transform(im) for im in images]).to(self.device)
        with torch.no_grad():
            return list(self.model.generate({"image": batch}, use_nucleus_sampling=False, num_beams=self.num_beams,
                                            max_length=self.max_length, min_length=self.min_length))


# --- lookup captioners -------------------------------------------------------------------------

class CaptionTable:
    """id -> caption, found by exact id, else by unambiguous file name, else by unambiguous stem.

    Caption files are written by other tools: ``images/dog.jpg``, ``dog.jpg`` and
    ``dog`` should all find the same caption when that cannot mean two images.
    """

    _AMBIGUOUS = object()

    def __init__(self):
        self.exact: dict[str, str] = {}
        self.by_name: dict[str, object] = {}
        self.by_stem: dict[str, object] = {}

    def add(self, key: str, caption: str) -> None:
        key = _normalise_id(key)
        self.exact[key] = caption
        name = PurePosixPath(key).name
        for index, k in ((self.by_name, name), (self.by_stem, name.split(".")[0])):
            index[k] = caption if index.get(k, caption) == caption else self._AMBIGUOUS

    def get(self, item_id: str) -> str | None:
        key = _normalise_id(item_id)
        if key in self.exact:
            return self.exact[key]
        name = PurePosixPath(key).name
        for index, k in ((self.by_name, name), (self.by_stem, name.split(".")[0])):
            found = index.get(k)
            if found is not None:
                return None if found is self._AMBIGUOUS else found
        return None

    def __len__(self) -> int:
        return len(self.exact)


def _normalise_id(key: str) -> str:
    key = str(key).replace("\\", "/")
    return key[2:] if key.startswith("./") else key


class LookupCaptioner(Captioner):
    needs_images = False
    cacheable = False

    def __init__(self, table: CaptionTable, identity: str):
        self.table, self.identity = table, identity

    def caption(self, items, images):
        return [self.table.get(item.id) for item in items]


ID_FIELDS = ("id", "image", "file", "path", "key", "image_id", "filename", "file_name")
CAPTION_FIELDS = ("caption", "text", "alt_text", "alt", "title")


def read_caption_file(path: str | Path) -> CaptionTable:
    """Read captions from JSONL (rows), CSV/TSV (header row) or JSON (object id -> caption, or list of rows)."""
    path = Path(path)
    if not path.is_file():
        raise ZscirError(f"captions file {path}: no such file")
    suffix = path.suffix.lower()
    reader = CAPTION_FILE_READERS.get(suffix)
    if reader is None:
        raise ZscirError(f"captions file {path}: expected a .jsonl, .csv, .tsv or .json file, got {suffix or 'no extension'!r}")
    table = CaptionTable()
    for where, row in reader(path):
        if isinstance(row, tuple):
            key, caption = row
        else:
            key = next((row[f] for f in ID_FIELDS if row.get(f) not in (None, "")), None)
            caption = next((row[f] for f in CAPTION_FIELDS if row.get(f) not in (None, "")), None)
        if key is None or not isinstance(caption, str):
            raise ZscirError(f"captions file {path}, {where}: expected an id field (one of {', '.join(ID_FIELDS)}) "
                             f"and a caption field (one of {', '.join(CAPTION_FIELDS)})")
        table.add(str(key), caption.strip())
    return table


def _read_jsonl(path: Path):
    for n, row in read_jsonl(path, lambda n: f"captions file {path}, line {n}"):
        if not isinstance(row, dict):
            raise ZscirError(f"captions file {path}, line {n}: expected a JSON object per line")
        yield f"line {n}", row


def _read_csv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        for n, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2):
            yield f"line {n}", {k.strip().lower(): v for k, v in row.items() if k is not None}


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZscirError(f"captions file {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        for key, caption in data.items():
            yield f"key {key!r}", (key, caption)
    elif isinstance(data, list):
        for n, row in enumerate(data):
            if not isinstance(row, dict):
                raise ZscirError(f"captions file {path}, entry {n}: expected an object with id and caption")
            yield f"entry {n}", row
    else:
        raise ZscirError(f"captions file {path}: expected an object id -> caption or a list of rows")


CAPTION_FILE_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
                        ".tsv": _read_csv, ".json": _read_json}


class FileCaptioner(LookupCaptioner):
    name = "file"

    def __init__(self, path: str):
        super().__init__(read_caption_file(path), f"file:sha256:{sha256_file(path)[:16]}")


class WebdatasetTextCaptioner(Captioner):
    """The sample's ``.txt`` member (img2dataset stores the alt text there), else ``.json``'s "caption"."""

    name = "webdataset-txt"
    identity = "webdataset-txt"
    needs_images = False
    cacheable = False

    def caption(self, items, images):
        return [self._text(item) for item in items]

    @staticmethod
    def _text(item: ImageItem) -> str | None:
        if "txt" in item.extras:
            text = item.extras["txt"].decode("utf-8", errors="replace").strip()
            return text or None
        try:
            text = json.loads(item.extras["json"]).get("caption")
        except (KeyError, ValueError, AttributeError):
            return None
        return text.strip() if isinstance(text, str) and text.strip() else None


# --- the shapes world --------------------------------------------------------------------------

WORLD_CAPTIONS = "unlabeled/captions.jsonl"


@dataclass(frozen=True)
class WorldCaption:
    id: str
    file: str
    caption: str
    subject: str
    attribute: str


def read_world_captions(world: str | Path) -> list[WorldCaption]:
    """The world's unlabeled captions with their ground-truth subject/attribute split."""
    path = Path(world) / WORLD_CAPTIONS
    if not path.is_file():
        raise ZscirError(f"shapes world {world}: expected {WORLD_CAPTIONS} inside it (build one with the world tools)")
    rows = []
    for where, row in _read_jsonl(path):
        try:
            rows.append(WorldCaption(*(str(row[k]) for k in ("id", "file", "caption", "subject", "attribute"))))
        except KeyError as e:
            raise ZscirError(f"{path}, {where}: missing field {e.args[0]!r} "
                             "(expected id, file, caption, subject, attribute)") from None
    return rows


class ShapesWorldCaptioner(LookupCaptioner):
    name = "shapes-world"

    def __init__(self, world: str):
        rows = read_world_captions(world)
        table = CaptionTable()
        for row in rows:
            table.add(row.file, row.caption)
            table.add(row.id, row.caption)
        super().__init__(table, f"shapes-world:sha256:{sha256_file(Path(world) / WORLD_CAPTIONS)[:16]}")
        self.splits = {row.id: (row.subject, row.attribute) for row in rows}


# --- registry ----------------------------------------------------------------------------------

# name -> (factory, the keyword that "name:arg" fills)
CAPTIONERS: dict[str, tuple[Callable[..., Captioner], str | None]] = {
    "blip": (BlipCaptioner.from_pretrained, "model"),
    "lavis": (LavisCaptioner, "model"),
    "file": (FileCaptioner, "path"),
    "webdataset-txt": (WebdatasetTextCaptioner, None),
    "shapes-world": (ShapesWorldCaptioner, "world"),
}


def build_captioner(name: str, **kw) -> Captioner:
    """Build a registered captioner; ``"file:caps.jsonl"`` is ``build_captioner("file", path="caps.jsonl")``."""
    base, sep, arg = name.partition(":")
    if base not in CAPTIONERS:
        raise ZscirError(f"--captioner {name}: expected one of {', '.join(CAPTIONERS)} (optionally name:argument)")
    factory, main_kw = CAPTIONERS[base]
    if sep:
        if main_kw is None:
            raise ZscirError(f"--captioner {name}: {base!r} takes no argument")
        kw[main_kw] = arg
    try:
        inspect.signature(factory).bind(**kw)
    except TypeError as e:
        raise ZscirError(f"--captioner {base}: {e} (given options: {', '.join(sorted(kw)) or 'none'})") from None
    return factory(**kw)
