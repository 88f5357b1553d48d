"""Markdown tables from ``effattn bench -o`` JSON files, for docs/benchmarks.md (numbers are never typed by hand).

python benchmarks/tables.py benchmarks/results/cpu-hosts.json [--backend onnxruntime]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows_table(data: dict, backends: list[str]) -> str:
    """One line per (model, shape): eager and each backend's median, and the ratio to eager."""
    rows = data["rows"]
    keys = list(dict.fromkeys((r["model"], tuple(r["shape"])) for r in rows))
    head = "| model | input | eager ms | " + " | ".join(f"{b} ms | ratio" for b in backends) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(backends))]
    for model, shape in keys:
        by = {r["backend"]: r for r in rows if r["model"] == model and tuple(r["shape"]) == shape}
        eager = by.get("torch", {})
        if not any(r.get("median_ms") for r in by.values()):  # not run on any backend: say why, once
            lines.append(
                f"| {model} | {'x'.join(map(str, shape))} | {eager.get('status', '-')} |" + " |" * (2 * len(backends))
            )
            continue
        cells = [model, "x".join(map(str, shape)), _ms(eager)]
        for b in backends:
            r = by.get(b, {})
            cells += [_ms(r), f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else r.get("status", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_table(data: dict) -> str:
    lines = ["| model | backend | time exponent | memory exponent | fitted sizes |", "|---|---|---:|---:|---|"]
    lines += [
        f"| {s['model']} | {s['backend']} | {s['time_exponent']} | {s['memory_exponent']} | "
        f"{', '.join(map(str, s['fit_sizes']))} |"
        for s in data["scaling"]["exponents"]
    ]
    return "\n".join(lines)


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.2f}" if row.get("median_ms") is not None else row.get("status", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--backend", nargs="+", default=["onnxruntime"])
    args = parser.parse_args()
    data = json.loads(args.file.read_text())
    print(rows_table(data, args.backend))
    if data.get("scaling", {}).get("exponents"):
        print()
        print(scaling_table(data))
    env = data["environment"]
    print(
        f"\n{env['cpu']}, {env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"{env['date'][:10]}; `{env.get('command')}`"
    )


if __name__ == "__main__":
    main()
