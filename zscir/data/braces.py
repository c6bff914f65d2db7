"""Shell-style brace patterns for ``--images`` (``cc3m/{00000..00331}.tar``, ``{a,b}``)."""

from __future__ import annotations

import re

from zscir.errors import ZscirError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{00000..00003}`` (zero padding kept) and ``{a,b}``; nestable."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        raise ZscirError(f"--images {pattern}: unbalanced '{{' in brace pattern")
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    match = _RANGE.match(body)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = _split_top_level(body)
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        current += ch
    return parts + [current]
