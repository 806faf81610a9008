#!/usr/bin/env bash
# Load check: certify the whole digits train split (1,297 inputs) with ANCER thetas and the memory
# pass on, and report peak resident memory for the first 100 inputs and for all 1,297.
# Usage: bash benchmarks/load_digits_train.sh [OUT_DIR]   (about 5 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/load}
mkdir -p "$out"
py=.venv/bin/python
peak() {  # run a command, print its peak RSS in MiB (from the kernel's accounting of the child)
  "$py" - "$@" <<'PY'
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"peak RSS {peak_kib / 1024:.0f} MiB (exit code {code})", file=sys.stderr)
sys.exit(code)
PY
}
ancer() { .venv/bin/ancer "$@"; }
ancer train --out "$out/model.pt" --device cpu --force
ancer optimize --model "$out/model.pt" --split train --out "$out/thetas" --batch-size 100 \
  --iso-samples 64 --iterations 20 --samples 16 --guard-samples 64 --device cpu --force
for inputs in 100 1297; do
  echo "certify, first $inputs train inputs:" >&2
  peak .venv/bin/ancer certify --thetas "$out/thetas" --max "$inputs" --N 1000 \
    --out "$out/certify_$inputs.csv" --device cpu --force
done
