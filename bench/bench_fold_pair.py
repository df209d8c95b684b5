"""The same folds trained by two source trees at once: the speed of a change that should keep
every result, and the proof that it does.

usage: python bench/bench_fold_pair.py OLD_TREE NEW_TREE --store S.zarr [--store T.zarr]
           [--folds 1,2] [--baseline] --work DIR [-- hpcsnp train (or baseline) options]

A tree is a directory holding the ``hpcsnp`` package, e.g. a worktree of an older commit
(``git worktree add /tmp/old COMMIT``); each runs ``python -m hpcsnp train`` with this
interpreter and PYTHONPATH=TREE.  Each round trains one (store, fold) with both trees at the
same time, each process pinned to its own core with one thread (how ``hpcsnp cv`` runs
folds on 2 cores), and the cores are swapped every round, so both trees meet the same
machine.  Per fold it prints both trees' wall seconds and peak RSS (GNU time), the mean
epoch seconds (metrics.json) and whether the fold's prediction files (test, validation, per
model) are identical byte for byte.  Exits 1 when any fold's predictions differ.

``--baseline``: the fold's baselines instead (``hpcsnp baseline -i FOLD --encoding all``); per
fold and model, both trees' seconds (metrics.json, the Gram matrix's first computation left
out), test PCC and the largest difference between their test predictions.  The first round
also computes each run directory's Gram matrices.
"""

import argparse
import filecmp
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_full_cv import _finish, _start  # noqa: E402

PREDICTIONS = ("predictions.csv", "val_predictions.csv", "seed_predictions.csv")


TRAIN, BASELINE = ("train",), ("baseline", "--encoding", "all")  # the verb a round runs, with its options


def fold_command(tree: Path, verb: tuple, store: Path, fold: int, run: Path, extra: list[str]):
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "HPCSNP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # --force: a fold finished by an earlier round in the same work directory runs again
    return [sys.executable, "-m", "hpcsnp", *verb, store, "-i", fold, "--run", run, "--force", *extra], env


def check_tree(tree: Path, m: dict) -> None:
    """Exits unless the record ``m`` was written by ``tree``'s code (PYTHONPATH not shadowed)."""
    if not m["command"].startswith(str(tree.resolve() / "hpcsnp")):
        sys.exit(f"a fold meant for {tree} ran {m['command'].split()[0]}")


def baseline_records(run: Path, store: Path, fold: int) -> dict:
    """model -> (metrics.json, test predictions) of one baseline fold."""
    import pandas as pd

    out = {}
    for d in sorted((run / store.name.removesuffix(".zarr")).glob(f"baseline_*/fold_{fold}")):
        m = json.loads((d / "metrics.json").read_text())
        out[m["model"]] = (m, pd.read_csv(d / "predictions.csv")["prediction"].to_numpy())
    return out


def compare_baselines(runs: dict, trees: dict, store: Path, fold: int) -> bool:
    """Prints each model's seconds, PCC and largest prediction difference; True when all equal."""
    import numpy as np

    old, new = (baseline_records(runs[w], store, fold) for w in ("old", "new"))
    for which, records in (("old", old), ("new", new)):
        for m, _ in records.values():
            check_tree(trees[which], m)
    same = old.keys() == new.keys()
    for model in sorted(old.keys() & new.keys()):
        (mo, po), (mn, pn) = old[model], new[model]
        diff = float(np.max(np.abs(po - pn))) if len(po) == len(pn) else float("inf")
        same &= diff == 0.0
        so, sn = (m["seconds"] - m.get("gram_seconds", 0.0) for m in (mo, mn))
        print(f"    {model:12s} {so:7.1f} {sn:7.1f}  {sn / so:7.3f}  PCC {mo['pcc']:.4f} -> {mn['pcc']:.4f}  "
              f"largest prediction difference {diff:.2g}", flush=True)
    return same


def fold_record(run: Path, store: Path, fold: int) -> tuple[Path, dict]:
    out = run / store.name.removesuffix(".zarr") / f"fold_{fold}"
    return out, json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--store", type=Path, action="append", required=True)
    ap.add_argument("--folds", default="1,2")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--baseline", action="store_true", help="the folds' baselines instead of their CNN")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # options for hpcsnp train (both trees)
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two cores: both trees train at once, one core each")
    for tree in (a.old, a.new):
        if not (tree / "hpcsnp" / "__init__.py").is_file():
            sys.exit(f"{tree}: no hpcsnp package there")
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    runs = {"old": a.work / "run_old", "new": a.work / "run_new"}
    trees = {"old": a.old, "new": a.new}
    verb = BASELINE if a.baseline else TRAIN
    rounds = [(s.resolve(), int(f)) for s in a.store for f in a.folds.split(",")]
    differ = 0
    print(f"{'store':14s} fold  {'old s':>7s} {'new s':>7s}  new/old  {'epoch s old/new':>15s}  "
          f"{'RSS MB old/new':>14s}  predictions")
    for i, (store, fold) in enumerate(rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        procs = {}
        for cpu, which in zip(cpus, order):
            cmd, env = fold_command(trees[which], verb, store, fold, runs[which], extra)
            # run from the work directory: `python -m` puts the working directory first on
            # sys.path, and a tree there (this repository's root) would shadow PYTHONPATH
            procs[which] = (_start(cmd, env, cpu, cwd=a.work), time.perf_counter(), cmd)
        with ThreadPoolExecutor(len(procs)) as pool:  # each waited for at once: its own wall time
            res = {w: pool.submit(_finish, p, t0, cmd, a.work / f"log_{w}_{store.stem}_{fold}")
                   for w, (p, t0, cmd) in procs.items()}
            res = {w: r.result() for w, r in res.items()}
        if a.baseline:
            print(f"{store.stem:14s} {fold:4d}  {res['old'][0]:7.1f} {res['new'][0]:7.1f}  "
                  f"{res['new'][0] / res['old'][0]:7.3f}  {'':15s}  {res['old'][1]:6.0f} / {res['new'][1]:5.0f}")
            differ += not compare_baselines(runs, trees, store, fold)
            continue
        (old_dir, old_m), (new_dir, new_m) = (fold_record(runs[w], store, fold) for w in ("old", "new"))
        for which, m in (("old", old_m), ("new", new_m)):  # each fold ran the code of its own tree
            check_tree(trees[which], m)
        both = [(old_dir / f, new_dir / f) for f in PREDICTIONS if (old_dir / f).exists() or (new_dir / f).exists()]
        same = all(o.exists() and n.exists() and filecmp.cmp(o, n, shallow=False) for o, n in both)
        differ += not same
        epoch = [sum(m["epoch_seconds"]) / len(m["epoch_seconds"]) for m in (old_m, new_m)]
        print(f"{store.stem:14s} {fold:4d}  {res['old'][0]:7.1f} {res['new'][0]:7.1f}  "
              f"{res['new'][0] / res['old'][0]:7.3f}  {epoch[0]:7.2f} / {epoch[1]:5.2f}  "
              f"{res['old'][1]:6.0f} / {res['new'][1]:5.0f}  {'identical' if same else 'DIFFER'}", flush=True)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
