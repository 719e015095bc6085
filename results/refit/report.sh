#!/usr/bin/env bash
# The Markdown tables of results/README.md §11, from the CSVs the run.sh scripts wrote (exactly these commands).
set -euo pipefail
cd "$(dirname "$0")/../.."
r="python benchmarks/refit_report.py"
$r results/refit/defaults/mixnet.csv --by options --title "mixnet (ours, 75.15 on the JPEG test copy): 5,000 held-out CIFAR-10 training images (JPEG q75 copy), top-1" > results/refit/defaults/mixnet.md
$r results/refit/defaults/stridenet.csv --by options --title "stridenet (ours, 74.23 on the JPEG test copy): 5,000 held-out CIFAR-10 training images (JPEG q75 copy), top-1" > results/refit/defaults/stridenet.md
$r results/refit/lenet300/table.csv --title "LeNet-300-100 (authors' checkpoint, no BatchNorm), Fashion-MNIST test (10,000 images), top-1" > results/refit/lenet300/refit.md
$r results/refit/resnet56/table.csv --title "ResNet-56 (Neuron Merging's checkpoint), 1,000 lossless CIFAR-10 test images, l2-norm, top-1 without fine-tuning" > results/refit/resnet56/refit.md
$r results/refit/vgg16/table.csv --title "VGG16-BN (shared checkpoint), CIFAR-10 JPEG q75 test copy (10,000 images), l2-norm, top-1 without fine-tuning" > results/refit/vgg16/refit.md
$r results/refit/vgg16/criteria.csv --title "VGG16-BN, CIFAR-10 JPEG q75 test copy (10,000 images): LBYL + refit on distilled inputs, five more criteria" > results/refit/vgg16/criteria.md
