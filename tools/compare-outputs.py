#!/usr/bin/env python3
"""compare-outputs.py BEFORE AFTER -- the result files of two tools/snapshot-outputs.sh runs
are the same: every CSV cell (timings, memory and paths aside) and every saliency shard
equal, and every metrics.json field that is a result (a recorded setting renamed since,
hpcsnp.config.RENAMED, is compared under its new name).  Prints each difference; exit 1 if any."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.config import RENAMED

VOLATILE = ("seconds", "rss", "per_s", "gflops", "utilisation", "affinity", "host", "command", "store",
            "versions", "slurm", "thread_pools", "provenance", "train_samples")


def volatile(key: str) -> bool:
    return any(v in key for v in VOLATILE)


def json_diffs(va, vb, key: str) -> list[str]:
    """'key a -> b' for every result that differs, at any depth (timings inside lists and
    dicts, e.g. each model's seconds in seed_runs, are skipped like top-level ones)."""
    if volatile(key.rsplit(".", 1)[-1]) or va == vb:
        return []
    if isinstance(va, dict) and isinstance(vb, dict):
        va, vb = ({RENAMED.get(k, k): v for k, v in d.items()} for d in (va, vb))
        return [d for kk in sorted(set(va) | set(vb)) for d in json_diffs(va.get(kk), vb.get(kk), f"{key}.{kk}")]
    if isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb):
        return [d for i, (x, y) in enumerate(zip(va, vb)) for d in json_diffs(x, y, f"{key}[{i}]")]
    return [f"{key} {va!r} -> {vb!r}"]


def compare(before: Path, after: Path) -> list[str]:
    diffs = []
    for a in sorted(before.rglob("*")):
        rel = a.relative_to(before)
        b = after / rel
        if a.is_dir() or "logs" in rel.parts or "gram" in a.name or a.suffix in (".png", ".npy", ".lock"):
            continue
        if not b.exists():
            diffs.append(f"{rel}: missing after")
        elif a.suffix == ".csv":
            fa, fb = pd.read_csv(a), pd.read_csv(b)
            keep = [c for c in fa.columns if not volatile(c)]
            if list(fa.columns) != list(fb.columns) or not fa[keep].equals(fb[keep]):
                diffs.append(f"{rel}: differs")
        elif a.name == "metrics.json" or a.name == "dataset.json":
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            for k in sorted(set(ma) | set(mb)):
                if k == "store_id":
                    continue
                diffs += [f"{rel}: {d}" for d in json_diffs(ma.get(k), mb.get(k), k)]
        elif a.name == "c" and "saliency.zarr" in rel.parts:
            pass
        elif a.parent.name == "saliency.zarr" and a.name == "zarr.json":
            import zarr

            if not np.array_equal(zarr.open_array(str(a.parent))[:], zarr.open_array(str(b.parent))[:]):
                diffs.append(f"{rel.parent}: saliency differs")
    return diffs


if __name__ == "__main__":
    d = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(d) if d else "identical results")
    sys.exit(1 if d else 0)
