#!/usr/bin/env bash
# LeNet-300-100 (authors' checkpoint, no BatchNorm), 10,000 Fashion-MNIST test images: every method without the
# refit, with the refit on DeepInversion inputs (bn_free: the default refuses a network without BN, this measures
# why), and with the refit on 128 real training images (uses data). Methods at their defaults.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LBYL_DATA=${LBYL_DATA:-../shared/data} LBYL_CHECKPOINTS=${LBYL_CHECKPOINTS:-../shared/checkpoints}
python benchmarks/refit_table.py lenet300 --methods prune,merge,lbyl,fusion --ratios 0.5,0.6,0.7,0.8 \
  --refit none,distilled,real --options '{"bn_free": "deepinversion"}' --threads ${THREADS:-1} \
  --csv results/refit/lenet300/table.csv
