"""Evaluation results as tables: plain text for the terminal, Markdown for the run directory.

One table per split (families that split by category, FashionIQ: one per split,
a column pair per category plus the category means), a row per model.
"""

from __future__ import annotations

from zscir.evaluation import leaderboard_report
from zscir.evaluation.families import FAMILIES
from zscir.evaluation.tables import Table, markdown_lines, text_lines


SHARE_OF = "caption"     # the oracle every row is compared with
SHARE_METRIC = "mAP@10"


def share_of_caption_oracle(results: dict, split: str, metrics: dict | None) -> float | None:
    """``metrics[SHARE_METRIC]`` as a fraction of the caption oracle's on ``split`` (None without one)."""
    for o in results.get("oracles") or []:
        if o["kind"] == SHARE_OF and split in o["splits"]:
            ceiling = (o["splits"][split]["metrics"] or {}).get(SHARE_METRIC)
            if ceiling and metrics and SHARE_METRIC in metrics:
                return metrics[SHARE_METRIC] / ceiling
    return None


def _fmt(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


def _split_info(results: dict, split: str) -> dict:
    for m in results["models"]:
        if split in m["splits"]:
            return m["splits"][split]
    return {}


def _category_mean(info: dict) -> bool:
    """Whether the split's family averages its categories (its splits get one table per category group)."""
    family = FAMILIES.get(info.get("kind"))
    return family is not None and family.category_mean is not None


def tables(results: dict) -> list[Table]:
    out: list[Table] = []
    done: set[str] = set()
    for split in results["splits"]:
        if split in done:
            continue
        info = _split_info(results, split)
        if _category_mean(info) and info.get("category") and info.get("metrics"):
            group = split.replace(f"/{info['category']}/", "/")
            members = [s for s in results["splits"] if s.replace(f"/{_split_info(results, s).get('category')}/", "/") == group]
            done.update(members)
            out.append(_category_table(results, group, members))
            continue
        done.add(split)
        out.append(_split_table(results, split, info))
        if any("multiturn" in m["splits"].get(split, {}) for m in results["models"]):
            out.append(_turn_table(results, split))
    return out


def _turn_table(results: dict, split: str) -> Table:
    """Multi-turn splits: per turn, each model in both modes (true previous scene, closed loop)."""
    models = [m for m in results["models"] if "multiturn" in m["splits"].get(split, {})]
    first = models[0]["splits"][split]["multiturn"]
    turns, keys = list(first["turns"]), first["metrics"]
    cols = ["model", "mode"] + [f"t{t} {k}" for t in turns for k in keys]
    rows = []
    for m in models:
        per = m["splits"][split]["multiturn"]["turns"]
        for mode in first["modes"]:
            rows.append([m["name"], mode] + [_fmt(per[t][mode][k]) for t in turns for k in keys])
    counts = ", ".join(f"t{t}: {first['turns'][t]['queries']}" for t in turns)
    return Table(f"{split} per turn (queries {counts}); closed_loop: each turn starts from the previous top-1",
                 cols, rows)


def _split_table(results: dict, split: str, info: dict) -> Table:
    title = f"{split}: {info.get('queries', '?')} queries, gallery of {info.get('gallery', '?')}"
    metrics = info.get("metrics")
    if not metrics:
        rows = [[m["name"], ", ".join(m["splits"][split]["rankings"])] for m in results["models"]]
        return Table(title + " (no ground truth: submission files written)", ["model", "rankings"], rows)
    cols = list(metrics)
    rows = [[m["name"]] + [_fmt(m["splits"][split]["metrics"][c]) for c in cols] for m in results["models"]]
    cost = [m["splits"][split].get("generation") for m in results["models"]]
    extra = []
    if any(cost):   # generation-based rows: their time and generated tokens per query
        extra = ["s/query", "gen tokens/query"]
        rows = [r + (["-", "-"] if c is None else [f"{c['time_per_query_s']:.4f}", f"{c['generated_tokens_per_query']:.1f}"])
                for r, c in zip(rows, cost)]
    oracles = [o for o in results.get("oracles") or [] if split in o["splits"] and o["splits"][split]["metrics"]]
    if not oracles:
        return Table(title, ["model"] + cols + extra, rows)
    rows += [[o["name"]] + [_fmt(o["splits"][split]["metrics"][c]) for c in cols] + ["-"] * len(extra)
             for o in oracles]
    # ceilings: rows marked [oracle], and every row's share of the caption oracle
    shares = [share_of_caption_oracle(results, split, e["splits"][split]["metrics"])
              for e in results["models"] + oracles]
    rows = [r + ["-" if x is None else f"{x:.2f}"] for r, x in zip(rows, shares)]
    return Table(title, ["model"] + cols + extra + [f"{SHARE_METRIC} / {SHARE_OF} oracle"], rows)


def _category_table(results: dict, group: str, members: list[str]) -> Table:
    cats = [_split_info(results, s)["category"] for s in members]
    keys = list(_split_info(results, members[0])["metrics"])
    cols = [f"{c} {k}" for c in cats for k in keys]
    rows = []
    for m in results["models"]:
        agg = m["aggregates"].get(group, {}).get("metrics", {})
        agg_cols = list(agg)
        row = [m["name"]] + [_fmt(m["splits"][s]["metrics"][k]) for s in members for k in keys]
        rows.append(row + [_fmt(agg[k]) for k in agg_cols])
    agg_names = [f"mean {k}" if k != "avg" else "avg" for k in results["models"][0]["aggregates"].get(group, {}).get("metrics", {})]
    n_q = sum(_split_info(results, s)["queries"] for s in members)
    return Table(f"{group}: {n_q} queries over {len(members)} categories", ["model"] + cols + agg_names, rows)


def text(results: dict, by_edit: bool = False) -> str:
    """The terminal report; ``by_edit`` adds the per-edit-type tables (results.md always has them)."""
    lines = [f"{results['title']} - protocol: " + ", ".join(
        f"{k}={v}" for k, v in (results.get("protocol") or {}).items()
        if k in ("remove_reference", "fiq_captions", "fine_gallery", "preprocess"))
        + leaderboard_report.reference_note(results.get("protocol"))]
    lines += text_lines(tables(results) + leaderboard_report.extra_tables(results, by_edit))
    lines.append("")
    lines.append(f"results: {results['out_dir']}/results.json, results.md; rankings in {results['out_dir']}/rankings/")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    lines = [f"# {results['title']} evaluation", "",
             f"zscir {results['zscir_version']}, {results['created']}, {results.get('seconds', '?')} s; "
             f"data: `{results['root']}`", ""]
    lines += [leaderboard_report.reference_note(results.get("protocol")).lstrip("; "), ""]
    lines += markdown_lines(tables(results) + leaderboard_report.extra_tables(results, by_edit=True))
    lines += ["## Protocol", ""]
    lines += [f"- {k}: {v}" for k, v in (results.get("protocol") or {}).items()]
    if results.get("oracles"):
        lines += ["", "## Oracles (ceilings, not models)", ""]
        lines += [f"- **{o['name']}**: {o['description']}" for o in results["oracles"]]
    lines += ["", "## Models", ""]
    for m in results["models"]:
        lines.append(f"- **{m['name']}**: `{m['model']}`, backbone {m['backbone']}, preprocess {m['preprocess']}, "
                     f"{m['seconds']} s")
        for split, r in m["splits"].items():
            t = ", ".join(f"{k} {v:.2f} s" for k, v in r["timings_s"].items())
            fc = r["feature_cache"]
            extra = ""
            if r["skipped_queries"] or r["corrupt_images"]:
                extra = f"; {len(r['corrupt_images'])} corrupt images, {r['skipped_queries']} queries skipped"
            lines.append(f"  - {split}: {t}; features {fc['encoded']} encoded, {fc['reused']} reused{extra}")
    lines.append("")
    return "\n".join(lines)
