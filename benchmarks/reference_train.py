"""The reference: LoRA sequence classification as the transformers / PEFT docs teach it.

``AutoModelForSequenceClassification`` + ``get_peft_model`` + ``Trainer``, texts padded to
``max_length`` by the tokenizer, evaluation every epoch on the validation split, then
``trainer.predict`` on the test split. Nothing from llmclf is imported: this is the script a
user writes. It prints one JSON line of timings and scores.

Usage: python benchmarks/reference_train.py --model DIR --data FILE.csv --output DIR
           [--max-length 256] [--epochs 1] [--batch-size 8] [--eval-batch-size 16]
           [--learning-rate 1e-3]
           [--lora-r 16] [--quantize none|4bit] [--seed 42] [--bf16]

``--bf16`` is the recipe with the Trainer's own mixed precision on a CPU too: bf16 weights
and ``TrainingArguments(bf16=True)`` (autocast), as the docs do it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    Trainer,
    TrainingArguments,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="CSV with text, label, split columns")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--quantize", choices=("none", "4bit"), default="none")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights + bf16=True on CPU too")
    args = parser.parse_args()

    frame = pd.read_csv(args.data, keep_default_na=False)
    labels = sorted(frame["label"].unique())
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def tokenize(batch):
        out = tokenizer(
            batch["text"], truncation=True, padding="max_length", max_length=args.max_length
        )
        out["labels"] = [label2id[label] for label in batch["label"]]
        return out

    splits = {
        name: Dataset.from_pandas(frame[frame["split"] == name].reset_index(drop=True))
        .map(tokenize, batched=True)
        .remove_columns(["text", "label", "split"])
        for name in ("train", "validation", "test")
    }

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    bf16 = cuda or args.bf16
    quantization = None
    if args.quantize == "4bit":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        quantization_config=quantization,
        device_map={"": 0} if cuda else None,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.05,
        target_modules="all-linear",
    )
    model = get_peft_model(model, lora)

    def compute_metrics(prediction):
        predicted = np.argmax(prediction.predictions, axis=-1)
        return {"macro_f1": f1_score(prediction.label_ids, predicted, average="macro")}

    training_args = TrainingArguments(
        output_dir=args.output,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,  # a fraction of the steps
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        logging_steps=10,
        report_to=[],
        seed=args.seed,
        bf16=bf16,
        use_cpu=not cuda,  # bf16=True on a CPU needs it said
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        compute_metrics=compute_metrics,
    )
    trainer.train()
    train_seconds = time.perf_counter() - start
    validation_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)

    start = time.perf_counter()
    output = trainer.predict(splits["test"])
    test_seconds = time.perf_counter() - start
    predicted = np.argmax(output.predictions, axis=-1)
    gold = output.label_ids
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "dtype": "bfloat16" if bf16 else "float32",
        "train_seconds": round(train_seconds, 2),
        "validation_seconds": round(validation_seconds, 2),
        "test_seconds": round(test_seconds, 2),
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro")),
        "trainable_params": int(trainable),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
