#!/bin/sh
# The FLOP-budget tables of results/README.md, section "FLOP budgets" (resumable: rows already in a CSV are skipped).
set -e
cd "$(dirname "$0")/../.."
export LBYL_CHECKPOINTS="${LBYL_CHECKPOINTS:-../shared/checkpoints}" LBYL_DATA="${LBYL_DATA:-../shared/data}"
python benchmarks/budget_table.py resnet56 --flops 0.5,0.35 --csv results/budget/resnet56.csv \
    --allocation-json results/budget/resnet56_allocation.json
python benchmarks/budget_table.py vgg16_bn --flops 0.5,0.25 --csv results/budget/vgg16_bn.csv \
    --allocation-json results/budget/vgg16_bn_allocation.json
python benchmarks/budget_report.py results/budget/resnet56.csv --allocation results/budget/resnet56_allocation.json \
    --goals 0.5=89.0,0.35=85.0 > results/budget/resnet56.md
python benchmarks/budget_report.py results/budget/vgg16_bn.csv --allocation results/budget/vgg16_bn_allocation.json \
    --goals 0.5=87.0,0.25=83.0 > results/budget/vgg16_bn.md
# the same budget through the restore.py entry point (distillation included). The committed results/budget/restore_py/
# files were written with output_dir=/tmp/r56_budget (its config.yaml says so) and copied there with the printed log
python restore.py --config configs/resnet56_cifar10.yaml "restore.methods=[prune]" "restore.ratios=[]" \
    "restore.flops=[0.5]" restore.units=all restore.refit=true output_dir=results/budget/restore_py
