"""Several processes: ``torchrun`` runs ``llmclf train`` with DDP on CPU (gloo), and the
result is the one-process run's with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from safetensors.torch import load_file

from llmclf.cli import main
from llmclf.run_folder import RunFolder
from tests.conftest import make_texts

# torchrun / accelerate launch subprocesses: make test runs them, make test-fast does not
pytestmark = pytest.mark.slow

# fp32 sums in a different order (each process's half-batch, then the all-reduce)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 96 training rows: whole batches of 8 (a last, partial batch is split unevenly
    # between the processes and averaged per process, so it weighs its rows differently)
    texts, labels = make_texts(120, seed=3)
    path = tmp_path_factory.mktemp("ddp-data") / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dropout_free_bert(tmp_path_factory) -> str:
    """The tiny encoder without dropout: dropout draws differ between processes."""
    from transformers import AutoConfig

    from tests.conftest import make_tiny_bert

    folder = make_tiny_bert(tmp_path_factory.mktemp("bert-no-dropout"))
    config = AutoConfig.from_pretrained(folder)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(folder)
    return str(folder)


LAUNCHERS = {
    # a free rendezvous port
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"],
    # its multi-GPU launcher on CPUs (llmclf gets --device cpu); a free port
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    + ["--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0"],
}


def torchrun(*args, launcher: str = "torchrun", **popen) -> subprocess.Popen:
    """Two processes of ``llmclf.cli`` under ``launcher``."""
    command = [sys.executable, *LAUNCHERS[launcher], "-m", "llmclf.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=env, text=True, **popen)


def run_torchrun(*args, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    process = torchrun(*args, launcher=launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def weights(run: Path) -> dict:
    name = next(n for n in ("adapter_model.safetensors", "model.safetensors") if (run / n).exists())
    return load_file(str(run / name))


def losses(run: Path) -> list[tuple[int, float]]:
    log = json.loads((run / "train_log.json").read_text())
    return [(row["step"], row["loss"]) for row in log if "loss" in row]


def assert_same_run(got: Path, want: Path) -> None:
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name].float(), b[name].float(), atol=TOLERANCE, err_msg=name)
    metrics, expected = (json.loads((r / "metrics.json").read_text()) for r in (got, want))
    assert metrics["train_steps"] == expected["train_steps"]
    for key in ("macro_f1", "accuracy", "ece"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    (steps, values), (want_steps, want_values) = (zip(*losses(r)) for r in (got, want))
    assert steps == want_steps
    np.testing.assert_allclose(values, want_values, atol=TOLERANCE)
    rows = pd.read_json(got / "test_predictions.jsonl", lines=True)
    assert len(rows) == len(pd.read_json(want / "test_predictions.jsonl", lines=True))


@pytest.mark.parametrize(
    "method,extra,launcher",
    [
        ("head", ["--lora-dropout", "0"], "torchrun"),
        ("head", ["--lora-dropout", "0"], "accelerate"),
        ("instruct", ["--lora-dropout", "0", "--max-length", "64"], "torchrun"),
        ("encoder", [], "torchrun"),
    ],
)
def test_two_processes_train_what_one_trains_with_the_same_global_batch(
    method, extra, launcher, tiny_llama, dropout_free_bert, data, tmp_path
):
    model = dropout_free_bert if method == "encoder" else tiny_llama
    common = [
        "train",
        "--method",
        method,
        "--model",
        model,
        "--data",
        str(data),
        "--epochs",
        "2",
        "--max-length",
        "32",
        *extra,
        "--early-stopping-patience",
        "0",
        "--dtype",
        "float32",
        "--device",
        "cpu",  # gloo on CPU, also where a GPU is visible
        "--learning-rate",
        "1e-3",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--batch-size", "8", "--output", str(one)]) == 0
    result = run_torchrun(*common, "--batch-size", "4", "--output", str(two), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(two, one)
    assert json.loads((two / "metrics.json").read_text())["num_processes"] == 2
    assert json.loads((one / "metrics.json").read_text())["num_processes"] == 1
    # the main process alone evaluated and wrote: one summary, and the others' log is quiet
    assert result.stdout.count("written to") == 1
    assert "rank 1" not in result.stderr


def test_a_checkpoint_missing_a_process_rng_state_is_not_resumed_from(tmp_path):
    """The main process writes trainer_state.json while the other process may still be
    writing its RNG state: killed then, the checkpoint is incomplete for a 2-process run
    (resumed from, that process would draw other numbers: a different run)."""
    for step, ranks in ((4, (0, 1)), (8, (0,))):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        for rank in ranks:
            (folder / f"rng_state_{rank}.pth").write_bytes(b"x")
    assert RunFolder(tmp_path).last_checkpoint(processes=2).endswith("checkpoint-4")
    assert RunFolder(tmp_path).last_checkpoint().endswith("checkpoint-8")  # one process


def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tiny_llama, data, tmp_path):
    common = [
        "train",
        "--model",
        tiny_llama,
        "--data",
        str(data),
        "--epochs",
        "10",
        "--max-length",
        "32",
        "--lora-dropout",
        "0",
        "--early-stopping-patience",
        "0",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    reference, run = tmp_path / "reference", tmp_path / "run"
    result = run_torchrun(*common, "--output", str(reference))
    assert result.returncode == 0, result.stderr[-3000:]

    process = torchrun(
        *common,
        "--output",
        str(run),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300  # until a checkpoint both processes finished writing
    while time.time() < deadline and RunFolder(run).last_checkpoint(processes=2) is None:
        time.sleep(0.05)
    # the workers first (torchrun starts them in their own process groups), then the launcher
    launcher = psutil.Process(process.pid)
    for worker in launcher.children(recursive=True):
        worker.send_signal(signal.SIGKILL)
    launcher.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "metrics.json").exists()
    resumed = run_torchrun(*common, "--output", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["resumed_from_step"] < metrics["train_steps"]
    assert_same_run(run, reference)


def test_two_processes_predict_one_merged_output_in_input_order(tiny_llama, data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", tiny_llama, "--data", str(data), "--epochs", "1"]
    args += ["--max-length", "32", "--dtype", "float32", "--device", "cpu"]
    assert main([*args, "--output", str(run)]) == 0
    texts, _ = make_texts(45, seed=9)
    texts[10] = ""
    pd.DataFrame({"id": range(45), "text": texts}).to_csv(tmp_path / "in.csv", index=False)
    predict = ["predict", str(run), "--input", str(tmp_path / "in.csv"), "--chunk-rows", "4"]
    predict += ["--device", "cpu"]
    assert main([*predict, "--output", str(tmp_path / "one.csv")]) == 0
    result = run_torchrun(*predict, "--output", str(tmp_path / "two.csv"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote 45 predictions") == 1

    one = pd.read_csv(tmp_path / "one.csv", keep_default_na=False)
    two = pd.read_csv(tmp_path / "two.csv", keep_default_na=False)  # one header line
    assert list(two["id"]) == list(range(45))  # 12 chunks, alternating between processes
    assert list(two["prediction"]) == list(one["prediction"])
    assert two.loc[10, "prediction"] == ""
    probabilities = [c for c in one.columns if c.startswith("proba_")]
    np.testing.assert_allclose(
        two[probabilities].replace("", np.nan).astype(float),
        one[probabilities].replace("", np.nan).astype(float),
        atol=1e-6,
    )
    assert not list(tmp_path.glob(".two*"))  # no parts left behind


LEAVE_CHECK = """
import atexit

import torch

# registered before llmclf's handler, so it runs after it (atexit is last-in, first-out)
atexit.register(lambda: print("group at exit:", torch.distributed.is_initialized()))

from llmclf.distributed import init_process_group

init_process_group()
total = torch.ones(1)
torch.distributed.all_reduce(total)
print("reduced:", int(total.item()))
"""


def test_a_process_leaves_its_process_group_before_python_finalizes(tmp_path):
    """Issue 32: a process group left to the interpreter's teardown can abort the process
    after its work is done (a gloo thread dropping a tensor once Python is finalizing:
    ``terminate called without an active exception``, 1 of 20 processes on a loaded
    2-core machine). llmclf destroys it at exit, whoever set it up."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_CHECK)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["reduced: 1", "group at exit: False"]
