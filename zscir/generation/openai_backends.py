"""Captioner and editor over an OpenAI-compatible chat endpoint: ``openai:MODEL@BASE_URL``.

The captioner sends one user turn holding the prompt and the image (a base64 PNG data URL);
the editor sends the filled prompt template (after its system text, if any). Greedy decoding
is ``temperature 0``; sampling sends ``temperature``, ``top_p`` and a ``seed`` per output
(:func:`input_seed` of the recorded seed and the input's content, plus the output's number),
and N outputs are N requests. Beam search is not part of the chat API and is refused. All
requests of a batch run ``concurrency`` at a time (see :mod:`zscir.generation.openai_client`).

``params`` are extra request fields for a server's own sampling options, sent with every request
and named in the identity: llama-cpp-python's server, for one, applies ``repeat_penalty`` 1.1
unless a request says otherwise, so greedy decoding there equals transformers' only with
``params={"repeat_penalty": 1.0}``.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

from zscir.errors import ZscirError
from zscir.generation.base import DEFAULT_EDIT_PROMPT, Captioner, Decoding, Editor, PromptTemplate, input_seed
from zscir.generation.openai_client import DEFAULT_KEY_ENV, ChatEndpoint

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
DEFAULT_MAX_NEW_TOKENS = 60


def parse_target(target: str) -> tuple[str, str]:
    """``MODEL@BASE_URL`` -> (model, base URL)."""
    model, sep, url = target.partition("@")
    if not sep or not model or not url:
        raise ZscirError(f"openai:{target}: expected openai:MODEL@BASE_URL (e.g. openai:gpt-4o-mini@https://host/v1)")
    return model, url


class _EndpointGenerator:
    """What the endpoint captioner and editor share: the client, the decoding, the request parameters."""

    def _setup(self, target: str, decoding: Decoding | None, prompt_tag: str, key_env: str, timeout: float,
               retries: int, concurrency: int, backoff: float, params: dict | None):
        model, url = parse_target(target)
        decoding = decoding or Decoding()
        if decoding.strategy == "beam":
            raise ZscirError(f"{self.name}:{target}: beam search is not available over the chat API; "
                             "use --decoding greedy or --decoding sample (with --n)")
        if decoding.max_new_tokens is None:
            decoding = replace(decoding, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        self.decoding = decoding
        self.client = ChatEndpoint(url, model, key_env=key_env, timeout=timeout, retries=retries,
                                   concurrency=concurrency, backoff=backoff)
        self.params = dict(params or {})
        self.identity = f"openai:{model}@{self.client.base_url}|{decoding.tag()}|{prompt_tag}"
        if self.params:
            self.identity += "|params=" + json.dumps(self.params, sort_keys=True, separators=(",", ":"))

    def _params(self, content: bytes) -> list[dict]:
        d = self.decoding
        if d.strategy == "greedy":
            return [{**self.params, "temperature": 0, "max_tokens": d.max_new_tokens}]
        base = input_seed(d.seed, content) % (2 ** 31)
        return [{**self.params, "temperature": d.temperature, "top_p": d.top_p, "seed": (base + i) % (2 ** 31),
                 "max_tokens": d.max_new_tokens} for i in range(d.n)]

    def _run(self, per_input: list[tuple[list[dict], list[dict]]]) -> list:
        """(messages, [params per output]) per input -> outputs per input (a string, or a list of N)."""
        flat = [(messages, params) for messages, plist in per_input for params in plist]
        answers = iter(self.client.map(flat))
        return [next(answers) if len(plist) == 1 else [next(answers) for _ in plist] for _, plist in per_input]

    def _describe_client(self) -> dict:
        return {"model": self.client.model, "base_url": self.client.base_url, "key_env": self.client.key_env,
                "params": self.params, "served_models": sorted(self.client.served_models)}


class OpenAICaptioner(_EndpointGenerator, Captioner):
    name = "openai"

    def __init__(self, target: str, prompt: str | None = None, decoding: Decoding | None = None,
                 key_env: str = DEFAULT_KEY_ENV, timeout: float = 60.0, retries: int = 4, concurrency: int = 4,
                 backoff: float = 1.0, params: dict | None = None):
        self.prompt = PromptTemplate(prompt if prompt is not None else DEFAULT_CAPTION_PROMPT, name="caption-prompt")
        self._setup(target, decoding, self.prompt.tag(), key_env, timeout, retries, concurrency, backoff, params)

    def describe(self) -> dict:
        return {**super().describe(), **self._describe_client(), "prompt": self.prompt.describe()}

    about = describe  # recorded in the cache declaration

    def caption(self, items, images):
        per_input = []
        for image in images:
            png = _png(image)
            url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            messages = [{"role": "user", "content": [{"type": "text", "text": self.prompt.text},
                                                     {"type": "image_url", "image_url": {"url": url}}]}]
            per_input.append((messages, self._params(png)))
        return self._run(per_input)


class OpenAIEditor(_EndpointGenerator, Editor):
    name = "openai"

    def __init__(self, target: str, template: PromptTemplate = DEFAULT_EDIT_PROMPT, decoding: Decoding | None = None,
                 key_env: str = DEFAULT_KEY_ENV, timeout: float = 60.0, retries: int = 4, concurrency: int = 4,
                 backoff: float = 1.0, params: dict | None = None):
        self.template = template
        self._setup(target, decoding, template.tag(), key_env, timeout, retries, concurrency, backoff, params)

    def describe(self) -> dict:
        return {**super().describe(), **self._describe_client(), "prompt": self.template.describe()}

    about = describe  # recorded in the cache declaration

    def messages(self, caption: str, instruction: str) -> list[dict]:
        system = [{"role": "system", "content": self.template.system}] if self.template.system else []
        return system + [{"role": "user", "content": self.template.fill(caption, instruction)}]

    def edit(self, pairs):
        return self._run([(self.messages(p.caption, p.instruction),
                           self._params(f"{p.caption}\0{p.instruction}".encode("utf-8"))) for p in pairs])


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
