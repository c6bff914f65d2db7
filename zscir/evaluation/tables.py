"""Tables of an evaluation, rendered as plain text (the terminal) or Markdown (the run directory)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


def fmt(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


def numeric(t: Table, i: int) -> bool:
    try:
        return all(r[i] == "-" or float(r[i]) is not None for r in t.rows)
    except ValueError:
        return False


def text_lines(tables: list[Table]) -> list[str]:
    """Each table: a blank line, its title, the header, a rule and the rows (numeric columns right-aligned)."""
    lines = []
    for t in tables:
        widths = [max(len(r[i]) for r in [t.columns] + t.rows) for i in range(len(t.columns))]
        lines.append("")
        lines.append(t.title)
        right = [i > 0 and numeric(t, i) for i in range(len(t.columns))]
        for r in [t.columns, None] + t.rows:
            if r is None:
                lines.append("  ".join("-" * w for w in widths))
                continue
            lines.append("  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return lines


def markdown_lines(tables: list[Table]) -> list[str]:
    """Each table: a ``##`` heading with its title, then a Markdown table and a blank line."""
    lines = []
    for t in tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(t.columns) + " |",
                  "|" + "|".join("---:" if i > 0 and numeric(t, i) else "---" for i in range(len(t.columns))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in t.rows]
        lines.append("")
    return lines
