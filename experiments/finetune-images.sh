#!/usr/bin/env bash
# Reproduces the image fine-tuning table of the README: MobileNetV2 and EfficientNet-Lite0
# fine-tuned on MNIST (the 10,000 / 2,000 stratified subset of experiments/mnist.toml) and
# on optdigits (stratified 70/30 split), each scored on its held-out rows against frozen
# features + logistic regression.
# Usage: bash experiments/finetune-images.sh [tl binary]   (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
tl=${1:-target/release/tl}
[ -x "$tl" ] || cargo build --release -p tl-cli
run() { echo "== tl finetune $*"; "$tl" finetune --force "$@"; }
for model in mobilenetv2 efficientnet-lite0; do
  run --model "$model" --dataset mnist --train-rows 10000 --test-rows 2000 --resolution 64 \
      --epochs 5 --name "$model-mnist"
  run --model "$model" --dataset optdigits --resolution 64 --epochs 10 --name "$model-optdigits"
done
