#!/usr/bin/env bash
# ResNet-56 (Neuron Merging's checkpoint), the 1,000 lossless CIFAR-10 test images: every method without the refit,
# with the refit on distilled inputs (no data) and with the refit on 128 real (lossless) training images (uses
# data). Methods at their defaults (LBYL lambda1 1e-6, lambda2 1e-2; NM t 0.1, lambda 0.85). Appends to table.csv.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LBYL_DATA=${LBYL_DATA:-../shared/data} LBYL_CHECKPOINTS=${LBYL_CHECKPOINTS:-../shared/checkpoints}
python benchmarks/refit_table.py resnet56 --methods prune,merge,lbyl,fusion --ratios 0.1,0.2,0.3,0.4,0.5 \
  --refit none,distilled,real --threads ${THREADS:-1} --csv results/refit/resnet56/table.csv
