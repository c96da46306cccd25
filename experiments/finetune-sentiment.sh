#!/usr/bin/env bash
# Reproduces the fine-tuning table of the README: all-MiniLM-L6-v2 on the 3,000 pooled
# sentiment sentences, one stratified 70/30 split (2,100 train / 900 test), every run
# scored on the same 900 test rows against frozen features + logistic regression.
# Usage: bash experiments/finetune-sentiment.sh [tl binary]   (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
tl=${1:-target/release/tl}
[ -x "$tl" ] || cargo build --release -p tl-cli
run() { echo "== tl finetune $*"; "$tl" finetune --force "$@"; }
for split in 0 1 2; do
  run --name "minilm-sentiment-full-split$split" --split-seed "$split" --strategy full --epochs 3 --lr 2e-5
done
run --name minilm-sentiment-top2 --strategy top:2 --epochs 3 --lr 1e-4
run --name minilm-sentiment-contrastive --strategy contrastive --epochs 1 --pairs-per-item 4
for k in 8 32; do
  for seed in 0 1 2; do
    run --name "minilm-sentiment-k$k-s$seed" --strategy contrastive --shots "$k" --seed "$seed" \
        --epochs 1 --pairs-per-item 20
  done
done
