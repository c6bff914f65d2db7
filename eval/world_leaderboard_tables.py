"""Markdown tables of docs/world_leaderboard.md from two multi-seed runs of `zscir eval shapes --seeds`.

    python eval/world_leaderboard_tables.py eval/results/world_multiseed_keep.json eval/results/world_multiseed_noref.json \
        [leaderboard] [compare] [cost] [by-edit] [by-edit-contains]

KEEP is the run with the reference kept in the gallery (the world's convention, as CIRCO), NOREF the same
command with --remove-reference. Prints: per split, each row's mAP@10 and R@10 mean ± std (min-max) over
the seeds with the --remove-reference mAP@10 beside it; the --compare intervals; the generation-based rows' time
and tokens per query (from each seed's results.json, OUT/seed<N>/ beside KEEP); mAP@10 per edit type.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CPU = "AMD EPYC"   # `lscpu | grep "Model name"` of the runs in eval/results/world_multiseed_*.json


def measured(run: dict) -> str:
    return f". Measured {run['created'][:10]}, CPU: {CPU} (the `--seeds 0,1,2` commands above)."


def cell(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def leaderboard(keep: dict, noref: dict) -> list[str]:
    lines = []
    for split, rows in keep["summary"].items():
        lines += [f"**{split}** ({keep['queries'][split]} queries per seed; seeds {', '.join(map(str, keep['seeds']))}; "
                  "mean ± sample std (min-max))" + measured(keep), "",
                  "| model | mAP@10 | R@10 | share of caption oracle (mean) | mAP@10, --remove-reference |",
                  "|---|---:|---:|---:|---:|"]
        cap = rows.get("[oracle] caption", {}).get("metrics", {}).get("mAP@10", {}).get("values")
        for name, r in sorted(rows.items(), key=lambda kv: (kv[1]["oracle"], -kv[1]["metrics"]["mAP@10"]["mean"])):
            m = r["metrics"]
            share = "-" if not cap else f"{sum(v / c for v, c in zip(m['mAP@10']['values'], cap)) / len(cap):.2f}"
            other = noref["summary"].get(split, {}).get(name)
            row = f"| {name} | {cell(m['mAP@10'])} | {cell(m['R@10'])} | {share} | " \
                  f"{cell(other['metrics']['mAP@10']) if other else '-'} |"
            lines.append(row.replace(f"| {name} |", f"| *{name}* |") if r["oracle"] else row)
        lines.append("")
    return lines


def compare(keep: dict, noref: dict) -> list[str]:
    c = keep.get("compare")
    if not c:
        return []
    lines = [f"**{c['a']} - {c['b']}**, mAP@10: paired bootstrap over queries, {c['resamples']} resamples, "
             f"seed {c['seed']}, {round(100 * c['level'])}% percentile interval" + measured(keep), "",
             "| split | seed | reference kept: difference [interval] | --remove-reference: difference [interval] |",
             "|---|---:|---:|---:|"]
    for split, per in c["splits"].items():
        for seed, iv in per.items():
            other = (noref.get("compare") or {}).get("splits", {}).get(split, {}).get(seed)
            fmt = lambda v: f"{v['difference']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"
            lines.append(f"| {split} | {seed} | {fmt(iv)} | {fmt(other) if other else '-'} |")
    return lines + [""]


def by_edit(keep: dict, grouping: str = "single") -> list[str]:
    lines = []
    for split, per in (keep.get("by_edit") or {}).get("splits", {}).items():
        t = per[grouping]
        kinds = list(t["queries"])
        lines += [f"**{split}**, {grouping}: {keep['by_edit']['groupings'][grouping]}; pooled over seeds "
                  f"(min-max over seeds); queries in brackets" + measured(keep), "",
                  "| model | " + " | ".join(f"{k} ({t['queries'][k]})" for k in kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        for name, v in t["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v[k]['pooled']:.1f} ({v[k]['min']:.1f}-{v[k]['max']:.1f})"
                                                  for k in kinds) + " |")
        lines.append("")
    return lines


def cost(keep: dict, noref: dict, seed_runs: dict) -> list[str]:
    """Per split, the generation-based rows' time and generated tokens per query, mean over the seeds
    (``seed_runs``: seed -> that seed's results.json, :func:`seed_results`)."""
    if not seed_runs:
        return []
    per: dict = {}
    for seed_result in seed_runs.values():
        for m in seed_result["models"]:
            for split, r in m["splits"].items():
                if r.get("generation"):
                    per.setdefault(split, {}).setdefault(m["name"], []).append(r["generation"])
    lines = []
    for split, rows in per.items():
        lines += [f"**{split}**: generation cost per query, mean over seeds {', '.join(map(str, keep['seeds']))} "
                  "(captions and edits made or read from the one generation cache)" + measured(keep), "",
                  "| model | s/query | generated tokens/query |", "|---|---:|---:|"]
        for name, cs in rows.items():
            lines.append(f"| {name} | {sum(c['time_per_query_s'] for c in cs) / len(cs):.4f} | "
                         f"{sum(c['generated_tokens_per_query'] for c in cs) / len(cs):.1f} |")
        lines.append("")
    return lines


def seed_results(keep: dict, root: Path) -> dict:
    """seed -> the seed's results.json, found under ``root`` (KEEP's folder) as ``runs[seed]['results']``."""
    out = {}
    for seed, run in keep.get("runs", {}).items():
        path = root / run["results"]
        if path.is_file():
            out[seed] = json.loads(path.read_text())
    return out


# each section: (KEEP, NOREF, the seed runs beside KEEP) -> lines
SECTIONS = {"leaderboard": lambda keep, noref, runs: leaderboard(keep, noref),
            "compare": lambda keep, noref, runs: compare(keep, noref), "cost": cost,
            "by-edit": lambda keep, noref, runs: by_edit(keep, "single"),
            "by-edit-contains": lambda keep, noref, runs: by_edit(keep, "contains")}


def main(keep_path: str, noref_path: str, *sections: str) -> None:
    keep, noref = (json.load(open(p)) for p in (keep_path, noref_path))
    runs = seed_results(keep, Path(keep_path).parent)
    print("\n".join(line for name in (sections or SECTIONS) for line in SECTIONS[name](keep, noref, runs)))


if __name__ == "__main__":
    main(*sys.argv[1:])
