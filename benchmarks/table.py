"""Write the tables of BENCHMARKS.md (between its `generated` markers) from
benchmarks/results/*.json; the prose around them is kept.

Usage: python benchmarks/table.py
"""

from __future__ import annotations

import json

from common import RESULTS, ROOT

BEGIN, END = "<!-- begin generated: benchmarks/table.py -->", "<!-- end generated -->"


def machine_lines(m: dict) -> list[str]:
    gpu = m["gpu"] or "none"
    cpu_id = f" (CPU {m['cpu_id']})" if m.get("cpu_id") else ""  # recorded from 2026-12-03 on
    bf16 = f", AVX-512 bf16 {'yes' if m['avx512_bf16'] else 'no'}" if "avx512_bf16" in m else ""
    return [
        f"Machine: {m['cpu']}{cpu_id}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m['memory_gib']} GiB RAM, AVX-512 {'yes' if m['avx512'] else 'no'}{bf16}, "
        f"AMX {'yes' if m['amx'] else 'no'}, GPU {gpu}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}.",
        "",
    ]


def fraction(side: dict) -> float:
    """A training side's fraction of its dtype's matmul peak (older results files name it
    ``fraction_of_matmul_peak``: the same figure)."""
    return side.get("fraction_of_dtype_peak", side.get("fraction_of_matmul_peak"))


def train_lines(r: dict) -> list[str]:
    s = r["settings"]
    variants = r.get("variants", {})
    sides = {"llmclf": r["llmclf"], **{f"llmclf {v}": side for v, side in variants.items()}}
    b = r["reference"]
    others = {k: v for k, v in r.items() if k.startswith("reference ") and isinstance(v, dict)}
    out = [
        f"### Training: `llmclf train --method head` vs the docs recipe ({s['data']}, "
        f"max length {s['max_length']}, {s['epochs']:g} epoch{'s' if s['epochs'] != 1 else ''})",
        "",
        f"{s['train']} training / {s['validation']} validation / {s['test']} test examples, "
        f"batch {s['batch_size']}, learning rate {s['learning_rate']:g}, "
        "LoRA r 16 on all linear layers (llmclf's defaults, LoRA dropout 0; the recipe: the "
        f"docs' 0.05), quantize {s['quantize']}, {s['device']}. "
        f"{r['real_tokens']:,.0f} real tokens of {r['padded_tokens']:,.0f} padded to max "
        f"length. Time = model load + training steps + per-epoch validation.",
        "",
        "| | "
        + " | ".join(sides)
        + " | reference | "
        + "".join(f"{name} | " for name in others)
        + " | ".join(f"{name} / reference" for name in sides)
        + " |",
        "|---|" + "---|" * (2 * len(sides) + 1 + len(others)),
    ]
    if "dtype" in b:  # results files from 2026-12-02 on record each side's dtype
        dtypes = [a.get("dtype", "") for a in sides.values()]
        out.append(
            "| dtype | "
            + " | ".join([*dtypes, b["dtype"], *(o["dtype"] for o in others.values())])
            + " |"
            + " |" * len(sides)
        )
    for key, label in (
        ("real_tokens_per_s", "real tokens/s"),
        ("examples_per_s", "examples/s"),
        ("step_real_tokens_per_s", "real tokens/s, training steps only"),
        ("train_seconds", "train seconds"),
        ("validation_seconds", "of which validation"),
        ("peak_rss_mb", "peak RSS MiB"),
        ("peak_gpu_mb", "peak GPU MiB"),
        ("macro_f1", "test macro-F1"),
        ("accuracy", "test accuracy"),
    ):
        if b.get(key) is None:
            continue
        values = [f"{a[key]:,}" for a in sides.values()]
        extra = [f"{o[key]:,}" if o.get(key) is not None else "" for o in others.values()]
        ratios = [f"{a[key] / b[key]:.2f}x" if b[key] else "" for a in sides.values()]
        out.append(f"| {label} | " + " | ".join([*values, f"{b[key]:,}", *extra, *ratios]) + " |")
    out += [
        "",
        f"`train_speedup_vs_reference` **{r['train_speedup_vs_reference']}**, "
        f"`step_speedup_vs_reference` {r['step_speedup_vs_reference']}, macro-F1 difference "
        f"{r['macro_f1_difference']:+.4f}; achieved {r['llmclf']['achieved_gflops']} GFLOP/s on "
        f"real tokens in the training steps vs a measured matmul peak of "
        f"{r['matmul_peak_gflops']} GFLOP/s: `fraction_of_dtype_peak` "
        f"**{fraction(r)}** (reference: "
        f"{b['achieved_gflops'] / r['matmul_peak_gflops']:.3f}, counting only its real tokens).",
    ]
    if "bf16_train_speedup_vs_fp32" in r:
        pair = r["bf16_sides"]
        out.append(
            f"bf16 vs fp32 (`{pair['bfloat16']}` vs `{pair['float32']}`): "
            f"`bf16_train_speedup_vs_fp32` **{r['bf16_train_speedup_vs_fp32']}**, macro-F1 "
            f"difference {r['bf16_macro_f1_minus_fp32']:+.4f}; matmul peaks "
            + ", ".join(f"{k} {v} GFLOP/s" for k, v in r["matmul_peak_gflops_by_dtype"].items())
            + " (each side's fraction of the peak is against its own dtype's)."
        )
    for variant, side in variants.items():
        out.append(
            f"With `{variant}`: {side['train_speedup_vs_reference']}x the reference, macro-F1 "
            f"difference {side['macro_f1_difference']:+.4f}, fraction of the matmul peak "
            f"{fraction(side)}"
            + (
                " (its backward pass counted through those blocks only)."
                if "--lora-layers" in variant
                else "."
            )
        )
    return [*out, ""]


