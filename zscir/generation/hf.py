"""Loading transformers models for generation: a local folder or the Hugging Face cache, never a silent fallback.

:func:`load_pretrained` returns the loaded objects and a ``model_ref`` for the identity:
``local-sha256:<hashes of the weight files>`` for a folder, ``<hub id>@<commit>`` for a hub
model. A model that is neither a folder nor in the cache (offline, or the download fails)
is a :class:`MissingWeightsError` of one line saying how to supply it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from huggingface_hub import constants as hub

from zscir.errors import MissingWeightsError, ZscirError
from zscir.generation.base import input_seed
from zscir.utils.hashing import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def pick_device(device: str | None) -> str:
    import torch  # heavy

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(device: str, half: bool | None):
    import torch  # heavy

    return torch.float16 if (half if half is not None else device.startswith("cuda")) else torch.float32


def local_model_ref(folder: Path) -> str:
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return "local-sha256:" + "+".join(sha256_file(p)[:16] for p in weights)


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if error.args and str(error).strip() else type(error).__name__


def load_pretrained(label: str, model: str, load: Callable[..., tuple], cache_dir: str | None = None,
                    revision: str | None = None, expected: str = "a model and its processor") -> tuple[tuple, str]:
    """``load(source, **from_pretrained_kwargs) -> objects`` from a folder or the hub cache; (objects, model_ref)."""
    local = Path(model).expanduser()
    if local.exists():
        try:
            objects = load(str(local))
        except (OSError, ValueError, KeyError) as e:
            raise ZscirError(f"--model {model}: expected a folder written by save_pretrained() with {expected} "
                             f"({label}): {first_line(e)}") from None
        return objects, local_model_ref(local)

    def from_hub(local_only: bool):
        return load(model, cache_dir=cache_dir, revision=revision, local_files_only=local_only)

    try:
        objects = from_hub(local_only=True)
    except Exception:  # not in the cache (OSError) or a broken cache entry
        if hub.is_offline_mode():
            raise MissingWeightsError(missing_message(label, model, cache_dir or hub.HF_HUB_CACHE, "offline mode")) from None
        try:
            objects = from_hub(local_only=False)
        except Exception as e:  # no network, unknown repo, interrupted download
            raise MissingWeightsError(missing_message(label, model, cache_dir or hub.HF_HUB_CACHE, first_line(e))) from None
    config = getattr(objects[0], "config", None)
    commit = getattr(config, "_commit_hash", None) or revision or "unknown-revision"
    return objects, f"{model}@{commit}"


def missing_message(label: str, model: str, cache: str, reason: str) -> str:
    return (f"{label} weights {model!r} are not in the Hugging Face cache ({cache}) and cannot be downloaded "
            f"({reason}): run `hf download {model}` where there is network and copy that cache here "
            f"(or set HF_HOME), or pass a local folder saved with save_pretrained() as --model DIR")


def decode_new(tokenizer, sequences, prompt_length: int) -> list[str]:
    """The generated part of each sequence (a decoder-only model returns the prompt too)."""
    return tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)


def group(texts: list[str], n: int) -> list:
    """``n`` consecutive outputs per input (transformers returns them flat); one output stays a string."""
    if n == 1:
        return list(texts)
    return [texts[i:i + n] for i in range(0, len(texts), n)]


def seeded_groups(decoding, contents: list[bytes]) -> list[tuple[list[int], int | None]]:
    """How to split a batch for generate(): all at once, or (sampling) one input per call with its own seed.

    Sampling seeds each input from its content (:func:`input_seed`), so its outputs do not depend
    on the batch it came in; greedy and beam search are deterministic and stay batched.
    """
    if decoding.strategy != "sample":
        return [(list(range(len(contents))), None)]
    return [([i], input_seed(decoding.seed, content)) for i, content in enumerate(contents)]


def image_content(image) -> bytes:
    """The bytes that identify a decoded image for seeding: its size, mode and pixels."""
    return f"{image.size}{image.mode}".encode() + image.tobytes()
