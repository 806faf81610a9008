#!/usr/bin/env bash
# The GPU check: ancer's CUDA tests and its GPU benchmark in one command (at most ~6 minutes on
# one modern GPU), summarised in one JSON and one markdown file.
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh                  # on a CUDA machine
#   PYTHONPATH=src bash benchmarks/gpu_check.sh --out "$OUT"     # the same, results into $OUT
#   bash benchmarks/gpu_check.sh --device cpu --quick            # CPU rehearsal (CI runs it)
#
# Steps: (1) probe the machine and the packages; (2) the CUDA tests, `pytest -m cuda` on the test
# modules that have any (skipped without CUDA); (3) `benchmarks/gpu_check_bench.py`:
# resnet110 (CIFAR) and resnet50 (ImageNet) in fp32, bf16 and bf16 + channels-last -- certify
# overhead R, speed-up over the faithful Cohen loop, ANCER step against its bound, the targets.
# Needs PyTorch, torchvision, numpy, scipy, typer, rich, pandas and scikit-learn, and pytest for
# step 2 (without pytest that step fails and says so, and the benchmark still runs); no install
# step, no download. It sets PYTHONPATH=src itself.
#
# Options:
#   --device auto|cpu|cuda|cuda:K   default auto (CUDA; without CUDA only with --quick)
#   --quick                         tiny sizes (the CPU rehearsal; seconds)
#   --out DIR                       default $OUT if set, else gpu-check/
#   --python PY                     default $PYTHON, else .venv/bin/python if present, else python3
#   --budget SECONDS                wall time for the whole check (default 345)
#
# Writes DIR/gpu-check.json, DIR/gpu-check.md (both rewritten after every step), the full log
# DIR/gpu-check.log and pytest's DIR/cuda-tests.xml. Exit code 0 when every check passed or was
# skipped, 1 when one failed (one line says which), 2 on a usage error. Timings are reported,
# never pass/fail gates.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

device=auto
quick=0
out="${OUT:-gpu-check}"
python="${PYTHON:-}"
budget=345
while [ $# -gt 0 ]; do
    case "$1" in
        --device) [ $# -ge 2 ] || { echo "gpu_check: --device needs a value" >&2; exit 2; }; device="$2"; shift 2 ;;
        --device=*) device="${1#*=}"; shift ;;
        --quick) quick=1; shift ;;
        --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        --python) [ $# -ge 2 ] || { echo "gpu_check: --python needs a program" >&2; exit 2; }; python="$2"; shift 2 ;;
        --python=*) python="${1#*=}"; shift ;;
        --budget) [ $# -ge 2 ] || { echo "gpu_check: --budget needs seconds" >&2; exit 2; }; budget="$2"; shift 2 ;;
        --budget=*) budget="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$budget" in
    ''|*[!0-9]*) echo "gpu_check: --budget must be a whole number of seconds, got '$budget'" >&2; exit 2 ;;
esac

