"""Modification-text parsing: entities with their attribute words, and relations.

    from zscir.text import parse_text
    parsed = parse_text("make the large red circle blue and add a small star at the top")
    [e.phrase for e in parsed.entities]   # ['large red circle', 'small star at the top']
"""

from zscir.text.graph import Entity, ParsedText, Relation
from zscir.text.parsers import PARSERS, get_parser, parse_text, resolve_parser_name

__all__ = ["Entity", "Relation", "ParsedText", "PARSERS", "get_parser", "parse_text", "resolve_parser_name"]
