#!/usr/bin/env bash
# make bench: every benchmark, one after the other (run nothing else on the machine),
# then the tables in BENCHMARKS.md. Results: benchmarks/results/*.json.
# Usage: benchmarks/run.sh [STEP...]   steps: see the case below (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${*:-train inference serve instruct layers train-reuters train-converged train-bf16 train-bf16-3ep threads}
for step in $STEPS; do case $step in
train)
  # 20 Newsgroups at 256 tokens: mixed lengths (training sample: median 173 tokens, 30% reach
  # 256); llmclf's defaults, and llmclf with the recipe's LoRA dropout (0.05)
  $PY benchmarks/bench_train.py --data 20newsgroups --max-length 256 \
      --train 240 --validation 60 --test 300 --epochs 1 --variant "--lora-dropout 0.05" ;;
train-reuters)
  # Reuters R8 at 256 tokens: short news wires (54% of the padded tokens are real)
  $PY benchmarks/bench_train.py --data reuters-r8 --max-length 256 \
      --train 240 --validation 60 --test 300 --epochs 1 ;;
train-converged)
  # 3 epochs, so that both sides get near their macro-F1; llmclf also with --lora-layers 8
  $PY benchmarks/bench_train.py --data 20newsgroups --max-length 256 \
      --train 240 --validation 60 --test 300 --epochs 3 --variant "--lora-layers 8" ;;
train-bf16)
  # --dtype auto (the probe's choice) vs --dtype float32, and the recipe in fp32 and with
  # the Trainer's own bf16=True: the bf16_train_speedup_vs_fp32 figure
  $PY benchmarks/bench_train.py --data 20newsgroups --max-length 256 \
      --train 240 --validation 60 --test 300 --epochs 1 --variant "--dtype float32" \
      --reference-bf16 --name train_20newsgroups_256_bf16 ;;
train-bf16-3ep)
  # the same at 3 epochs, where both dtypes get near their macro-F1 (the quality check)
  $PY benchmarks/bench_train.py --data 20newsgroups --max-length 256 \
      --train 240 --validation 60 --test 300 --epochs 3 --variant "--dtype float32" \
      --name train_20newsgroups_256_3ep_bf16 ;;
threads)
  # torch's and the tokenizers' threads, and what tokenizing and collating cost
  $PY benchmarks/bench_threads.py benchmarks/work/train_20newsgroups_256_bf16-llmclf \
      benchmarks/work/20newsgroups-240-60-300-0.csv ;;
serve)
  # the run of the train step behind llmclf serve, 32 clients, at most 10 minutes
  $PY benchmarks/bench_serve.py benchmarks/work/train_20newsgroups_256-llmclf \
      benchmarks/work/20newsgroups-240-60-300-0.csv --requests 3000 --seconds 600 ;;
inference)
  # the model trained by the train step
  $PY benchmarks/bench_inference.py benchmarks/work/train_20newsgroups_256-llmclf \
      benchmarks/work/20newsgroups-240-60-300-0.csv ;;
instruct)
  # zero-shot (answers ramble to --max-new-tokens), then a trained run (answers close)
  $PY benchmarks/bench_instruct.py --data 20newsgroups --test 150 --max-length 256
  $PY benchmarks/bench_instruct.py --data 20newsgroups --test 150 --max-length 256 \
      --train 240 --validation 60 --epochs 2 --reuse-texts 0 ;;
layers)
  # the demo's budget: 400 articles, 2 epochs, 128 tokens
  $PY benchmarks/bench_layers.py --data bbc-news --layers 30 15 8 --frozen-layers 30 8 \
      --lora-layers 8 --train-limit 400 --epochs 2 ;;
*) echo "unknown step $step (train inference serve instruct layers train-reuters train-converged train-bf16 train-bf16-3ep threads)" >&2; exit 2 ;;
esac; done
$PY benchmarks/table.py
