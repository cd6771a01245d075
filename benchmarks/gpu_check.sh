#!/usr/bin/env bash
# The GPU path, exercised (issue 20): one prepared check for a lent GPU machine (one NVIDIA
# H200, no network; its python3 has torch 2.11+cu130, transformers 5.17, peft, accelerate,
# but no bitsandbytes, gguf or llmclf). Within --budget seconds (default 480) it
#   installs llmclf from this tree and the carried wheels (never torch) into a folder on
#     PYTHONPATH: that python3 is itself a venv, so a --system-site-packages venv made from
#     it would not see its packages;
#   runs the gpu-marked tests, then the unit suite with CUDA visible;
#   builds an 8B-shaped random Llama there (make_random_model.py; 16 GB, never carried);
#   times head QLoRA training (--quantize 4bit, bf16, 512 tokens) against the reference
#     recipe, with peak GPU memory and real tokens/s (bench_train.py); prediction against
#     pipeline("text-classification") (bench_inference.py); instruct label scoring
#     against generation with multi-token labels (bench_instruct.py); then, if time is
#     left, --compile, --batch-tokens, --packing and --cache-lower-blocks beside the
#     defaults (issue 33's levers);
# each step under its own timeout, a failed step never stopping the next ones. Under $OUT:
# gpu_check.json (what ran, what failed and why, every figure), gpu_check.log, each
# benchmark's results JSON and gpu_check_logs.tar.gz (every step's and run's log). It exits
# non-zero when a step failed or timed out.
#
# Here, first (fills .whl/ and .gpu-assets/, about 31 MiB with the tree; limit 64 MiB):
#   python benchmarks/gpu_prepare.py
# There, with the device tool, one call:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu-assets"], timeout_s=600)
# A rerun of some steps only (each needs those before it in the same call; install first):
#   run(command="bash benchmarks/gpu_check.sh --steps 'install env make-model train'", ...)
# The CPU dry run of the same plumbing (tiny shape), here, with a Python that
# has torch but not llmclf (docs/gpu.md says how to make one like the device's):
#   python benchmarks/gpu_prepare.py --python-version 3.11 --wheels /tmp/gpu-check-wheels \
#       --assets /tmp/gpu-check-assets
#   PYTHON=/tmp/gpucheck-base/bin/python bash benchmarks/gpu_check.sh --cpu-dry-run \
#       --wheels /tmp/gpu-check-wheels --assets /tmp/gpu-check-assets --out /tmp/gpu-check-out
set -uo pipefail  # no -e: a step that fails is recorded and the next one runs
cd "$(dirname "$0")/.."
ROOT=$PWD
ARGS="$*"

PYTHON=${PYTHON:-python3}
MODE=gpu
WHEELS=$ROOT/.whl
ASSETS=$ROOT/.gpu-assets
RESULTS=${OUT:-$ROOT/benchmarks/work/gpu_check_out}
WORK=$ROOT/benchmarks/work/gpu_check  # git-ignored; the 16 GB model goes here, not to /tmp,
# which may be a RAM disk there
BUDGET=480
STEPS="install env gpu-tests unit-tests make-model train inference instruct levers"
while (($#)); do
  case $1 in
    --cpu-dry-run) MODE=cpu-dry-run ;;
    --wheels) WHEELS=$(realpath "$2"); shift ;;
    --assets) ASSETS=$(realpath "$2"); shift ;;
    --out) RESULTS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $MODE == gpu ]]; then
  SHAPE=llama-8b MAX_LENGTH=512 NAME=gpu_8b_512
  UNIT_TESTS=(tests/unit -x -q -m "not gpu")
else  # the same steps at a size this CPU runs in a few minutes (the instruct prompt of
  # 20 Newsgroups' labels takes 187 tokens)
  SHAPE=tiny MAX_LENGTH=256 NAME=cpu_dry_run
  UNIT_TESTS=(tests/unit/test_pooling.py -x -q)
fi
SITE=$WORK/site
MODEL=$WORK/random-$SHAPE
RUN=$ROOT/benchmarks/work/train_$NAME-llmclf  # the run bench_train.py leaves
mkdir -p "$RESULTS" "$WORK/logs"
rm -f "$WORK/steps.jsonl" "$WORK/env.json"
if [[ " $STEPS " == *" train "* ]]; then rm -rf "$RUN"; fi  # never benchmark a stale run
LOG=$RESULTS/gpu_check.log
: >"$LOG"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LLMCLF_CACHE=$WORK/cache PYTHON SITE WHEELS ROOT

record() {  # record NAME STATUS SECONDS RC LIMIT WHY
  printf '{"name": "%s", "status": "%s", "seconds": %s, "rc": %s, "limit_s": %s, "why": "%s"}\n' \
    "$@" >>"$WORK/steps.jsonl"
}

