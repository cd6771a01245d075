#!/usr/bin/env bash
# The bbc-news baseline table: TF-IDF, fine-tuned MiniLM, the SmolLM2 head teacher and its
# distilled MiniLM students, each an ordinary llmclf run folder under $OUT.
# Usage: benchmarks/baselines/run.sh TEACHER_RUN [STEP...]
#   steps: tfidf encoder distill distill128 onnx (default: all)
# Run it alone on the machine (flock) so the examples/s figures compare.
set -euo pipefail
TEACHER=${1:?give the teacher run folder (e.g. runs/demo, made by make demo)}
shift
STEPS=${*:-tfidf encoder distill distill128 onnx}
OUT=${OUT:-runs/bench}
LLMCLF=${LLMCLF:-.venv/bin/llmclf}
mkdir -p "$OUT"
run() { [ -f "$1/metrics.json" ] && { echo "have $1"; return; }; shift; "$@"; }

for step in $STEPS; do case $step in
tfidf)
  run "$OUT/tfidf-400" $LLMCLF train --method tfidf --data bbc-news --train-limit 400 \
      --output "$OUT/tfidf-400"
  run "$OUT/tfidf-full" $LLMCLF train --method tfidf --data bbc-news --output "$OUT/tfidf-full" ;;
encoder)
  # the teacher's budget: the same 400 training articles, 128 tokens; then all 1,489
  run "$OUT/minilm-400" $LLMCLF train --method encoder --model minilm-l6 --data bbc-news \
      --train-limit 400 --max-length 128 --output "$OUT/minilm-400"
  resume=(); [ -d "$OUT/minilm-full/checkpoints" ] && resume=(--resume)
  run "$OUT/minilm-full" $LLMCLF train --method encoder --model minilm-l6 --data bbc-news \
      --max-length 128 --output "$OUT/minilm-full" "${resume[@]}" ;;
distill)
  # A: the teacher's own 400 labelled articles and input budget (128 tokens)
  run "$OUT/student-400" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --output "$OUT/student-400"
  # B: plus the other 1,089 training articles without labels; the student reads 64 tokens
  .venv/bin/python benchmarks/baselines/unlabeled.py "$OUT/unlabeled.jsonl"
  run "$OUT/student-unlab-64" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --unlabeled "$OUT/unlabeled.jsonl" --max-length 64 \
      --output "$OUT/student-unlab-64"
  # D: as B at the teacher's 128 tokens with only the first 3 of MiniLM's 6 layers; the
  # teacher's outputs for these texts are B's (same texts: the cache is reused via --resume)
  if [ ! -f "$OUT/student-unlab-128-l3/metrics.json" ]; then
    mkdir -p "$OUT/student-unlab-128-l3"
    cp -rn "$OUT/student-unlab-64/teacher_logits" "$OUT/student-unlab-128-l3/"
    $LLMCLF distill "$TEACHER" --student minilm-l6 --encoder-layers 3 --data bbc-news \
      --train-limit 400 --unlabeled "$OUT/unlabeled.jsonl" --resume \
      --output "$OUT/student-unlab-128-l3"
  fi ;;
distill128)
  # C: as B at the teacher's 128 tokens, all 6 layers
  .venv/bin/python benchmarks/baselines/unlabeled.py "$OUT/unlabeled.jsonl"
  if [ ! -f "$OUT/student-unlab-128/metrics.json" ]; then
    mkdir -p "$OUT/student-unlab-128"
    cp -rn "$OUT/student-unlab-64/teacher_logits" "$OUT/student-unlab-128/"
    $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news --train-limit 400 \
      --unlabeled "$OUT/unlabeled.jsonl" --resume --output "$OUT/student-unlab-128"
  fi ;;
onnx)
  # the students served by ONNX Runtime, timed side by side with PyTorch in one process
  for s in student-400 student-unlab-64 student-unlab-128-l3 student-unlab-128; do
    [ -f "$OUT/$s/metrics.json" ] || continue
    [ -f "$OUT/$s/onnx/model.onnx" ] || $LLMCLF export "$OUT/$s" --format onnx
    .venv/bin/python benchmarks/baselines/onnx_speed.py "$OUT/$s"
  done ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac; done
.venv/bin/python benchmarks/baselines/table.py "$TEACHER" "$OUT"