def inference_lines(r: dict) -> list[str]:
    s, a, b = r["settings"], r["llmclf"], r["pipeline"]
    c = r.get("llmclf_int8")
    same, fp32 = r.get("pipeline_same_dtype"), r.get("llmclf_fp32")
    columns = ["llmclf", "pipeline"] + (["pipeline, llmclf's dtype"] if same else [])
    columns += (["llmclf --dtype float32"] if fp32 else []) + (["llmclf --int8"] if c else [])
    sides = [a, b] + ([same] if same else []) + ([fp32] if fp32 else []) + ([c] if c else [])

    def row(label: str, key: str, form: str = "{}") -> str:
        values = [form.format(side[key]) if key in side else "-" for side in sides]
        return f"| {label} | " + " | ".join(values) + " |"

    out = [
        '### Inference: llmclf predict vs `pipeline("text-classification")`',
        "",
        f"The training run's adapter merged into the base (the same weights on both sides), "
        f"{s['texts']} test texts, batch {s['batch_size']}, max length {s['max_length']}, "
        f"{s['dtype']}, {s['device']}; timed after loading and a warm-up batch."
        + (
            " `--int8`: the same run with int8 weights and per-token int8 activations in the "
            "decoder blocks (torchao), a different numeric model."
            if c
            else ""
        ),
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *([row("dtype", "dtype")] if "dtype" in b else []),
        row("examples/s", "examples_per_s"),
        row("real tokens/s", "real_tokens_per_s", "{:,}"),
        row("seconds", "seconds"),
        row("test accuracy", "accuracy"),
        row("test macro-F1", "macro_f1"),
        "",
        f"`inference_speedup_vs_pipeline` **{r['inference_speedup_vs_pipeline']}**; the two "
        f"agree on {r['prediction_agreement']:.1%} of the predictions; achieved "
        f"{a['achieved_gflops']} GFLOP/s vs matmul peak {r['matmul_peak_gflops']}: "
        f"fraction {r['fraction_of_matmul_peak']}.",
    ]
    if "inference_speedup_vs_pipeline_same_dtype" in r:
        out.append(
            f"Against the pipeline at llmclf's own dtype (kernel for kernel): "
            f"`inference_speedup_vs_pipeline_same_dtype` "
            f"**{r['inference_speedup_vs_pipeline_same_dtype']}**."
        )
    if fp32:
        out.append(
            f"bf16 vs fp32 in llmclf: `bf16_inference_speedup_vs_fp32` "
            f"**{r['bf16_inference_speedup_vs_fp32']}**, the two agree on "
            f"{r['agreement_with_fp32']:.1%} of the predictions."
        )
    if c:
        out.append(
            f"With `--int8`: `inference_int8_speedup_vs_pipeline` "
            f"**{r['inference_int8_speedup_vs_pipeline']}**, {r['int8_speedup_vs_float']}x the "
            f"float llmclf path; it agrees with the float predictions on "
            f"{r['int8_agreement_with_float']:.1%} of the texts."
        )
    return [*out, ""]


