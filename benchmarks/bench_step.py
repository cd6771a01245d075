"""One training step of a trained method (head, instruct, encoder), timed in this process:
where the time of a step goes and what fraction of the dtype's matmul peak it reaches, at
any length and batch.

The model is built by the method's classifier itself (base, adapters, head, dtype by
``--dtype``) and fed rows of real tokens from a built-in data set, so the FLOP count is
exact:

- ``head`` (the default): rows of exactly ``--length`` text tokens, stepped as the head's
  Trainer steps them: ``head_logits`` under the dtype's autocast, cross-entropy, backward,
  AdamW (``--sdpa``, ``--no-input-cast``, ``--lora-bf16`` and ``--compile`` are levers on
  top of it).
- ``instruct``: prompts holding exactly ``--length`` text tokens, each followed by its
  label's answer (answer-only loss), batched by the method's own collator (the prompts'
  shared prefix taken off, run once per batch).
- ``encoder`` (also the student of ``llmclf distill``): rows of exactly ``--length``
  tokens, [CLS] and [SEP] included, every weight trained.

Instruct and the encoder step through the method's own ``ClassifierTrainer`` as
``train_model`` builds it: its ``compute_loss`` (the method's forward and loss under the
Trainer's autocast, with ``adapters_compute_in_autocast`` and ``fastest_attention``), the
model and optimizer prepared by its accelerator, backward, gradient clipping, the
optimizer's step (the method's own, or the Trainer's AdamW); collating a batch is not
timed. The first ``--warmup`` steps are not timed; the median of the next ``--steps`` is.
``--profile`` adds torch.profiler's table of the step (self CPU time by operator) and its
top operators with their share. The peak is measured in the same process right before
the steps (the bf16 peak as well when the step runs in another dtype).

FLOPs counted (2 per weight and token per matmul, LoRA's own left out): head, the blocks'
forward and the backward through the activations; instruct, the same over every token the
step runs (the shared prefix once, each row's rest of the prompt and answer, padding not
counted) with the attention context each token sees, plus the vocabulary projection of
the answer positions the loss reads (forward and backward); encoder, forward, backward
and the weights' gradients over every token, attention over the whole row.

Usage: python benchmarks/bench_step.py [--method head|instruct|encoder] --length 128
           --batch-size 8 [--dtype auto] [--option "lora_r=8"] [--profile] [--name step_128]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, machine, matmul_peak_gflops, model_flops_per_token, write_result

MODELS = {"head": "smollm2-135m", "instruct": "smollm2-135m", "encoder": "minilm-l6"}
HEAD_LEVERS = ("no_input_cast", "lora_bf16")  # flags only the head's own loop takes


@dataclass
class Step:
    """One method's training step, ready to time: ``run(index)`` steps on batch ``index``
    and returns its seconds; ``flops`` and ``tokens`` are per step (the mean over the
    batches the timed steps use)."""

    run: Callable[[int], float]
    dtype: object
    flops: float
    tokens: float
    details: dict = field(default_factory=dict)
    text_tokens: float | None = None  # per step, where the rows hold more than the texts
    after_first: Callable[[], None] | None = None  # called once the first step has run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=tuple(MODELS), default="head")
    parser.add_argument("--model", default=None, help="default: the method's usual model")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--length", type=int, default=128, help="real text tokens per row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--option", action="append", default=[], help='classifier options, e.g. "lora_r=8"'
    )
    parser.add_argument(
        "--no-input-cast", action="store_true", help="PEFT leaves LoRA's input in its dtype"
    )
    parser.add_argument(
        "--sdpa", choices=("default", "math", "flash", "efficient"), default="default"
    )
    parser.add_argument("--lora-bf16", action="store_true", help="LoRA weights in bf16 (bound)")
    parser.add_argument(
        "--compile",
        choices=("none", "model", "blocks"),
        default="none",
        help="torch.compile the whole decoder, or each decoder block (regional)",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    args.model = args.model or MODELS[args.method]
    levers = [f for f in HEAD_LEVERS if getattr(args, f)]
    if args.method != "head" and (levers or args.sdpa != "default" or args.compile != "none"):
        parser.error("--sdpa, --no-input-cast, --lora-bf16 and --compile are head levers")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step is never timed)")

    import torch

    from llmclf.config import DataConfig
    from llmclf.data import load_frames

    train = load_frames(DataConfig(data=args.data))["train"]
    options = dict(_parse(o) for o in args.option)
    build = {"head": head_step, "instruct": instruct_step, "encoder": encoder_step}
    step = build[args.method](args, train, options)
    setup_end = time.perf_counter()
    dtype = step.dtype

    peak_start = time.perf_counter()
    peak = matmul_peak_gflops("cpu", dtype)
    bf16_peak = peak if dtype == torch.bfloat16 else matmul_peak_gflops("cpu", torch.bfloat16)
    peak_seconds = time.perf_counter() - peak_start
    for i in range(args.warmup):
        step.run(i)
        if i == 0 and step.after_first:
            step.after_first()
    # the warm-up's time (compilation included), the peaks excluded
    warmup_seconds = time.perf_counter() - setup_end - peak_seconds
    times = [step.run(args.warmup + i) for i in range(args.steps)]
    seconds = statistics.median(times)
    achieved = step.flops / seconds / 1e9
    result = {
        "machine": machine(),
        "settings": {**vars(args), "dtype": str(dtype).removeprefix("torch.")},
        "step_seconds": round(seconds, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "tokens_per_s": round(step.tokens / seconds, 1),
        "achieved_gflops": round(achieved, 1),
        "dtype_peak_gflops": round(peak, 1),
        "fraction_of_dtype_peak": round(achieved / peak, 3),
        "warmup_seconds": round(warmup_seconds, 1),  # compilation included
        **step.details,
    }
    if step.text_tokens is not None:
        result["text_tokens_per_s"] = round(step.text_tokens / seconds, 1)
    if dtype != torch.bfloat16:
        result["bf16_peak_gflops"] = round(bf16_peak, 1)
        result["fraction_of_bf16_peak"] = round(achieved / bf16_peak, 3)
    print(
        f"{args.method} {dtype} length {args.length} batch {args.batch_size}: "
        f"{seconds * 1000:.0f} ms/step, {step.tokens / seconds:.0f} tokens/s, "
        f"{achieved:.0f} GFLOP/s = {achieved / peak:.1%} of the {peak:.0f} GFLOP/s peak "
        f"(warm-up {warmup_seconds:.0f} s)"
    )
    if args.profile:
        result.update(profile(step, 3))
    if args.name:
        write_result(args.name, result, RESULTS)


def profile(step: Step, steps: int) -> dict:
    """torch.profiler's table of ``steps`` steps, and the operators with the most self CPU
    time: milliseconds per step and share of all operators' self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step.run(i)
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=25)
    print(table)
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    top = [
        {
            "operator": e.key,
            "ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 1),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in ranked
    ]
    for row in top[:6]:
        print(f"{row['share']:6.1%} {row['ms_per_step']:8.1f} ms/step  {row['operator']}")
    return {"profile": table, "profile_top": top}


# ---------------------------------------------------------------------------------------
# head: the method's forward and loss in a loop of its own (the levers act on it)
# ---------------------------------------------------------------------------------------


def head_step(args, train, options: dict) -> Step:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from llmclf.labels import LabelSchema
    from llmclf.methods.head import HeadClassifier, head_logits

    clf = HeadClassifier(args.model, dtype=args.dtype, progress=False, **options)
    schema = LabelSchema.from_labels(list(train["label"]), False)
    clf._config = clf.resolve_config()
    clf._build(schema)
    model, dtype = clf.model_, clf.dtype_
    tokenizer = clf.tokenizer_
    # rows of exactly --length real tokens: long texts cut, short ones skipped
    rows = []
    for text in train["text"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= args.length:
            rows.append(ids[: args.length])
        if len(rows) >= args.batch_size * (args.steps + args.warmup):
            break
    if len(rows) < args.batch_size:
        raise SystemExit(f"fewer than {args.batch_size} texts of {args.length} tokens")
    targets = torch.tensor(schema.encode(list(train["label"][: len(rows)])))
    if args.lora_bf16:
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(dtype)
    if args.no_input_cast:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    if args.compile == "model":
        decoder = model.get_base_model().model
        model.get_base_model().model = torch.compile(decoder)
    elif args.compile == "blocks":
        for block in model.get_base_model().model.layers:
            block.compile()
    optimizer = clf._optimizer()
    model.train()
    backends = {
        "math": [SDPBackend.MATH],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    }

    def run(index: int) -> float:
        start_row = (index * args.batch_size) % (len(rows) - args.batch_size + 1)
        ids = torch.tensor(rows[start_row : start_row + args.batch_size])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        labels = targets[start_row : start_row + args.batch_size]
        begin = time.perf_counter()
        kernel = (
            sdpa_kernel(backends[args.sdpa]) if args.sdpa != "default" else contextlib.nullcontext()
        )
        with kernel, torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = head_logits(model, batch, clf.config_.head.pooling)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    per_token = model_flops_per_token(
        model.config, args.length / 2, True, clf.config_.adapter.lora_layers
    )
    tokens = args.batch_size * args.length
    return Step(run, dtype, per_token * tokens, tokens)


# ---------------------------------------------------------------------------------------
# instruct and encoder: the method's ClassifierTrainer, as train_model builds it
# ---------------------------------------------------------------------------------------


def trainer_step(model, forward, loss, train_config, dtype, device, optimizer, batches) -> Callable:
    """``run(index)``: one step of the Trainer's loop on ``batches[index % len]`` through
    the method's ``ClassifierTrainer`` (its ``compute_loss``, accelerator, clipping,
    optimizer; the Trainer's own AdamW when ``optimizer`` is None)."""
    from llmclf.training import ClassifierTrainer, training_arguments

    scratch = tempfile.TemporaryDirectory(prefix="bench-step-")  # lives as long as ``run``
    folder = Path(scratch.name)
    arguments = training_arguments(train_config, folder, device, dtype, None, progress=False)
    trainer = ClassifierTrainer(
        model=model, args=arguments, forward=forward, loss=loss, optimizers=(optimizer, None)
    )
    if optimizer is None:
        trainer.create_optimizer()
    model, optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    model.train()

    def run(index: int) -> float:
        inputs = dict(batches[index % len(batches)])  # compute_loss pops the labels
        begin = time.perf_counter()
        value = trainer.compute_loss(model, inputs)
        trainer.accelerator.backward(value)
        if arguments.max_grad_norm > 0:
            trainer.accelerator.clip_grad_norm_(model.parameters(), arguments.max_grad_norm)
        optimizer.step()
        model.zero_grad()
        return time.perf_counter() - begin

    run.scratch = scratch
    return run


def batches_of(rows: list[dict], collator, args) -> list[dict]:
    """The collated batches the warm-up and timed steps cycle through."""
    if len(rows) < args.batch_size:
        raise SystemExit(f"fewer than {args.batch_size} texts of {args.length} tokens")
    count = min(len(rows) // args.batch_size, args.warmup + args.steps)
    return [collator(rows[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(count)]


def timed_batches(batches: list, args) -> list:
    """The batches the timed steps run (``run`` cycles through ``batches``)."""
    return [batches[(args.warmup + i) % len(batches)] for i in range(args.steps)]


def instruct_step(args, train, options: dict) -> Step:
    import llmclf.backbone as backbone
    from llmclf.labels import LabelSchema
    from llmclf.methods.instruct.batches import IGNORE_INDEX, InstructCollator, label_sets
    from llmclf.methods.instruct.model import InstructClassifier

    clf = InstructClassifier(args.model, dtype=args.dtype, progress=False, **options)
    clf._config = clf.resolve_config()
    config = clf.config_
    labels = list(train["label"])
    schema = LabelSchema.from_labels(labels, False)
    sets = label_sets(schema, labels)
    clf._new_format(schema, sets)  # as _fit: tokenizer, chat template, answers
    model = backbone.add_lora(clf._load_base(), config.adapter, "CAUSAL_LM")
    prompt_format = clf.format_
    # prompts of exactly --length text tokens: the budget of the method's own cut
    budget = prompt_format.overhead() + args.length
    rows = []
    for text, answer_set in zip(train["text"], sets):
        prompt = prompt_format.prompt_ids(text, budget)
        if len(prompt) == budget:  # the text was cut to its share: long enough
            answer = prompt_format.pieces.complete(answer_set)
            rows.append(
                {  # what _answer_dataset makes of it
                    "input_ids": prompt + answer,
                    "labels": [IGNORE_INDEX] * len(prompt) + answer,
                    "answer_length": len(answer),
                }
            )
        if len(rows) >= args.batch_size * (args.steps + args.warmup):
            break
    collator = InstructCollator(
        clf.tokenizer_.pad_token_id, False, share_prefix=config.instruct.share_prompt_prefix
    )
    batches = batches_of(rows, collator, args)
    run = trainer_step(
        model,
        clf._trainer_forward,
        clf._trainer_loss,
        config.train,
        clf.dtype_,
        clf.device_,
        None,
        batches,
    )
    # which way the prefix ran (once, or joined back to every row): the embedding's calls
    calls: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: calls.append(tuple(inputs[0].shape))
    )
    text_config = model.config.get_text_config()
    lora_layers = config.adapter.lora_layers
    step = Step(run, clf.dtype_, 0.0, 0.0, text_tokens=args.batch_size * args.length)

    def count() -> None:
        hook.remove()
        shared = len(calls) == 2 and calls[0][0] == 1
        timed = timed_batches(batches, args)
        figures = [_instruct_flops(b, shared, text_config, lora_layers) for b in timed]
        step.flops = statistics.fmean(f["flops"] for f in figures)
        step.tokens = statistics.fmean(f["real_tokens"] for f in figures)
        first = figures[0]
        step.details = {
            "tokens_counted": "real tokens run per step: the shared prefix once (or in every "
            "row when joined back), each row's rest of the prompt and its answer; padding not",
            "prompt_tokens": len(rows[0]["input_ids"]) - rows[0]["answer_length"],
            "prompt_overhead_tokens": prompt_format.overhead(),
            "prefix_run_once": shared,
            "per_step": {k: v for k, v in first.items() if k != "flops"},
        }

    step.after_first = count
    return step


def _instruct_flops(batch: dict, shared: bool, config, lora_layers: int | None) -> dict:
    """The FLOPs and tokens of one instruct batch (see the module's docstring)."""
    prefix = batch["prefix_ids"].numel()
    rest = batch["attention_mask"].sum(dim=1).tolist()  # real tokens of each row after it
    rows, width = batch["input_ids"].shape
    keep = int(batch["answer_width"]) + 1  # positions through the vocabulary projection

    def tokens_flops(n: int, before: int) -> float:  # n tokens after ``before`` others
        return n * model_flops_per_token(config, before + n / 2, True, lora_layers)

    if shared:
        blocks = tokens_flops(prefix, 0) + sum(tokens_flops(n, prefix) for n in rest)
        real = prefix + sum(rest)
    else:
        blocks = sum(tokens_flops(prefix + n, 0) for n in rest)
        real = rows * prefix + sum(rest)
    vocabulary = 4 * config.hidden_size * config.vocab_size * rows * keep
    return {
        "flops": blocks + vocabulary,
        "real_tokens": real,
        "prefix_tokens": prefix,
        "rows_x_width": [rows, width],
        "padding_tokens": rows * width - sum(rest),
        "vocabulary_positions": rows * keep,
        "vocabulary_flops_share": round(vocabulary / (blocks + vocabulary), 3),
    }


def encoder_step(args, train, options: dict) -> Step:
    import torch

    from llmclf.labels import LabelSchema
    from llmclf.losses import loss_function
    from llmclf.methods.encoder import EncoderClassifier, TargetCollator, encoder_logits

    options = {"max_length": args.length, **options}
    clf = EncoderClassifier(args.model, dtype=args.dtype, progress=False, **options)
    clf._config = clf.resolve_config()
    schema = LabelSchema.from_labels(list(train["label"]), False)
    clf.build_model(schema)
    targets = schema.encode(list(train["label"]))
    rows = []
    for ids, target in zip(clf._encode(list(train["text"])), targets):  # cut as the method cuts
        if len(ids) == args.length:
            rows.append({"input_ids": ids, "labels": int(target)})
        if len(rows) >= args.batch_size * (args.steps + args.warmup):
            break
    collator = TargetCollator(clf.tokenizer_.pad_token_id, torch.long)
    batches = batches_of(rows, collator, args)
    model = clf.model_
    run = trainer_step(
        model,
        encoder_logits,
        loss_function(schema, None),
        clf.config_.train,
        clf.dtype_,
        clf.device_,
        clf._optimizer(),
        batches,
    )
    per_token = encoder_flops_per_token(model, args.length)
    tokens = args.batch_size * args.length
    details = {
        "tokens_counted": "every token of every row ([CLS] and [SEP] included, no padding); "
        "forward, backward and weight gradients of the blocks, attention over the whole row; "
        "the pooler and classifier (one position per row) left out",
    }
    return Step(run, clf.dtype_, per_token * tokens, tokens, details)


def encoder_flops_per_token(model, context: int) -> float:
    """Training FLOPs per token of a fully fine-tuned encoder: its blocks' linear weights
    (counted from the modules: a BERT MLP has two matrices, not a decoder's three) twice
    each for the forward pass, the backward pass through the activations and the weights'
    gradients; attention's QK^T and AV over ``context`` keys forward, twice that backward."""
    import torch

    config = model.config
    blocks = next(
        m
        for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == config.num_hidden_layers
    )
    weights = sum(m.weight.numel() for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    attention = 2 * 2 * config.hidden_size * context * config.num_hidden_layers
    return 3 * 2 * weights + 3 * attention


def _parse(option: str) -> tuple[str, object]:
    key, _, value = option.partition("=")
    if "," in value:
        return key, value.split(",")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


if __name__ == "__main__":
    main()
