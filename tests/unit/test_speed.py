"""``--dtype auto`` on a CPU: the probe's choice (timings injected), its cache, the real
measurement, and bf16 training that keeps the trainable weights in fp32."""

from __future__ import annotations

import json

import pytest
import torch

from llmclf import backbone, speed
from llmclf.speed import DtypeProbe
from llmclf.speed import cpu_probe as real_cpu_probe  # conftest replaces speed.cpu_probe
from tests.conftest import make_texts


def probe(fp32_ms: float, bf16_ms: float, error: float = 0.004) -> DtypeProbe:
    return DtypeProbe([256, 64, 128], fp32_ms, bf16_ms, error, "test cpu")


@pytest.mark.parametrize(
    "fp32_ms, bf16_ms, error, chosen",
    [
        (41.0, 11.0, 0.004, torch.bfloat16),  # Zen 5 / AMX: bf16 several times faster
        (142.0, 4260.0, 0.004, torch.float32),  # Zen 3: bf16 30x slower
        (10.0, 9.5, 0.004, torch.float32),  # within timing noise: keep fp32
        (10.0, 2.0, 0.3, torch.float32),  # fast but wrong numbers
    ],
)
def test_the_faster_dtype_that_keeps_the_numbers_is_chosen(fp32_ms, bf16_ms, error, chosen):
    assert probe(fp32_ms, bf16_ms, error).choice == chosen


def test_auto_on_a_cpu_follows_the_probe_and_reports_it(monkeypatch):
    monkeypatch.setattr(speed, "cpu_probe", lambda hidden, intermediate: probe(40.0, 10.0))
    dtype, report = backbone.choose_dtype("auto", torch.device("cpu"))
    assert dtype == torch.bfloat16
    assert report["speedup_bf16_vs_fp32"] == 4.0 and report["chosen"] == "bfloat16"
    monkeypatch.setattr(speed, "cpu_probe", lambda hidden, intermediate: probe(10.0, 40.0))
    assert backbone.choose_dtype("auto", torch.device("cpu"))[0] == torch.float32


def test_the_probe_runs_once_per_machine_and_shape(monkeypatch, tmp_path):
    measured = []

    def fake_measure(shape, reps=5):
        measured.append(shape)
        return DtypeProbe(list(shape), 30.0, 10.0, 0.004, speed.cpu_name())

    monkeypatch.setattr(speed, "measure", fake_measure)
    monkeypatch.setattr(speed, "_measured", {})
    first = real_cpu_probe(576, 1536, cache=tmp_path)
    assert not first.cached and len(measured) == 1
    stored = json.loads((tmp_path / speed.PROBE_FILE).read_text())
    assert list(stored) == [speed.machine_key((speed.PROBE_TOKENS, 576, 1536))]

    monkeypatch.setattr(speed, "_measured", {})  # a new process: read from the cache file
    again = real_cpu_probe(576, 1536, cache=tmp_path)
    assert again.cached and again.speedup == first.speedup and len(measured) == 1

    real_cpu_probe(960, 2560, cache=tmp_path)  # another model's shapes
    monkeypatch.setattr(speed, "_measured", {})
    monkeypatch.setattr(speed, "cpu_name", lambda: "another CPU")  # another machine
    real_cpu_probe(576, 1536, cache=tmp_path)
    assert len(measured) == 3
    assert len(json.loads((tmp_path / speed.PROBE_FILE).read_text())) == 3


CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16

"""


def test_two_cpus_of_one_name_but_another_model_are_different_machines(monkeypatch, tmp_path):
    """ "AMD EPYC" names a Zen 3 (bf16 30x slower here) and a Zen 4 (3x faster): the probe's
    cache tells them apart by family and model, read from the first processor's block."""
    zen3, zen4 = tmp_path / "zen3", tmp_path / "zen4"
    zen3.write_text(CPUINFO.format(n=0, model=1) + CPUINFO.format(n=1, model=1))
    zen4.write_text(CPUINFO.format(n=0, model=17) + CPUINFO.format(n=1, model=99))
    info = speed.cpu_info(zen4)
    assert info["name"] == "AMD EPYC" and info["id"] == "family 25 model 17"
    assert {"avx512f", "avx512_bf16"} <= info["flags"] and "amx_tile" not in info["flags"]
    assert speed.cpu_info(tmp_path / "absent")["id"] is None  # not Linux: name only

    keys, real = {}, speed.cpu_info
    for machine in (zen3, zen4):
        monkeypatch.setattr(speed, "cpu_info", lambda path=machine: real(path))
        keys[machine.name] = speed.machine_key((256, 576, 1536))
    assert "AMD EPYC (family 25 model 1)" in keys["zen3"]
    assert "AMD EPYC (family 25 model 17)" in keys["zen4"]


def test_a_garbled_cache_file_is_measured_over(monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "_measured", {})
    (tmp_path / speed.PROBE_FILE).write_text("{not json")
    monkeypatch.setattr(
        speed, "measure", lambda shape, reps=5: DtypeProbe(list(shape), 1.0, 2.0, 0.0, "x")
    )
    assert real_cpu_probe(64, 128, cache=tmp_path).choice == torch.float32
    assert json.loads((tmp_path / speed.PROBE_FILE).read_text())


def test_the_real_measurement_times_both_dtypes_and_checks_bf16s_numbers():
    result = speed.measure((64, 96, 192), reps=2)
    assert result.float32_ms > 0 and result.bfloat16_ms > 0
    assert 0 < result.relative_error < 0.02  # bf16 keeps ~3 significant digits
    assert result.shape == [64, 96, 192] and result.machine == speed.cpu_name()


