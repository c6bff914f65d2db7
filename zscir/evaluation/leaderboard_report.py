"""The leaderboard's extra tables: the reference convention, paired bootstrap intervals, mAP@10 per edit
type, and the multi-seed summary (:mod:`zscir.evaluation.seeds`), as :class:`~zscir.evaluation.tables.Table`."""

from __future__ import annotations

from zscir.evaluation.tables import Table, fmt, markdown_lines, text_lines

SUMMARY_METRICS = ("mAP@10", "R@10")   # printed per split in the multi-seed table (results.json has all)


def reference_note(protocol: dict | None) -> str:
    """"; reference image kept in the gallery (...)" for a header line ("" when the protocol does not say)."""
    keep = None if not protocol or "remove_reference" not in protocol else not protocol["remove_reference"]
    if keep is None:
        return ""
    if keep:
        return ("; reference image kept in the gallery (CIRCO's convention: it is ranked like any image); "
                "--remove-reference drops it from its own ranking")
    return ("; reference image removed from its own ranking; --keep-reference keeps it in the gallery "
            "(CIRCO's convention)")


def _interval(iv: dict) -> str:
    return f"[{iv['low']:+.2f}, {iv['high']:+.2f}]"


def _compare_title(c: dict) -> str:
    return (f"paired bootstrap {c['a']} - {c['b']}, {c['metric']}: {round(100 * c['level'])}% percentile interval, "
            f"{c['resamples']} resamples of the queries, seed {c['seed']}")


def compare_table(results: dict) -> list[Table]:
    c = results.get("compare")
    if not c:
        return []
    rows = [[split, str(iv["queries"]), f"{iv['difference']:+.2f}", _interval(iv), "yes" if iv["contains_zero"] else "no"]
            for split, iv in c["splits"].items()]
    return [Table(_compare_title(c), ["split", "queries", f"{c['a']} - {c['b']}", "interval", "contains 0"], rows)]


def _edit_tables(by_edit: dict, cell) -> list[Table]:
    out = []
    for split, per in (by_edit or {}).get("splits", {}).items():
        for grouping, t in per.items():
            kinds = list(t["queries"])
            cols = ["model"] + [f"{k} ({t['queries'][k]})" for k in kinds]
            rows = [[name] + [cell(v[k]) for k in kinds] for name, v in t["rows"].items()]
            note = by_edit["groupings"][grouping]
            out.append(Table(f"{split} {by_edit['metric']} by edit type, {grouping}: {note} (queries)", cols, rows))
    return out


def extra_tables(results: dict, by_edit: bool = False) -> list[Table]:
    """One run's compare table, and with ``by_edit`` its per-edit-type tables."""
    return compare_table(results) + (_edit_tables(results.get("by_edit"), fmt) if by_edit else [])


# ---------------------------------------------------------------- several seeds
def _spread(s: dict) -> list[str]:
    return [fmt(s["mean"]), fmt(s["std"]), f"{s['min']:.2f}-{s['max']:.2f}"]


def seed_tables(combined: dict, by_edit: bool = False) -> list[Table]:
    seeds = combined["seeds"]
    out = []
    for split, rows in combined["summary"].items():
        cols = ["model"]
        for metric in SUMMARY_METRICS:
            cols += [f"{metric} mean", "std", "min-max"]
        cols += [f"{SUMMARY_METRICS[0]} seed {s}" for s in seeds]
        table_rows = []
        for name, r in rows.items():
            row = [name]
            for metric in SUMMARY_METRICS:
                row += _spread(r["metrics"][metric])
            table_rows.append(row + [fmt(v) for v in r["metrics"][SUMMARY_METRICS[0]]["values"]])
        out.append(Table(f"{split}: mean and spread over seeds {', '.join(map(str, seeds))} "
                         f"({combined['queries'][split]} queries per seed; std: sample, ddof=1)", cols, table_rows))
    c = combined.get("compare")
    if c:
        rows = [[split, str(seed), str(iv["queries"]), f"{iv['difference']:+.2f}", _interval(iv),
                 "yes" if iv["contains_zero"] else "no"]
                for split, per in c["splits"].items() for seed, iv in per.items()]
        out.append(Table(_compare_title(c), ["split", "seed", "queries", f"{c['a']} - {c['b']}", "interval",
                                             "contains 0"], rows))
    if by_edit:
        out += _edit_tables(combined.get("by_edit"), lambda v: f"{v['pooled']:.2f} ({v['min']:.2f}-{v['max']:.2f})")
    return out


def _seed_header(combined: dict) -> str:
    protocol = combined.get("protocol") or {}
    return (f"{combined['title']} over seeds {', '.join(map(str, combined['seeds']))} - protocol: "
            f"remove_reference={protocol.get('remove_reference')}" + reference_note(protocol))


def seeds_text(combined: dict, by_edit: bool = False) -> str:
    lines = [_seed_header(combined)] + text_lines(seed_tables(combined, by_edit))
    lines += ["", f"results: {combined['out_dir']}/results.json, results.md; each seed's run in "
                  f"{combined['out_dir']}/seed<N>/"]
    return "\n".join(lines)


def seeds_markdown(combined: dict) -> str:
    lines = [f"# {combined['title']} evaluation over seeds {', '.join(map(str, combined['seeds']))}", "",
             f"`{combined.get('command')}`; {combined['created']}, {combined.get('seconds', '?')} s", "",
             _seed_header(combined).split(" - ", 1)[1], "",
             "By edit type: each cell is the pooled mean over every seed's queries of that type, "
             "(min-max) over the seeds.", ""]
    lines += markdown_lines(seed_tables(combined, by_edit=True))
    lines += ["## Runs", ""]
    lines += [f"- seed {s}: `{r['root']}` -> `{r['results']}`" for s, r in combined["runs"].items()]
    lines.append("")
    return "\n".join(lines)
