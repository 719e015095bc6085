#!/usr/bin/env bash
# VGG16-BN (shared checkpoint), all 10,000 images of the CIFAR-10 JPEG q75 test copy: every method without and with
# the refit on distilled inputs (no data), LBYL with the refit on 128 real training images (uses data), then the
# other five criteria at 30 and 50 % with LBYL + refit. Methods at their defaults (LBYL lambda1 1e-6, lambda2 1e-2; NM
# t 0.1, lambda 0.85), not the paper's per-ratio lambdas. Appends to table.csv; re-running skips what is there.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LBYL_DATA=${LBYL_DATA:-../shared/data} LBYL_CHECKPOINTS=${LBYL_CHECKPOINTS:-../shared/checkpoints}
csv=results/refit/vgg16/table.csv
t=${THREADS:-1}
python benchmarks/refit_table.py vgg16_bn --methods prune,merge,lbyl,fusion --ratios 0.1,0.2,0.3,0.4,0.5 \
  --refit none,distilled --threads $t --csv $csv
python benchmarks/refit_table.py vgg16_bn --methods lbyl --ratios 0.1,0.2,0.3,0.4,0.5 --refit real --threads $t --csv $csv
# the other five criteria, LBYL + refit only (their starts without the refit: §2's tables, with the paper's lambdas)
python benchmarks/refit_table.py vgg16_bn --methods lbyl --criteria l1-norm,l2-GM,random_1,random_2,random_3 \
  --ratios 0.3,0.5 --refit distilled --threads $t --csv results/refit/vgg16/criteria.csv
