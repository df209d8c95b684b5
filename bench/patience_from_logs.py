"""What a shorter early-stopping patience would have kept, read off a finished run's fold logs.

A shorter patience does not change a model's trajectory up to where it stops (the learning
rate has a patience of its own), and each epoch's log line names the best epoch so far, so
for patience P the model would have stopped at its first epoch P past the best so far and
kept that best.  Exact for every model of the run (the second models included, whose
histories metrics.json does not keep); prints, for P = 2 .. 5, the models whose kept epoch
would change and the epochs (and their seconds) saved.

usage: python bench/patience_from_logs.py RUN_DIR   (an `hpcsnp cv` run: RUN_DIR/logs/*.log)
"""

import re
import sys
from pathlib import Path

LINE = re.compile(r"^\[(\S+) fold (\d+)(?: seed (\d+))?\] epoch\s+(\d+) .* best \S+ @ (\d+)\s+([\d.]+)s")


def epochs_by_model(run: Path) -> dict:
    """(data set, fold, seed) -> [(epoch, best epoch so far, seconds)], from the fold logs."""
    models = {}
    for log in sorted(run.glob("logs/*.log")):
        for line in log.open():
            m = LINE.match(line)
            if m:
                models.setdefault((m[1], int(m[2]), int(m[3] or 0)), []).append((int(m[4]), int(m[5]), float(m[6])))
    return models


def main(run: Path) -> None:
    models = epochs_by_model(run)
    total = sum(len(v) for v in models.values())
    print(f"{len(models)} models, {total} epochs")
    for patience in (2, 3, 4, 5):
        changed, saved, seconds = [], 0, 0.0
        for (name, fold, seed), epochs in models.items():
            best_at = dict((e, b) for e, b, _ in epochs)
            stop = next((e for e, b, _ in epochs if e - b >= patience), epochs[-1][0])
            saved += epochs[-1][0] - stop
            seconds += sum(s for e, _, s in epochs if e > stop)
            if best_at[stop] != epochs[-1][1]:
                changed.append(f"{name} fold {fold} seed {seed}: epoch {best_at[stop]} not {epochs[-1][1]}")
        print(f"patience {patience}: {len(changed)} models keep another epoch; {saved} epochs saved "
              f"({saved / max(total, 1):.0%}, {seconds:.0f} s)")
        for c in changed:
            print("   ", c)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