def test_model_sizes_come_from_the_models_config(tiny_llama):
    assert backbone.model_sizes(tiny_llama) == (64, 128)
    assert backbone.model_sizes(None) == backbone.DEFAULT_SIZES


def test_bf16_training_keeps_the_trainable_weights_in_fp32(tiny_llama):
    """--dtype bfloat16 on a CPU: the frozen base in bf16 under bf16 autocast, the LoRA
    weights and the head in fp32 (so the optimizer state is fp32), a finite loss."""
    from llmclf import HeadClassifier

    texts, labels = make_texts(48, seed=2)
    clf = HeadClassifier(tiny_llama, dtype="bfloat16", epochs=1, batch_size=8, progress=False)
    clf.fit(texts, labels)
    params = dict(clf.model_.named_parameters())
    lora = {n: p.dtype for n, p in params.items() if "lora_" in n}
    head = {n: p.dtype for n, p in params.items() if ".score." in n or n.startswith("score.")}
    base = {n: p.dtype for n, p in params.items() if "proj.base_layer" in n}
    assert lora and set(lora.values()) == {torch.float32}
    assert head and set(head.values()) == {torch.float32}
    assert base and set(base.values()) == {torch.bfloat16}
    losses = [row["loss"] for row in clf.train_result_.log_history if "loss" in row]
    assert losses and all(loss == loss and loss < 10 for loss in losses)
    assert clf.predict_proba(texts[:4]).dtype.kind == "f"


def test_bf16_training_forwards_run_under_cpu_autocast(tiny_llama):
    """The head's forward pools the base model's hidden states, not model.forward, which
    is where accelerate puts the Trainer's autocast: the loss computation opens it too."""
    from llmclf import HeadClassifier
    from tests.conftest import decoder_forwards

    texts, labels = make_texts(16, seed=2)
    with decoder_forwards("cpu") as seen:
        HeadClassifier(tiny_llama, dtype="bfloat16", epochs=1, batch_size=8, progress=False).fit(
            texts, labels
        )
    assert seen and all(enabled for enabled, _ in seen)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}


def test_metrics_record_the_dtype_and_the_probe(tiny_llama, tmp_path):
    from llmclf.cli import main

    texts, labels = make_texts(60, seed=1)
    import pandas as pd

    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv"), "--epochs", "1"]
    assert main([*args, "--max-length", "32", "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dtype"] == "float32"  # conftest's probe: bf16 at half speed
    assert metrics["dtype_probe"]["chosen"] == "float32"
    assert metrics["dtype_probe"]["speedup_bf16_vs_fp32"] == 0.5
    assert metrics["eval_dtype"] == "float32"
    # what was decided once and applied, for training and for the test pass alike
    assert metrics["placement"] == {
        "device": "cpu",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "malloc_tuned": speed.malloc_tuned(),
    }
    # the parallelism it trained and evaluated with
    for threads in (metrics["threads"], metrics["eval_threads"]):
        assert threads["torch_threads"] == torch.get_num_threads()
        assert threads["usable_cpus"] >= 1
        assert threads["tokenizers_parallelism"] in ("on (default)", "on", "off")


@pytest.mark.parametrize(
    "content, cpus", [("200000 100000\n", 2.0), ("50000 100000", 0.5), ("max 100000", None)]
)
def test_a_containers_cpu_quota_is_read(tmp_path, content, cpus):
    (tmp_path / "cpu.max").write_text(content)
    assert speed.cgroup_cpus(tmp_path / "cpu.max") == cpus
    assert speed.cgroup_cpus(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "quota, omp, expected",
    [
        ("100000 100000", None, 1),  # 1 CPU of quota: torch cut to 1 thread
        ("50000 100000", None, 1),  # half a CPU: still 1 thread
        ("100000 100000", "2", None),  # the user's OMP_NUM_THREADS wins
        ("max 100000", None, None),  # no quota
        ("6400000 100000", None, None),  # a quota above torch's count: unchanged
    ],
)
def test_torch_threads_are_cut_to_the_cpu_quota(tmp_path, monkeypatch, quota, omp, expected):
    (tmp_path / "cpu.max").write_text(quota)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert speed.fit_threads_to_quota(tmp_path / "cpu.max") == expected
        assert torch.get_num_threads() == (expected or 2)
    finally:
        torch.set_num_threads(before)


def test_the_tokenizers_parallelism_is_reported_as_set(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    assert speed.thread_settings()["tokenizers_parallelism"] == "on (default)"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert speed.thread_settings()["tokenizers_parallelism"] == "off"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    assert speed.thread_settings()["tokenizers_parallelism"] == "on"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"MALLOC_ARENA_MAX": "2"}, False),  # the user tunes malloc themselves
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, False),
    ],
)
def test_malloc_is_left_alone_where_the_user_says_so(monkeypatch, env, expected):
    monkeypatch.setattr(speed, "_malloc_tuned", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert speed.tune_malloc() is expected


def test_malloc_is_tuned_once_with_glibc(monkeypatch):
    import platform

    monkeypatch.setattr(speed, "_malloc_tuned", None)
    for key in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert speed.tune_malloc() is glibc  # mallopt accepted both settings
    assert speed.malloc_tuned() is glibc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert speed.tune_malloc() is glibc  # decided once per process