def instruct_lines(r: dict) -> list[str]:
    s = r["settings"]
    lo, mean, hi = r["label_tokens_min_mean_max"]
    kind = "the untrained model (zero-shot)" if s["zero_shot"] else "a trained instruct run"
    trained = r.get("training")
    if trained:
        kind += f" ({trained['examples']} training examples, {trained['epochs']:g} epochs)"
    columns = [
        ("score", "score"),
        ("score_whole_prompts", "score, `--no-share-prompt-prefix`"),
        ("generate", "generate"),
    ]
    columns = [(key, title) for key, title in columns if key in r]

    def row(label: str, key: str, form: str = "{}") -> str:
        values = [form.format(r[c][key]) if key in r[c] else "-" for c, _ in columns]
        return f"| {label} | " + " | ".join(values) + " |"

    out = [
        f"### Instruct: `--predict-mode score` vs `generate` ({'zero-shot' if s['zero_shot'] else 'trained'})",
        "",
        f"{s['data']}, {s['test']} test texts, {s['labels']} labels of {lo}-{hi} tokens "
        f"(mean {mean}), {kind}, max length {s['max_length']}, batch {s['batch_size']}."
        + (
            f" Prompts: {r['prompt_tokens_mean']} tokens on average, of which the first "
            f"{r['shared_prefix_tokens']} (system turn, instructions, label list) are the "
            "same in every prompt."
            if "prompt_tokens_mean" in r
            else ""
        ),
        "",
        "| | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---|" * len(columns),
        row("examples/s", "examples_per_s"),
        row("seconds", "seconds"),
        row("macro-F1", "macro_f1"),
        row("accuracy", "accuracy"),
        row("unparsed answers", "unparsed_rate", "{:.1%}"),
        *([row("dtype", "dtype")] if any("dtype" in r[c] for c, _ in columns) else []),
        "",
        f"`score_speedup_vs_generate` **{r['score_speedup_vs_generate']}**"
        + (
            f"; the shared prompt prefix makes scoring {r['prefix_sharing_score_speedup']}x "
            "faster than running every whole prompt"
            if "prefix_sharing_score_speedup" in r
            else ""
        )
        + ".",
        "",
    ]
    if trained and "shared_prefix" in trained:
        a, b = trained["shared_prefix"], trained["whole_prompts"]
        out += [
            f"Training the run: {a['train_seconds']:,} s with the shared prefix run once per "
            f"batch vs {b['train_seconds']:,} s with `--no-share-prompt-prefix` "
            f"(`prefix_sharing_train_speedup` **{trained['prefix_sharing_train_speedup']}**), "
            f"test macro-F1 (score mode) {a['test_macro_f1_score_mode']} vs "
            f"{b['test_macro_f1_score_mode']}; {a['trainable_params']:,} trainable parameters.",
            "",
        ]
    return [*out, *reuse_lines(r.get("prompt_reuse"))]


def reuse_lines(reuse: dict | None) -> list[str]:
    if not reuse:
        return []
    return [
        f"Prompt reuse, on the first {reuse['texts']} of these texts: llmclf's scorer "
        f"{reuse['cached_examples_per_s']} examples/s vs {reuse['naive_examples_per_s']} for "
        "naive scoring (every label appended to the prompt and run through the whole model, "
        f"all labels of a text in one batch): `prompt_reuse_speedup` "
        f"**{reuse['prompt_reuse_speedup']}**; same ranking: {reuse['same_ranking']}, largest "
        f"score difference {reuse['max_abs_score_difference']:.1e}.",
        "",
    ]


def layers_lines(r: dict) -> list[str]:
    s = r["settings"]
    out = [
        f"### `--num-layers K`, `--lora none` and `--lora-layers K` on {s['data']}",
        "",
        f"{s['train_limit']} training examples, max length {s['max_length']}, "
        f"{s['epochs']:g} epoch{'s' if s['epochs'] != 1 else ''} with LoRA ({s['frozen_epochs']:g} head-only epochs with "
        "`--lora none`, whose time includes the first feature pass on a cold cache); full "
        "validation and test splits. `--lora-layers K` keeps all blocks and puts LoRA on the "
        "last K only.",
        "",
        "| variant | test macro-F1 | train s | test examples/s | trainable | total params | dtype |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        out.append(
            f"| {row['variant']} | {row['macro_f1']} | {row['train_seconds']} | "
            f"{row['test_examples_per_s']} | {row['trainable_params']:,} | "
            f"{row['total_params']:,} | {row.get('dtype', '-')} |"
        )
    return [*out, ""]


