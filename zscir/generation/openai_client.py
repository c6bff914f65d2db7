"""A client for OpenAI-compatible chat endpoints (vLLM, llama.cpp's server, Ollama, hosted APIs).

Standard library only (``urllib``, ``concurrent.futures``). One request is
``POST {base_url}/chat/completions``; the answer's ``choices[0].message.content`` is the
output. The rules:

- the key comes from an environment variable (``OPENAI_API_KEY`` unless named otherwise) and
  is sent as ``Authorization: Bearer``; without it no header is sent (local servers need none);
  the key is never part of an identity or a message;
- each request has a timeout; a 429, a 5xx, a timeout, a refused or dropped connection and a
  malformed answer are retried ``retries`` times with exponential backoff (``Retry-After`` is
  honoured, capped at ``max_backoff``); then :class:`GenerationUnavailable` with one line
  naming the endpoint and the last reason. Other HTTP errors (401, 404, ...) are not retried;
- :meth:`ChatEndpoint.map` runs requests with at most ``concurrency`` in flight and returns
  the answers in input order.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from zscir.errors import ZscirError
from zscir.generation.base import GenerationUnavailable

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class _Retry(Exception):
    """A failure worth another attempt; ``wait`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class ChatEndpoint:
    def __init__(self, base_url: str, model: str, key_env: str = DEFAULT_KEY_ENV, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, concurrency: int = 4,
                 sleep: Callable[[float], None] = time.sleep):
        if not base_url.startswith(("http://", "https://")):
            raise ZscirError(f"endpoint {base_url!r}: expected an http:// or https:// base URL (e.g. http://127.0.0.1:8080/v1)")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ZscirError("endpoint: expected concurrency >= 1, retries >= 0 and a positive timeout")
        self.base_url, self.model, self.key_env = base_url.rstrip("/"), model, key_env
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.concurrency, self.sleep = concurrency, sleep
        self.served_models: set[str] = set()  # the "model" the server says answered (hosted models drift)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def complete(self, messages: list[dict], **params) -> str:
        """One chat completion's text, retried as the module says."""
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        last, wait = "no attempt", None
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(self.max_backoff, max(self.backoff * 2 ** (attempt - 1), wait or 0.0)))
            try:
                return self._once(body)
            except _Retry as e:
                last, wait = e.reason, e.wait
        raise GenerationUnavailable(f"endpoint {self.url} (model {self.model}): {last} after {self.retries + 1} "
                                    "attempts: check that the server runs and the URL and model are right "
                                    "(--captioner/--editor openai:MODEL@URL)")

    def _once(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retry(f"HTTP {e.code}", _retry_after(e.headers.get("Retry-After"))) from None
            hint = f": set {self.key_env}" if e.code in (401, 403) else ""
            raise GenerationUnavailable(f"endpoint {self.url} (model {self.model}): HTTP {e.code} "
                                        f"{_error_text(e)}{hint}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry(f"no answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Retry(f"unreachable ({reason})") from None
        try:
            answer = json.loads(raw)
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry(f"malformed answer ({raw[:80]!r})") from None
        if not isinstance(content, str):
            raise _Retry("malformed answer (the message has no text content)")
        if isinstance(answer.get("model"), str):
            self.served_models.add(answer["model"])
        return content

    def map(self, requests: Sequence[tuple[list[dict], dict]]) -> list[str]:
        """``complete(messages, **params)`` for each (messages, params), ``concurrency`` at a time, in order."""
        if self.concurrency == 1 or len(requests) <= 1:
            return [self.complete(m, **p) for m, p in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self.complete(r[0], **r[1]), requests))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(300).decode("utf-8", "replace")
    except OSError:
        return ""
    return " ".join(text.split())[:160]
