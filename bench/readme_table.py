"""The README's evaluation tables, generated from bench/train_eval.py's JSON (not by hand).

Usage: .venv/bin/python bench/readme_table.py bench/results/train_eval.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from musecl_store.downstream.evaluation import EMBEDDINGS


def seed_table(run: dict[str, Any]) -> str:
    recs = run["records"]
    inds = list(dict.fromkeys(r["indicator"] for r in recs))
    by = {(r["embedding"], r["indicator"], r["head"]): r for r in recs}
    sec = run["seconds"]
    lines = [
        f"**Seed {run['seed']}** — train {sec['train']:.0f} s + evaluate {sec['evaluate']:.0f} s"
        f" = {run['train_plus_evaluate_s']:.0f} s",
        "",
        "| embedding | " + " | ".join(inds) + " | mean (MLP) | mean (ridge) |",
        "| --- |" + " --- |" * (len(inds) + 2),
    ]
    for emb in EMBEDDINGS:
        if emb not in run["mean_r2_mlp"]:
            continue
        cells = [
            f"{by[(emb, i, 'mlp')]['r2']:.3f} ± {by[(emb, i, 'mlp')]['r2_std']:.3f}" for i in inds
        ]
        name = "**fused** (all branches)" if emb == "fused" else emb
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | **{run['mean_r2_mlp'][emb]:.3f}** | {run['mean_r2_ridge'][emb]:.3f} |"
        )
    ceiling = run["latent_ceiling"]
    lines.append(
        "| *latent ceiling (ridge on the true factors)* | "
        + " | ".join(f"{ceiling['r2'][i]:.3f}" for i in inds)
        + f" | {ceiling['mean']:.3f} | |"
    )
    done = run["done_when"]
    lines.append("")
    lines.append(
        "fused / best of counts, concat and single modalities: "
        + ", ".join(
            f"{h} {d['ratio']:.3f} (vs {d['best_baseline']})" for h, d in done.items() if d["ratio"]
        )
    )
    return "\n".join(lines)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        bench = json.load(fh)
    print("\n\n".join(seed_table(run) for run in bench["runs"]))


if __name__ == "__main__":
    main()
