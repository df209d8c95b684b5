#!/usr/bin/env bash
# snapshot-outputs.sh OUT_DIR [SMALL_TSV] -- run the demo and a small CV and keep their
# outputs, to show that a change of the code's shape left the results identical:
#   tools/snapshot-outputs.sh /tmp/before; (change); tools/snapshot-outputs.sh /tmp/after
#   tools/compare-outputs.py /tmp/before /tmp/after
# SMALL_TSV: a data file for the small CV [a simulated 600 x 1,000 one].
set -euo pipefail
out="$1"
small="${2:-}"
mkdir -p "$out"
hpcsnp demo "$out/demo" --no-progress > "$out/demo.stdout" 2> "$out/demo.stderr"
if [ -z "$small" ]; then
  hpcsnp simulate "$out/small.tsv.gz" --samples 600 --snps 1000 --causal 8 --folds 5 --missing 0.1 --seed 4 >/dev/null
  small="$out/small.tsv.gz"
fi
hpcsnp ingest "$small" -o "$out/small.zarr" --force --no-progress > /dev/null
hpcsnp cv "$out/small.zarr" --run "$out/cv" --epochs 30 --no-progress > "$out/cv.stdout" 2> "$out/cv.stderr"
