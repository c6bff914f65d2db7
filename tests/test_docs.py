"""The README is a guide and docs/ holds the measurements: size, dating, wording, and numbers against eval/results/.

- README.md stays under 350 lines and holds no measurements (they live in docs/).
- Every table in docs/*.md is dated and says its CPU: between the table and the heading or table before
  it there is a date (YYYY-MM-DD) and "CPU:", or the words "Not a measurement" (settings, published numbers).
- No line of README.md, CONTRIBUTING.md or docs/ dates itself by the rhythm of the work ("this session",
  "this machine", "today", "the previous ... code"): a reader can act on a date and a CPU, not on those.
- The search tables of docs/search_performance.md equal the JSON of the runs they come from.
"""

from __future__ import annotations

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "eval" / "results"

WORK_RHYTHM = [
    r"\bthis session\b",
    r"\b(previous|earlier|next|last|same|that) session\b",
    r"\bsession's (code|machine|run)",
    r"\bthis machine\b",
    r"\btoday\b",
    r"\byesterday\b",
    r"\bthe previous\b[^.|]{0,40}\bcode\b",
    r"\bthe development machine\b",
]
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _tables(lines: list[str]):
    """Yield (first line number, lines of the context before it, table rows) for each markdown table."""
    context, rows, in_code = [], [], False
    for n, line in enumerate(lines + [""], start=1):
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            yield n - len(rows), context, rows
            context, rows = [], []
        if not in_code and line.startswith("#"):
            context = []
        context.append(line)


def test_readme_is_a_guide_under_350_lines():
    lines = _lines(ROOT / "README.md")
    assert len(lines) < 350, f"README.md has {len(lines)} lines: move measurements and details to docs/"
    measured = [f"README.md:{n}: {line.strip()[:100]}" for n, line in enumerate(lines, 1)
                if re.search(r"\d\s?(ms|img/s|samples/s|req/s|QPS)\b", line)]
    assert not measured, "measurements in README.md (they belong in docs/):\n" + "\n".join(measured)
    assert "## Quick start" in lines, "README.md lost its '## Quick start' section (CI runs its bash block)"


def test_every_docs_table_has_a_date_and_a_cpu():
    assert DOCS, "no docs/*.md pages"
    bad = []
    for page in DOCS:
        for n, context, rows in _tables(_lines(page)):
            text = " ".join(context)
            if "Not a measurement" in text:
                continue
            if not (DATE.search(text) and "CPU:" in text):
                bad.append(f"{page.relative_to(ROOT)}:{n}: table '{rows[0][:60]}' has no date and 'CPU:' before it")
    assert not bad, "\n".join(bad)


def test_no_line_dates_itself_by_the_work_rhythm():
    bad = []
    for path in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS]:
        for n, line in enumerate(_lines(path), 1):
            for pattern in WORK_RHYTHM:
                if re.search(pattern, line, re.IGNORECASE):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: '{pattern}' in: {line.strip()[:100]}")
    assert not bad, "say the date and the CPU instead:\n" + "\n".join(bad)


# --- numbers against eval/results --------------------------------------------------------------------


def _section_table(page: pathlib.Path, header_start: str) -> list[list[str]]:
    """The body rows (cells, markup stripped) of the table whose header row starts with ``header_start``."""
    for _, _, rows in _tables(_lines(page)):
        if rows[0].startswith(header_start):
            return [[c.strip().replace("*", "") for c in r.strip().strip("|").split("|")] for r in rows[2:]]
    raise AssertionError(f"{page.relative_to(ROOT)}: no table starting {header_start!r}")


def _close(page_value: str, value: float) -> bool:
    """``page_value`` is ``value`` to its last printed digit (one unit of slack: the .md files round twice)."""
    text = page_value.replace(",", "").rstrip("x")
    decimals = len(text.partition(".")[2])
    return abs(float(text) - value) <= 10 ** -decimals + 1e-9


def _number(cell: str) -> str:
    return re.match(r"[\d.,]+x?", cell).group(0)


def test_exact_search_table_equals_its_json():
    exact = json.loads((RESULTS / "search_exact_1m.json").read_text())["results"][0]["exact"]
    rows = _section_table(ROOT / "docs" / "search_performance.md", "| exact, 1M x 512 fp16")
    single, batch = rows
    checks = [
        (single[1], exact["single_ms"]), (_number(single[2]), exact["single_over_stream_read"]),
        (re.search(r"read: ([\d.]+) ms", single[2]).group(1), exact["stream_read_ms"]),
        (single[3], exact["qps_single"]), (batch[1], exact["batch16_ms"]),
        (_number(batch[3]), exact["qps_batch16"]),
        (re.search(r"\(([\d.]+)x", batch[3]).group(1), exact["batch16_qps_over_single"]),
    ]
    bad = [f"page {p} != json {v:.4f}" for p, v in checks if not _close(p, v)]
    assert not bad, "docs/search_performance.md exact table vs eval/results/search_exact_1m.json:\n" + "\n".join(bad)


def _check_curve_rows(rows, curve, label):
    by_knob = {point["knob"]: point for point in curve}
    bad = []
    for cells in rows:
        knob = int(re.search(r"(\d+)$", cells[0]).group(1))
        point = by_knob[knob]
        want = [point["plain"]["ms"], point["plain"]["recall@50"], point["composed"]["ms"],
                point["composed"]["recall@10"], point["composed"]["recall@50"]]
        for page_value, value in zip(cells[1:6], want):
            if not _close(page_value, value):
                bad.append(f"{label} {cells[0]}: page {page_value} != json {value:.4f}")
    return bad


def test_10m_table_equals_its_json():
    curve = json.loads((RESULTS / "search_ann_10m.json").read_text())["results"][0]["methods"]["pqfs"]["reranked"]
    rows = _section_table(ROOT / "docs" / "search_performance.md", "| IVF16384,PQ256x4fs + re-rank 8k")
    assert len(rows) == 3
    bad = _check_curve_rows(rows, curve, "10M")
    assert not bad, "docs/search_performance.md 10M table vs eval/results/search_ann_10m.json:\n" + "\n".join(bad)


def test_1m_table_equals_its_json():
    methods = json.loads((RESULTS / "search_ann_1m.json").read_text())["results"][0]["methods"]
    rows = _section_table(ROOT / "docs" / "search_performance.md", "| index | bytes / vector | knob")
    bad = []
    for cells in rows:
        label = cells[0]
        if label.startswith("HNSW"):
            method = methods["hnsw"]  # run on the first 200k vectors; its knob is efSearch
        else:
            method = next(m for m in methods.values() if m.get("factory") == label.split(" + ")[0])
        curve = method["reranked"] if "re-rank" in label else method["curve"]
        # the page's columns: index, bytes, knob, plain ms, plain R@50, composed ms, R@10, R@50, first run
        bad += _check_curve_rows([[cells[2], *cells[3:8]]], curve, label)
    assert not bad, "docs/search_performance.md 1M table vs eval/results/search_ann_1m.json:\n" + "\n".join(bad)
