#!/usr/bin/env bash
# The bbc-news baseline table: TF-IDF, fine-tuned MiniLM, the SmolLM2 head teacher and its
# distilled MiniLM student, each an ordinary llmclf run folder under $OUT.
# Usage: benchmarks/baselines/run.sh TEACHER_RUN [STEP...]   (steps: tfidf encoder distill)
# Run it alone on the machine (flock) so the examples/s figures compare.
set -euo pipefail
TEACHER=${1:?give the teacher run folder (e.g. runs/demo, made by make demo)}
shift
STEPS=${*:-tfidf encoder distill}
OUT=${OUT:-runs/bench}
LLMCLF=${LLMCLF:-.venv/bin/llmclf}
mkdir -p "$OUT"
run() { [ -f "$1/metrics.json" ] && { echo "have $1"; return; }; shift; "$@"; }

for step in $STEPS; do case $step in
tfidf)
  run "$OUT/tfidf-400" $LLMCLF train --method tfidf --data bbc-news --train-limit 400 --output "$OUT/tfidf-400"
  run "$OUT/tfidf-full" $LLMCLF train --method tfidf --data bbc-news --output "$OUT/tfidf-full" ;;
encoder)
  # the teacher's budget: the same 400 training articles, 128 tokens
  run "$OUT/minilm-400" $LLMCLF train --method encoder --model minilm-l6 --data bbc-news \
      --train-limit 400 --max-length 128 --output "$OUT/minilm-400"
  run "$OUT/minilm-full" $LLMCLF train --method encoder --model minilm-l6 --data bbc-news \
      --max-length 128 --output "$OUT/minilm-full" ;;
distill)
  # labelled: the teacher's own 400 articles; the other 1,089 training articles unlabelled
  .venv/bin/python benchmarks/baselines/unlabeled.py "$OUT/unlabeled.jsonl"
  run "$OUT/student-400" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --output "$OUT/student-400"
  run "$OUT/student-400-unlab" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --unlabeled "$OUT/unlabeled.jsonl" --output "$OUT/student-400-unlab" ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac; done
.venv/bin/python benchmarks/baselines/table.py "$TEACHER" "$OUT"