def serve_lines(r: dict) -> list[str]:
    s, latency, rss = r["settings"], r["latency_ms"], r["server_rss_mb"]
    return [
        f"### Serving: `llmclf serve` under {s['clients']} concurrent clients vs offline predict",
        "",
        f"Run `{s['run']}` ({r.get('dtype', '')}), one text per `POST /v1/classify`, "
        f"max batch {s['max_batch_size']}, max wait {s['max_wait_ms']:g} ms, loopback; "
        f"{r['requests']:,} requests in {r['wall_seconds']} s after a warm-up. Offline: the "
        "same run's `predict_proba` on the same texts, model already loaded.",
        "",
        "| served texts/s | offline texts/s | served / offline | p50 ms | p95 ms | p99 ms "
        "| non-2xx | mean batch | server RSS start → end MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['served_texts_per_s']} | {r['offline_texts_per_s']} | "
        f"**{r['served_vs_offline']}** | {latency['p50']} | {latency['p95']} | "
        f"{latency['p99']} | {r['non_2xx']} | {r['mean_batch_size']} | "
        f"{rss['start']} → {rss['end']} ({r['rss_growth']:+.1%}) |",
        "",
    ]


def used_dtypes(r: dict) -> str:
    """The dtypes the runs of a results file computed in (what ``auto`` chose)."""
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "dtype" and isinstance(item, str) and item != "auto":
                    found.add(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk({k: v for k, v in r.items() if k != "settings"})
    return ", ".join(sorted(found)) or "not recorded"


def long_lines(r: dict) -> list[str]:
    s = r["settings"]
    out = [
        f"### Long texts: `--long-text` truncate vs head-tail vs chunks ({', '.join(r['datasets'])})",
        "",
        f"`llmclf train --method head --model {s['model']}`, {s['train']} training / "
        f"{s['validation']} validation / {s['test']} test texts (stratified samples), "
        f"{s['epochs']:g} epoch{'s' if s['epochs'] != 1 else ''}, batch {s['batch_size']} texts, --max-length {s['max_length']} "
        f"per window, chunks: --max-chunks {s['max_chunks']}, stride {s['chunk_stride']}, "
        f"--dtype {s['dtype']} ({used_dtypes(r)}). Each run is its own process (peak RSS "
        "its own); training "
        "examples/s = training texts / training seconds (model loading and validation "
        "included); test examples/s from `metrics.json`.",
        "",
    ]
    for data, d in r["datasets"].items():
        train, test = d["lengths"]["train"], d["lengths"]["test"]
        out += [
            f"**{data}**: {train['share_longer_than_one_window']:.0%} of the training texts and "
            f"{test['share_longer_than_one_window']:.0%} of the test texts are longer than one "
            f"window (median {test['median_tokens']} tokens); chunks reads "
            f"{test['mean_windows']} windows per test text and the whole of "
            f"{test['share_read_whole_by_chunks']:.0%} of them.",
            "",
            "| --long-text | test macro-F1 | vs truncate | train examples/s | test examples/s "
            "| peak RSS MiB | train s per extra window | test s per extra window |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = d["rows"].get("truncate", {}).get("macro_f1")
        for name, row in d["rows"].items():
            delta = f"{row['macro_f1'] - base:+.4f}" if base is not None else ""
            out.append(
                f"| {name} | {row['macro_f1']} | {delta} | {row['train_examples_per_s']} | "
                f"{row['test_examples_per_s']} | {row['peak_rss_mb']:,.0f} | "
                f"{row.get('train_seconds_per_extra_window', '')} | "
                f"{row.get('test_seconds_per_extra_window', '')} |"
            )
        out.append("")
    return out


def scale_lines(r: dict) -> list[str]:
    """bench_scale.py: memory against rows (streamed predict, training), Ray rows/s."""
    out = ["### Scale: memory against rows, and one Ray worker", ""]
    if "stream" in r:
        out += [
            "`llmclf predict` of a TF-IDF run (bbc-news) on short rows, each command its own "
            "process (peak RSS includes the imported libraries):",
            "",
            "| rows | --chunk-rows | seconds | rows/s | peak RSS MiB |",
            "|---|---|---|---|---|",
        ]
        for key, row in r["stream"].items():
            n, how = key.split("_", 1)
            chunk = "4096 (streamed)" if how == "streamed" else f"{int(n):,} (one chunk)"
            out.append(
                f"| {int(n):,} | {chunk} | {row['seconds']} | {row['rows_per_s']:,.0f} | "
                f"{row['peak_rss_mb']:,.0f} |"
            )
        out.append("")
    if "train" in r:
        out += [
            "`llmclf train` on 20newsgroups (`--train-limit`, 1 epoch, 256 tokens, a tiny "
            "random Llama with SmolLM2's tokenizer, `--dtype float32`): the memory that grows "
            "is the data's.",
            "",
            "| training examples | seconds | peak RSS MiB |",
            "|---|---|---|",
        ]
        for n, row in r["train"].items():
            out.append(f"| {int(n):,} | {row['seconds']} | {row['peak_rss_mb']:,.0f} |")
        out.append("")
    if "ray" in r:
        ray = r["ray"]
        out += [
            f"SmolLM2 head run (train_20newsgroups_256_bf16, {ray.get('dtype', 'bfloat16')}) "
            f"labelling {ray['rows']} "
            "20newsgroups test texts; wall time of the whole command (Ray's start included):",
            "",
            "| how | seconds | rows/s | peak RSS MiB (driver) |",
            "|---|---|---|---|",
            f"| llmclf predict | {ray['predict']['seconds']} | {ray['predict']['rows_per_s']} | "
            f"{ray['predict']['peak_rss_mb']:,.0f} |",
            f"| --ray --ray-workers 1 --ray-cpus-per-worker 2 | "
            f"{ray['ray_one_worker']['seconds']} | {ray['ray_one_worker']['rows_per_s']} | "
            f"{ray['ray_one_worker']['peak_rss_mb']:,.0f} |",
            "",
            f"Same predictions: {ray['same_predictions']}.",
            "",
        ]
    return out


def threads_lines(r: dict) -> list[str]:
    """bench_threads.py: the threads torch and the tokenizers run with, and the price of
    tokenization, collation and torch's thread count next to the model."""
    t = r["training_process"]["threads"]
    out = [
        "### Threads: torch and the tokenizers during training and prediction",
        "",
        f"A training process (`llmclf train`, {r['training_process']['dtype']}): torch "
        f"{t['torch_threads']} threads ({t['torch_interop_threads']} inter-op) on "
        f"{t['usable_cpus']} usable CPUs, CPU quota {t['cpu_quota'] or 'none'}, tokenizers' "
        f"parallelism {t['tokenizers_parallelism']}. Prediction of the {r['default']['texts']} "
        f"test texts of `{r['settings']['run']}` ({r['dtype']}), each setting its own "
        "process, timed after a warm-up:",
        "",
        "| setting | torch threads | tokenizers | predict s | examples/s | vs default | "
        "tokenize s | tokenize share | collate ms / batch | same predictions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in r.items():
        if not isinstance(f, dict) or "predict_seconds" not in f:
            continue
        out.append(
            f"| {name} | {f['threads']['torch_threads']} | "
            f"{f['threads']['tokenizers_parallelism']} | {f['predict_seconds']} | "
            f"{f['predict_examples_per_s']} | {f['predict_speed_vs_default']}x | "
            f"{f['tokenize_seconds']} | {f['tokenize_share_of_predict']:.2%} | "
            f"{f['collate_seconds_per_batch'] * 1000:.2f} | {f['same_predictions_as_default']} |"
        )
    return [*out, ""]


def invariance_lines(r: dict) -> list[str]:
    """bench_invariance.py: how far the default batching moves a text, and what
    ``--batch-invariant`` costs."""
    d, b = r["default"], r["batch_invariant"]
    out = [
        "### One text, one answer: the default vs `--batch-invariant`",
        "",
        f"The first {r['texts']} test texts of `{r['run']}` ({r['dtype']}, eval batch "
        f"{r['eval_batch_size']}), each path timed after a warm-up; each other batching "
        "compared with the same path in input order:",
        "",
        "| path | examples/s | batching | labels changed | max abs. probability difference |",
        "|---|---|---|---|---|",
    ]
    for name, side in (("default", d), ("--batch-invariant", b)):
        for i, (way, c) in enumerate(side["vs_input_order"].items()):
            speed = side["examples_per_s"] if i == 0 else ""
            out.append(
                f"| {name if i == 0 else ''} | {speed} | {way.replace('_', ' ')} | "
                f"{c['labels_changed']} | {c['max_abs_proba_diff']:.2g} |"
            )
    v = b["vs_default"]
    out += [
        "",
        f"The invariant path runs at {r['invariant_speed_ratio']}x the default's speed; it "
        f"differs from the default in input order by {v['labels_changed']} labels and at most "
        f"{v['max_abs_proba_diff']:.2g} in probability.",
        "",
    ]
    return out


def export_lines(r: dict) -> list[str]:
    """bench_export.py: PyTorch, the pipeline, the ONNX and the GGUF exports of one run."""
    names = {
        "torch_fp32": "llmclf PyTorch fp32",
        "torch_auto": "llmclf PyTorch `--dtype auto`",
        "pipeline": "transformers pipeline (merged export)",
        "onnx_fp32": "ONNX fp32",
        "onnx_int8": "ONNX int8",
        "onnx_int4": "ONNX int4",
        "gguf_f32": "GGUF f32 (llama.cpp)",
        "gguf_f16": "GGUF f16 (llama.cpp)",
        "gguf_q8_0": "GGUF q8_0 (llama.cpp)",
        "gguf_q4_k_m": "GGUF q4_k_m (llama.cpp)",
    }
    gguf = any(key.startswith("gguf") for key in r["variants"])
    out = [
        "### Exports: PyTorch vs the pipeline vs ONNX (fp32, int8, int4)"
        + (" vs GGUF (f32, f16, q8_0, q4_k_m)" if gguf else ""),
        "",
        f"`{r['run']}`, {r['texts']} test texts; each variant in its own process. Latency: "
        f"one text at a time ({r['latency_texts']} texts, after a warm-up); throughput: "
        f"batches of {r['batch_size']}; agreement: labels equal to PyTorch fp32's.",
        "",
        "| variant | computes in | size MB | load s | p50 ms | p95 ms | texts/s | peak RSS MB "
        "| macro-F1 | agreement | export s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, v in r["variants"].items():
        if "refused" in v:  # the export's check kept it from being written
            out.append(f"| {names.get(key, key)} | refused: {v['refused']} |" + " |" * 9)
            continue
        out.append(
            f"| {names.get(key, key)} | {v['dtype']} | {v.get('size_mb', '')} | {v['load_s']} | "
            f"{v['latency_ms_p50']} | {v['latency_ms_p95']} | {v['throughput_per_s']} | "
            f"{v['peak_rss_mb']} | {v['macro_f1']} | {v.get('agreement_vs_torch_fp32', '')} | "
            f"{v.get('export_s', '')} |"
        )
    targets = {
        k: r[k]
        for k in (
            "best_8bit_speedup_vs_torch_auto",
            "best_8bit_rss_ratio",
            "best_4bit_size_mb",
            "best_single_text_latency_ratio",
        )
        if k in r
    }
    if targets:
        out += ["", "Against the targets: " + ", ".join(f"`{k}` {v}" for k, v in targets.items())]
    return [*out, ""]


def fraction_lines(r: dict) -> list[str]:
    """bench_train.py over several lengths: each side's fraction of its dtype's peak."""
    out = [
        f"### Training at the machine's limit: fraction of the dtype's matmul peak "
        f"({r['settings']['data']}, {r['settings']['train']} texts, "
        f"{r['settings']['epochs']:g} epoch, by length)",
        "",
        "| length | side | dtype | fraction of the dtype's peak | step real tokens/s | "
        "train s | macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for length, sides in r["fraction_of_dtype_peak"].items():
        for side, v in sides.items():
            out.append(
                f"| {length} | {side} | {v['dtype']} | {v['fraction_of_dtype_peak']} | "
                f"{v['step_real_tokens_per_s']:,} | {v['train_seconds']} | {v['macro_f1']} |"
            )
    return [*out, ""]


def levers_lines(r: dict) -> list[str]:
    """bench_step.py cases (benchmarks/levers.sh): one training step per lever, or per
    method (then with each step's method, model and the operators that took most of it)."""
    cases = r["cases"]
    methods = {c["settings"].get("method", "head") for c in cases.values()}
    if methods == {"head"}:
        title = "One training step per lever (bench_step.py: head, SmolLM2-135M, real tokens)"
        columns = []
    else:
        title = "One training step per method (bench_step.py: real tokens, profiled)"
        columns = ["method (model)", "top operators (share of self CPU time)"]
    out = [
        f"### {title}",
        "",
        "| case | "
        + "".join(f"{c} | " for c in columns[:1])
        + "rows x length | dtype | ms / step | tokens/s | fraction of the dtype's peak | "
        "peak GFLOP/s | warm-up s |" + "".join(f" {c} |" for c in columns[1:]),
        "|---|---|---|---|---|---|---|---|" + "---|" * len(columns),
    ]
    for case, c in cases.items():
        s = c["settings"]
        method = [f"{s.get('method', 'head')} ({s['model']}) | "] if columns else []
        top = c.get("profile_top", [])[:3]
        operators = [" " + ", ".join(f"{t['operator']} {t['share']:.0%}" for t in top) + " |"]
        out.append(
            f"| {case} | {''.join(method)}{s['batch_size']} x {s['length']} | {s['dtype']} | "
            f"{c['step_seconds'] * 1000:.0f} | {c['tokens_per_s']:,} | "
            f"{c['fraction_of_dtype_peak']} | {c['dtype_peak_gflops']:,} | "
            f"{c['warmup_seconds']} |" + ("".join(operators) if columns else "")
        )
    return [*out, ""]


def fused_lines(r: dict) -> list[str]:
    """bench_fused_lora.py: LoRA's adapters that share an input, separate (as PEFT runs
    them) against one matmul by their concatenated A, and what that saves of a step."""
    s = r["settings"]
    out = [
        f"### Fused LoRA A, measured before building it (bench_fused_lora.py: {s['model']}, "
        f"{s['tokens']:,} tokens, rank {s['rank']}, {s['dtype']}, forward + backward per block)",
        "",
        "| adapters | outputs | separate ms | fused A ms | speedup |",
        "|---|---|---|---|---|",
    ]
    for name, g in r["groups"].items():
        out.append(
            f"| {name} | {' / '.join(str(o) for o in g['outputs'])} | {g['separate_ms']} | "
            f"{g['fused_ms']} | {g['speedup']}x |"
        )
    out += [
        "",
        f"Over {r['decoder_blocks']} decoder blocks: {r['saved_ms_per_step']} ms saved of a "
        f"{r['default_step_ms']} ms default step ({r['step_fraction_saved']:.1%}).",
    ]
    return [*out, ""]


def setfit_lines(r: dict) -> list[str]:
    """bench_setfit.py: SetFit beside the head, the encoder and TF-IDF, per data set and
    training size, on one test sample per data set."""
    s = r["settings"]
    order = {"tfidf": 0, "setfit": 1, "encoder": 2, "head": 3, "instruct": 4}
    out = [
        f"### SetFit beside the other methods (max length {s['max_length']}, "
        f"{s['test']} test texts per data set, {s['validation']} validation)",
        "",
        f"setfit: {s['setfit']}; encoder: {s['encoder']}; head: {s['head']}; tfidf: "
        f"{s['tfidf']}"
        + (f"; instruct: {s['instruct']}" if "instruct" in s else "")
        + ". Train s = the fit (SetFit: its contrastive phase and its head); "
        "predict ex/s = the test set's prediction, tokenization included.",
        "",
        "| data | train texts | method | macro-F1 | accuracy | train s | predict ex/s | dtype |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted(r["cells"], key=lambda c: (c["data"], c["train"], order.get(c["method"], 9)))
    for c in cells:
        out.append(
            f"| {c['data']} | {c['train']:,} | {c['method']} | {c['macro_f1']:.4f} | "
            f"{c['accuracy']:.4f} | {c['train_seconds']:,.1f} | "
            f"{c['predict_examples_per_s'] or 0:,.1f} | {c['dtype'] or '-'} |"
        )
    return [*out, ""]


def pooling_lines(r: dict) -> list[str]:
    """bench_pooling_auto.py: last vs mean pooling trained in full on each data set, and
    whether each way of choosing between them (what --pooling auto does among them)
    picked the one that won on test."""
    s = r["settings"]
    rules = list(next(iter(r["datasets"].values()))["choices"])
    out = [
        f"### --pooling auto: which choice matches test ({s['model']}, {s['train']} training "
        f"texts, {s['validation']} validation, {s['test']} test, {s['max_length']} tokens, "
        f"{s['epochs']:g} epochs, seed {s['seed']})",
        "",
        "| data | last | mean | test p | " + " | ".join(rules) + " | dtype |",
        "|---|---|---|---|" + "---|" * len(rules) + "---|",
    ]
    for name, d in r["datasets"].items():
        runs = d["runs"]
        picks = [f"{c['chose']} {'✓' if c['matched_test'] else '✗'}" for c in d["choices"].values()]
        significance = d.get("test_significance") or {}
        p_value = significance.get("mcnemar_p") if isinstance(significance, dict) else None
        out.append(
            f"| {name} | {runs['last']['test_macro_f1']:.4f} | {runs['mean']['test_macro_f1']:.4f} "
            f"| {'-' if p_value is None else f'{p_value:.2g}'} | "
            + " | ".join(picks)
            + f" | {runs['last'].get('dtype') or '-'} |"
        )
    return [*out, ""]


def hierarchy_lines(r: dict) -> list[str]:
    """bench_hierarchy.py: per-level figures of 20newsgroups runs, the flat decision
    llmclf makes against a top-down one, and the parents of withheld answers."""
    s = r["settings"]
    out = [
        f"### Hierarchical labels: {s['data']} read with `--label-hierarchy {s['separator']}` "
        f"(level 1: {', '.join(s['level_1'])})",
        "",
        "Macro-F1 of the flat decision (llmclf's) / a top-down one (the group with the most "
        "summed probability first), per level; from the runs of the SetFit table above.",
        "",
    ]
    levels = [str(level["level"]) for level in r["runs"][0]["levels"]]
    out += [
        "| method | train texts | " + " | ".join(f"level {n}" for n in levels) + " | dtype |",
        "|---|---|" + "---|" * len(levels) + "---|",
    ]
    for run in r["runs"]:
        cells = [f"{v['flat_macro_f1']:.3f} / {v['top_down_macro_f1']:.3f}" for v in run["levels"]]
        out.append(
            f"| {run['method']} | {run['train']:,} | " + " | ".join(cells) + f" | {run['dtype']} |"
        )
    out += [
        "",
        "`--target-precision` P chosen on one half of the test texts and measured on the "
        "other, both ways round: the share answered and right; of the withheld texts, the "
        "share still given a parent and how often it is right, at the parents' own "
        "threshold (llmclf's) / at the class threshold (a bare `--abstain-below`).",
        "",
        "| method | train texts | P | answered | right | withheld with a parent | parent right |",
        "|---|---|---|---|---|---|---|",
    ]

    def pair(a, b):
        return " / ".join("-" if v is None else f"{v:.3f}" for v in (a, b))

    for run in r["runs"]:
        for a in run["abstaining"]:
            right = "-" if a["answered_accuracy"] is None else f"{a['answered_accuracy']:.3f}"
            out.append(
                f"| {run['method']} | {run['train']:,} | {a['target_precision']:g} | "
                f"{a['coverage']:.3f} | {right} | "
                f"{pair(a['with_parent'], a['with_parent_at_class_threshold'])} | "
                f"{pair(a['parent_accuracy'], a['parent_accuracy_at_class_threshold'])} |"
            )
    return [*out, ""]


def render(results=RESULTS) -> list[str]:
    """The generated part of BENCHMARKS.md: every results file in ``results``, each
    after the machine it ran on."""
    renderers = (
        ("train_", train_lines),
        ("inference_", inference_lines),
        ("instruct_", instruct_lines),
        ("layers_", layers_lines),
        ("serve_", serve_lines),
        ("long_", long_lines),
        ("scale", scale_lines),
        ("threads", threads_lines),
        ("invariance", invariance_lines),
        ("export_", export_lines),
        ("fraction_", fraction_lines),
        ("levers_", levers_lines),
        ("fused_", fused_lines),
        ("setfit_", setfit_lines),
        ("pooling_", pooling_lines),
        ("hierarchy_", hierarchy_lines),
    )
    lines: list[str] = []
    shown = None
    for prefix, lines_of in renderers:
        for path in sorted(results.glob(f"{prefix}*.json")):
            result = json.loads(path.read_text())
            if result["machine"] != shown:  # each result says the machine it ran on
                lines += machine_lines(result["machine"])
                shown = result["machine"]
            lines += lines_of(result)
            lines += [f"(from `benchmarks/results/{path.name}`, {result['date']})", ""]
    return lines


def main() -> None:
    lines = render()
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
