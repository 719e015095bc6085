#!/usr/bin/env bash
# Choosing the refit's defaults on our own small CNNs, evaluated on the 5,000 training images left out of their
# training (--split holdout), never on a test set. LBYL start (paper variant, published-style defaults), l2-norm.
# Each line appends to the CSV beside it; re-running skips the rows already there.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LBYL_DATA=${LBYL_DATA:-../shared/data} LBYL_CHECKPOINTS=${LBYL_CHECKPOINTS:-../shared/checkpoints}
for net in ${NETS:-mixnet stridenet}; do
  csv=results/refit/defaults/$net.csv
  # 1. which statistics the inputs match, and how long they are distilled
  python benchmarks/refit_table.py $net --split holdout --methods lbyl --ratios 0.3,0.5 --refit none,distilled \
    --options '{"stats": "image"}' '{"stats": "batch"}' '{"stats": "both"}' \
    '{"stats": "batch", "iterations": 100}' --threads ${THREADS:-1} --csv $csv
  # 2. the ridge grid (same inputs: no new distillation), the class-conditional term, more inputs
  python benchmarks/refit_table.py $net --split holdout --methods lbyl --ratios 0.3,0.5 --refit distilled \
    --options '{"alphas": [0.01]}' '{"alphas": [0.0001, 0.001, 0.01, 0.1, 1.0]}' \
    '{"class_weight": 0.1}' '{"n": 256}' --threads ${THREADS:-1} --csv $csv
  # 3. start methods, and kept sets chosen on the inputs (output-energy)
  python benchmarks/refit_table.py $net --split holdout --methods prune,merge,fusion --ratios 0.3,0.5 \
    --refit none,distilled,real --threads ${THREADS:-1} --csv $csv
  python benchmarks/refit_table.py $net --split holdout --methods prune,lbyl --criteria output-energy \
    --ratios 0.3,0.5 --refit none,distilled --threads ${THREADS:-1} --csv $csv
done
