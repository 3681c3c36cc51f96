"""Rebuild data/banking77_demo/banking77_demo.csv: N rows per intent drawn from data/banking77/train.csv.

Deterministic (seeded). Usage: python scripts/make_demo_subset.py [--per-intent 10] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-intent", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    df = pl.read_csv(ROOT / "data/banking77/train.csv")
    # distinct texts only, so no intent loses rows to exact duplicates at ingest
    df = df.unique(subset=["text"], keep="first", maintain_order=True)
    out = (df.sample(fraction=1.0, shuffle=True, seed=a.seed)
             .group_by("category", maintain_order=True).head(a.per_intent)
             .sort("category"))
    dst = ROOT / "data/banking77_demo/banking77_demo.csv"
    out.select("text", "category").write_csv(dst)
    print(f"{out.height} rows ({out['category'].n_unique()} intents × {a.per_intent}) → {dst}")


if __name__ == "__main__":
    main()
