"""The text parsers behind one registry, and the choice made when none is named."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from zscir.errors import ZscirError
import zscir.text.sng as sng
from zscir.text.graph import ParsedText
from zscir.text.rules import RuleParser

PARSERS: dict[str, Callable[[], object]] = {"rules": RuleParser, "sng": sng.SceneGraphParser}


def resolve_parser_name(name: str = "auto") -> str:
    """``auto``: SceneGraphParser when it and a spaCy English pipeline are installed, else the rules."""
    if name == "auto":
        return "sng" if sng.available() else "rules"
    if name not in PARSERS:
        raise ZscirError(f"unknown text parser {name!r}: expected auto or one of {', '.join(PARSERS)}")
    return name


@lru_cache(maxsize=None)
def get_parser(name: str = "auto"):
    """A parser object with ``.name`` and ``.parse(text) -> ParsedText``."""
    return PARSERS[resolve_parser_name(name)]()


def parse_text(text: str, parser: str = "auto") -> ParsedText:
    return get_parser(parser).parse(text)
