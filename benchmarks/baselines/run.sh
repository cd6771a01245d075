#!/usr/bin/env bash
# The bbc-news baseline table: TF-IDF, fine-tuned MiniLM, the SmolLM2 head teacher and its
# distilled MiniLM student, each an ordinary llmclf run folder under $OUT.
# Usage: benchmarks/baselines/run.sh TEACHER_RUN [STEP...]
#   (steps: tfidf encoder distill distill128 onnx; default: all)
  # A: the teacher's own 400 labelled articles and input budget (128 tokens)
  run "$OUT/student-400" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --output "$OUT/student-400"
  # B: plus the other 1,089 training articles without labels, student reads 64 tokens
  .venv/bin/python benchmarks/baselines/unlabeled.py "$OUT/unlabeled.jsonl"
  run "$OUT/student-unlab-64" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --unlabeled "$OUT/unlabeled.jsonl" --max-length 64 \
      --output "$OUT/student-unlab-64" ;;
distill128)
  # C: as B at the teacher's 128 tokens (separates the unlabelled data from the shorter input)
  .venv/bin/python benchmarks/baselines/unlabeled.py "$OUT/unlabeled.jsonl"
  run "$OUT/student-unlab-128" $LLMCLF distill "$TEACHER" --student minilm-l6 --data bbc-news \
      --train-limit 400 --unlabeled "$OUT/unlabeled.jsonl" --output "$OUT/student-unlab-128" ;;
onnx)
  # the students served by ONNX Runtime, timed side by side with PyTorch in one process
  for s in student-400 student-unlab-64 student-unlab-128; do
    [ -f "$OUT/$s/metrics.json" ] || continue
    [ -f "$OUT/$s/onnx/model.onnx" ] || $LLMCLF export "$OUT/$s" --format onnx
    .venv/bin/python benchmarks/baselines/onnx_speed.py "$OUT/$s"
  done ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac; done
.venv/bin/python benchmarks/baselines/table.py "$TEACHER" "$OUT"
