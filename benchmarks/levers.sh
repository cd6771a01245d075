#!/usr/bin/env bash
# Issue 33's levers, one training step at a time (bench_step.py), side by side in one go:
# each lever alone and together at 8 x 128 tokens, then the best combination at short
# (32) and long (256) rows. Writes benchmarks/results/levers_<tag>.json.
# With "methods": instead, one profiled step of instruct and of the encoder at short (32)
# and 128 text tokens, batch 8, into benchmarks/results/levers_methods_<tag>.json.
# Usage: bash benchmarks/levers.sh TAG [methods]   (run nothing else meanwhile)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TAG=${1:?a tag for the results files, e.g. amx}
MODE=${2:-levers}
step() { local name=$1; shift; $PY benchmarks/bench_step.py --name "step_${TAG}_$name" "$@" 2>&1 | grep "ms/step"; }
# one results file for a set of step files: CASES_GLOB, the prefix and suffix each case
# name loses, the file written
fold() {
  $PY - "$@" <<'PY'
import json, sys
from pathlib import Path

pattern, prefix, suffix, name = sys.argv[1:]
results = Path("benchmarks/results")
cases, machine = {}, None
for path in sorted(results.glob(pattern)):
    result = json.loads(path.read_text())
    machine = result.pop("machine")
    cases[path.stem.removeprefix(prefix).removesuffix(suffix)] = result
    path.unlink()
out = results / name
out.write_text(json.dumps({"machine": machine, "date": result["date"], "cases": cases}, indent=1))
print(f"wrote {out}")
PY
}
if [ "$MODE" = methods ]; then
  for method in instruct encoder; do
    for length in 32 128; do
      $PY benchmarks/bench_step.py --method $method --length $length --batch-size 8 \
        --dtype auto --profile --name "step_${method}_${length}_${TAG}" 2>&1 | grep "ms/step"
    done
  done
  fold "step_*_*_${TAG}.json" step_ "_${TAG}" "levers_methods_${TAG}.json"
  exit
fi
step 128x8_base --length 128 --batch-size 8
step 128x8_nocast --length 128 --batch-size 8 --no-input-cast
step 128x8_math --length 128 --batch-size 8 --sdpa math
step 128x8_nocast_math --length 128 --batch-size 8 --no-input-cast --sdpa math
step 128x8_lora_qv --length 128 --batch-size 8 --no-input-cast --sdpa math --option target_modules=q_proj,v_proj
step 128x8_compile_blocks --length 128 --batch-size 8 --no-input-cast --compile blocks
step 128x16_nocast_math --length 128 --batch-size 16 --no-input-cast --sdpa math
step 32x8_base --length 32 --batch-size 8
step 32x8_nocast_math --length 32 --batch-size 8 --no-input-cast --sdpa math
step 32x64_nocast_math --length 32 --batch-size 64 --no-input-cast --sdpa math
step 256x8_base --length 256 --batch-size 8
step 256x8_nocast --length 256 --batch-size 8 --no-input-cast
step 256x8_nocast_math --length 256 --batch-size 8 --no-input-cast --sdpa math
# the step as llmclf now runs it by default (no cast, the probe's kernel: math at these
# shapes on the AMX Xeon), profiled, and the opt-in levers on top of it
step 128x8_defaults_profile --length 128 --batch-size 8 --no-input-cast --sdpa math --profile
step 128x8_defaults_compile --length 128 --batch-size 8 --no-input-cast --sdpa math --compile blocks
step 32x64_defaults_compile --length 32 --batch-size 64 --no-input-cast --sdpa math --compile blocks
step 256x8_defaults_compile --length 256 --batch-size 8 --no-input-cast --compile blocks
fold "step_${TAG}_*.json" "step_${TAG}_" "" "levers_${TAG}.json"
