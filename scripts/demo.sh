#!/usr/bin/env bash
# The main job end to end on the embedded digits dataset:
#   train -> optimize (isotropic stage + ANCER) -> certify (fixed sigma, isotropic, ANCER) -> accuracy
# Sizes are chosen to take a few minutes on 2 CPU cores (README, Quick start); certify gets
# --seed 0 so that the demo prints the same table every time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ancer() { .venv/bin/ancer "$@"; }

out=${ANCER_DEMO_DIR:-runs/demo}
inputs=${ANCER_DEMO_INPUTS:-100}   # the first test inputs (dataset indices 0..inputs-1)
n=${ANCER_DEMO_N:-10000}           # certification samples per input (the papers use 100,000)
mkdir -p "$out"
start=$(date +%s)

ancer train --dataset digits --sigma 0.25 --out "$out/model.pt" --device cpu --force
ancer optimize --model "$out/model.pt" --out "$out/thetas" --max "$inputs" --device cpu --force
ancer certify --model "$out/model.pt" --sigma 0.25 --max "$inputs" --N "$n" --seed 0 \
  --out "$out/fixed.csv" --device cpu --force
ancer certify --thetas "$out/thetas/isotropic" --N "$n" --seed 0 --out "$out/isotropic.csv" --device cpu --force
ancer certify --thetas "$out/thetas" --N "$n" --seed 0 --out "$out/ancer.csv" --device cpu --force
ancer accuracy "$out/fixed.csv" "$out/isotropic.csv" "$out/ancer.csv" \
  --label fixed --label isotropic --label ancer \
  --radius 0 --radius 0.25 --radius 0.5 --radius 0.75 --radius 1.0 --radius 1.25 --radius 1.5

echo "demo finished in $(( $(date +%s) - start ))s; files in $out/" >&2