step() {  # step NAME CAP NEEDED_FILE COMMAND...: run COMMAND under min(CAP, time left)
  local name=$1 cap=$2 needs=$3
  shift 3
  if [[ " $STEPS " != *" $name "* ]]; then return; fi
  if [[ -n $needs && ! -e $needs ]]; then
    record "$name" skipped 0 null null "needs $needs, which an earlier step did not make"
    return
  fi
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    record "$name" skipped 0 null null "no time left in the ${BUDGET} s budget"
    return
  fi
  echo "=== $name (at most $limit s): $*" | tee -a "$LOG"
  local began=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]} status=ok why=""
  if ((rc == 124 || rc == 137)); then
    status=timed_out why="stopped at its $limit s limit"
  elif ((rc != 0)); then
    status=failed why="exit status $rc"
  fi
  record "$name" "$status" $(($(date +%s) - began)) "$rc" "$limit" "$why"
  echo "=== $name: $status after $(($(date +%s) - began)) s" | tee -a "$LOG"
}

install_llmclf() {  # the carried wheels, then llmclf from this tree, all into $SITE
  rm -rf "$SITE"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "$WHEELS"/*.whl || return
  PYTHONPATH=$SITE "$PYTHON" -m pip install --quiet --no-index --no-deps --no-build-isolation \
    --no-cache-dir --target "$SITE" "$ROOT"
}
export -f install_llmclf

{ nvidia-smi || echo "no nvidia-smi"; df -h "$ROOT" "$WORK" /tmp; } >>"$LOG" 2>&1
step install 120 "" bash -c install_llmclf
export PYTHONPATH=$SITE
step env 60 "$SITE/llmclf" "$PYTHON" benchmarks/gpu_check_report.py env --output "$WORK/env.json"
step gpu-tests 120 "$SITE/llmclf" \
  "$PYTHON" -m pytest -p no:cacheprovider -q -rs -m gpu tests/unit/test_gpu.py
step unit-tests 150 "$SITE/llmclf" "$PYTHON" -m pytest -p no:cacheprovider "${UNIT_TESTS[@]}"
step make-model 150 "$SITE/llmclf" \
  "$PYTHON" benchmarks/make_random_model.py "$MODEL" --shape $SHAPE \
  --tokenizer "$ASSETS/smollm2-tokenizer"
# the reference recipe beside llmclf's defaults and llmclf with gradient checkpointing,
# the run that should keep an 8B model within the 12 GB goal
step train 270 "$MODEL/config.json" \
  "$PYTHON" benchmarks/bench_train.py --model "$MODEL" --data "$ASSETS/train.csv" \
  --max-length $MAX_LENGTH --quantize 4bit --batch-size 8 --epochs 1 \
  --variant=--gradient-checkpointing --name "train_$NAME" --results-dir "$RESULTS"
step inference 150 "$RUN/metrics.json" \
  "$PYTHON" benchmarks/bench_inference.py "$RUN" "$ASSETS/train.csv" --batch-size 16 \
  --pipeline-quantize 4bit --no-fp32 --name "inference_$NAME" --results-dir "$RESULTS"
step instruct 150 "$MODEL/config.json" \
  "$PYTHON" benchmarks/bench_instruct.py --model "$MODEL" --data "$ASSETS/instruct.csv" \
  --max-length $MAX_LENGTH --batch-size 16 --modes score generate --reuse-texts 4 \
  --name "instruct_$NAME" --results-dir "$RESULTS"
# issue 33's opt-in levers on the GPU, last (only if time is left): compiled blocks,
# token-budget batches, packed rows and cached lower blocks beside the defaults, at the
# same shape
step levers 200 "$MODEL/config.json" \
  "$PYTHON" benchmarks/bench_train.py --model "$MODEL" --data "$ASSETS/train.csv" \
  --max-length $MAX_LENGTH --quantize 4bit --batch-size 8 --epochs 1 \
  --variant=--compile --variant="--batch-tokens 8192" --variant=--packing \
  --variant="--lora-layers 4 --cache-lower-blocks" --name "train_${NAME}_levers" \
  --results-dir "$RESULTS"

tar -czf "$RESULTS/gpu_check_logs.tar.gz" -C "$WORK" logs -C "$ROOT/benchmarks" \
  $(cd "$ROOT/benchmarks" && ls work/*.log 2>/dev/null) 2>>"$LOG"
"$PYTHON" benchmarks/gpu_check_report.py summary --work "$WORK" --results "$RESULTS" \
  --output "$RESULTS/gpu_check.json" --mode $MODE --since "$START" \
  --command "bash benchmarks/gpu_check.sh $ARGS" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}  # 1 when a step failed or timed out
echo "$MODE check: $(($(date +%s) - START)) s in all"
exit "$status"