command_line="bash benchmarks/gpu_check.sh --device $device"
if [ "$quick" = 1 ]; then command_line="$command_line --quick"; fi
command_line="$command_line --out $out"
mkdir -p "$out" || { echo "gpu_check: cannot create the output folder $out" >&2; exit 1; }
out="$(cd "$out" && pwd)"
if [[ "$python" == */* && "$python" != /* ]]; then python="$(pwd)/$python"; fi  # before the cd
cd "$(dirname "$0")/.."
repo="$(pwd)"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
command -v "$python" >/dev/null || { echo "gpu_check: no Python program '$python' (give --python)" >&2; exit 1; }
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ "$device" == cuda:* ]]; then  # the tests use the default device: make cuda:K that one
    export CUDA_VISIBLE_DEVICES="${device#cuda:}"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
trap 'echo "gpu_check: failed at line $LINENO ($BASH_COMMAND); see $out/gpu-check.log" >&2' ERR
log="$out/gpu-check.log"
steps="$work/steps.tsv"
: >"$log"
: >"$steps"
rm -f "$out/cuda-tests.xml" "$out/gpu-check.json" "$out/gpu-check.md"
started="$(date +%s)"
test_files=()
quick_flag=()
if [ "$quick" = 1 ]; then quick_flag=(--quick); fi
have_timeout=0
if command -v timeout >/dev/null; then have_timeout=1; fi

say() { echo "gpu_check: $*" | tee -a "$log" >&2; }

# limit SECONDS CMD...: run CMD, killed after SECONDS (exit code 124) where `timeout` exists
limit() {
    local seconds="$1"
    shift
    if [ "$have_timeout" = 1 ]; then timeout --kill-after=10 "$seconds" "$@"; else "$@"; fi
}

summarize() {  # summarize [--final]
    "$python" benchmarks/gpu_check_report.py summarize --steps "$steps" --env "$work/env.json" \
        --junit "$out/cuda-tests.xml" --bench "$work/bench.json" \
        --bench-markdown "$work/bench.md" --out "$out" --command "$command_line" \
        --device "$device" ${quick_flag[@]+"${quick_flag[@]}"} --budget "$budget" \
        --started "$started" --test-files ${test_files[@]+"${test_files[@]}"} "$@"
}

# record NAME STATUS SECONDS DETAIL: one step's outcome, then the summary so far
record() {
    local detail="${4//$'\t'/ }"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${detail//$'\n'/ }" >>"$steps"
    say "$1: $2${4:+ ($4)}"
    summarize || say "could not write the summary so far"
}

remaining() { echo $((budget - ($(date +%s) - started))); }

# 1. the machine ------------------------------------------------------------------------------
say "probing $python (device $device) ..."
began="$(date +%s)"
rc=0
resolved="$("$python" benchmarks/gpu_check_report.py probe --device "$device" \
    ${quick_flag[@]+"${quick_flag[@]}"} --json "$work/env.json" 2>"$work/probe.err")" || rc=$?
cat "$work/probe.err" >>"$log"
if [ "$rc" != 0 ]; then
    reason="$(grep '^gpu_check:' "$work/probe.err" | tail -n 1 | sed 's/^gpu_check: //' || true)"
    if [ -z "$reason" ]; then
        reason="$python could not probe the machine: $(tail -n 1 "$work/probe.err") (see $log)"
    fi
    [ -s "$work/env.json" ] || echo '{}' >"$work/env.json"
    record environment failed "$(($(date +%s) - began))" "$reason"
    summarize --final || true
    exit 1
fi
what="$resolved"
if [ "$resolved" = cuda ]; then
    what="cuda ($("$python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("gpu"))' \
        "$work/env.json" || echo '?'))"
fi
record environment passed "$(($(date +%s) - began))" "$what, $python"

# 2. the CUDA tests ---------------------------------------------------------------------------
began="$(date +%s)"
while IFS= read -r file; do test_files+=("$file"); done \
    < <(grep -rlE --include='test_*.py' -e 'pytest\.mark\.cuda\b' tests | sort || true)
if ! "$python" -c 'import pytest' 2>/dev/null; then
    record cuda-tests failed "$(($(date +%s) - began))" \
        "pytest cannot be imported, so the CUDA tests did not run (python -m pip install pytest); the benchmark still runs"
elif [ "${#test_files[@]}" = 0 ]; then
    record cuda-tests failed 0 "no test module under tests/ has a cuda-marked test"
else
    say "CUDA tests: pytest -m cuda ${test_files[*]}"
    rc=0
    (
        # the rehearsal hides any GPU, so its tests skip exactly as on a machine without one
        if [ "$resolved" = cpu ]; then export CUDA_VISIBLE_DEVICES=""; fi
        limit 170 "$python" -m pytest -m cuda -p no:cacheprovider -q -rfEs \
            --junitxml="$out/cuda-tests.xml" "${test_files[@]}"
    ) 2>&1 | tee -a "$log" || rc=$?
    seconds="$(($(date +%s) - began))"
    counts="$("$python" -c '
import sys
sys.path.insert(0, "benchmarks")
from gpu_check_report import read_junit
from pathlib import Path
found = read_junit(Path(sys.argv[1]))
print("" if found is None else " ".join(f"{k}={v}" for k, v in found["counts"].items()))
' "$out/cuda-tests.xml" || true)"
    passed=0 failed=0 error=0 skipped=0
    for pair in $counts; do declare "${pair%%=*}=${pair#*=}"; done
    tally="$passed passed, $failed failed, $error errors, $skipped skipped"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record cuda-tests failed "$seconds" "timed out after 170 s ($tally)"
    elif [ "$rc" != 0 ]; then
        record cuda-tests failed "$seconds" "pytest exited $rc ($tally)"
    elif [ "$passed" = 0 ] && [ "$skipped" -gt 0 ]; then
        record cuda-tests skipped "$seconds" "no CUDA device: $skipped tests skipped"
    elif [ "$passed" = 0 ]; then
        record cuda-tests failed "$seconds" "no test ran ($tally)"
    else
        record cuda-tests passed "$seconds" "$tally"
    fi
fi

# 3. the benchmark ----------------------------------------------------------------------------
began="$(date +%s)"
left="$(remaining)"
bench_limit=$((left - 15))  # the summary's time
if [ "$bench_limit" -lt 30 ]; then
    record benchmark failed 0 "no time left in the ${budget}-s budget (${left} s)"
else
    # start no new model/option after this, so the one in flight can finish within the limit
    bench_budget=$((bench_limit * 2 / 3))
    bench_args=(--device "$resolved" --time-budget "$bench_budget"
        --json "$work/bench.json" --markdown "$work/bench.md")
    if [ "$quick" = 1 ]; then bench_args+=(--quick); fi
    if [ "$resolved" = cpu ]; then  # a shared CPU: no threads spinning while they wait
        bench_args+=(--threads 1)
    fi
    say "benchmark: gpu_check_bench.py ${bench_args[*]} (at most $bench_limit s)"
    rc=0
    limit "$bench_limit" "$python" benchmarks/gpu_check_bench.py "${bench_args[@]}" 2>&1 | tee -a "$log" || rc=$?
    seconds="$(($(date +%s) - began))"
    measured="$("$python" -c '
import json, sys
try:
    gpu = json.load(open(sys.argv[1])).get("gpu") or {}
except (OSError, ValueError):
    gpu = {}
rows, skipped = len(gpu.get("rows", [])), len(gpu.get("skipped", []))
print(f"{rows} of {rows + skipped} model/option pairs measured" if rows or skipped else "nothing measured")
' "$work/bench.json" || echo "figures unreadable")"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record benchmark failed "$seconds" "timed out after $bench_limit s; $measured (kept)"
    elif [ "$rc" != 0 ]; then
        record benchmark failed "$seconds" "gpu_check_bench.py exited $rc; $measured"
    else
        record benchmark passed "$seconds" "$measured"
    fi
fi

rc=0
summarize --final || rc=$?
exit "$rc"
