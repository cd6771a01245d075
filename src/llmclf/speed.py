"""``--dtype auto`` on a CPU, decided by measurement.

CPU flags cannot say whether bfloat16 is fast: bf16 ran 30x slower than fp32 on an AMD
EPYC Zen 3, 1.6x slower on an Intel Xeon reporting AVX512-BF16, 3.7x faster on a Zen 5 and
6.5x faster on a Xeon with AMX. So a short probe times the forward and backward pass of a
linear layer at the model's own shapes (tokens x hidden -> intermediate, the MLP's first
matmul, with the gradient flowing to the input as it does through a frozen base) in both
dtypes, checks that bf16 gives the fp32 numbers to bf16 precision, and picks the faster.
The result is cached per machine (CPU model, core count, threads, torch version, shapes)
in ``$LLMCLF_CACHE/dtype_probe.json``, so the probe runs once per machine and model shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmclf.catalog import cache_dir
from llmclf.run_folder import atomic_path

log = logging.getLogger("llmclf")

PROBE_FILE = "dtype_probe.json"
PROBE_TOKENS = 256  # rows of the probe's activations: a training batch's worth of tokens
MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much to be chosen (timing noise)
MAX_RELATIVE_ERROR = 0.05  # bf16's output vs fp32's, relative to the output's scale
PROBE_VERSION = 1  # bump when what the probe measures changes


@dataclass
class DtypeProbe:
    """What the probe measured: milliseconds per forward + backward in each dtype."""

    shape: list[int]  # [tokens, in_features, out_features]
    float32_ms: float
    bfloat16_ms: float
    relative_error: float
    machine: str
    cached: bool = False

    @property
    def speedup(self) -> float:
        """How many times faster bf16 ran than fp32 (below 1: slower)."""
        return self.float32_ms / self.bfloat16_ms if self.bfloat16_ms > 0 else 0.0

    @property
    def choice(self) -> torch.dtype:
        fast = self.speedup >= MIN_SPEEDUP
        right = self.relative_error <= MAX_RELATIVE_ERROR
        return torch.bfloat16 if fast and right else torch.float32

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "speedup_bf16_vs_fp32": round(self.speedup, 3),
            "chosen": str(self.choice).removeprefix("torch."),
        }


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict:
    """The first CPU's model name, x86 family and model ("AMD EPYC" alone names a Zen 3 and
    a Zen 4 alike) and flags, from ``/proc/cpuinfo``; elsewhere the platform's processor,
    no id and no flags."""
    name, ids, flags = None, {}, ""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if not line.strip() and name:  # the end of the first processor's block
                break
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                name = value
            elif key in ("cpu family", "model"):
                ids[key.split()[-1]] = value
            elif key == "flags":
                flags = value
    return {
        "name": name or platform.processor() or platform.machine(),
        "id": " ".join(f"{k} {v}" for k, v in ids.items()) or None,
        "flags": set(flags.split()),
    }


def cpu_name() -> str:
    """The CPU's model name with its family and model where known, e.g. ``AMD EPYC (family
    25 model 17)``: what the probe's cache tells machines apart by."""
    info = cpu_info()
    return f"{info['name']} ({info['id']})" if info["id"] else info["name"]


def machine_id() -> str:
    """What a probe's timings hold for: the CPU, its cores, torch's threads and version."""
    return (
        f"{cpu_name()}|{os.cpu_count()} cores|{torch.get_num_threads()} threads"
        f"|torch {torch.__version__}"
    )


def machine_key(shape: tuple[int, int, int]) -> str:
    return f"v{PROBE_VERSION}|{machine_id()}|{'x'.join(map(str, shape))}"


def _time_pass(x: torch.Tensor, weight: torch.Tensor, reps: int) -> float:
    """The fastest of ``reps`` timings (ms) of ``linear(x, weight)`` forward and backward
    (to x): the fastest, since another process taking the cores only ever slows a pass."""
    times = []
    for _ in range(reps):
        x.grad = None
        start = time.perf_counter()
        out = torch.nn.functional.linear(x, weight)
        out.sum().backward()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def measure(shape: tuple[int, int, int], reps: int = 5) -> DtypeProbe:
    """Time fp32 and bf16 at ``shape`` (one warm-up pass each, then the fastest of
    ``reps``); a bf16 pass over 20x slower than fp32 is not timed further."""
    tokens, n_in, n_out = shape
    generator = torch.Generator().manual_seed(0)
    x32 = torch.randn(tokens, n_in, generator=generator).requires_grad_(True)
    w32 = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
    x16 = x32.detach().bfloat16().requires_grad_(True)
    w16 = w32.bfloat16()
    with torch.no_grad():
        reference = torch.nn.functional.linear(x32, w32)
        approx = torch.nn.functional.linear(x16, w16).float()
        error = float((approx - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    first32 = _time_pass(x32, w32, 1)
    first16 = _time_pass(x16, w16, 1)
    fp32 = _time_pass(x32, w32, reps)
    bf16 = first16 if first16 > 20 * first32 else _time_pass(x16, w16, reps)
    return DtypeProbe(
        shape=list(shape),
        float32_ms=round(fp32, 3),
        bfloat16_ms=round(bf16, 3),
        relative_error=round(error, 5),
        machine=cpu_name(),
    )


_measured: dict[str, DtypeProbe] = {}  # this process's probes: logged once each


def cpu_probe(hidden: int, intermediate: int, cache: Path | None = None) -> DtypeProbe:
    """The probe for a model of these sizes on this machine: from this process, from the
    cache file, or measured now (and cached)."""
    shape = (PROBE_TOKENS, int(hidden), int(intermediate))
    key = machine_key(shape)
    if key in _measured:
        return _measured[key]
    path = (cache or cache_dir()) / PROBE_FILE
    stored: dict = {}
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(path.read_text())
    stored = stored if isinstance(stored, dict) else {}
    entry, probe = stored.get(key), None
    if isinstance(entry, dict):
        with contextlib.suppress(TypeError):  # an entry of another layout: measure again
            probe = DtypeProbe(**{**entry, "cached": True})
    if probe is None:
        probe = measure(shape)
        stored[key] = dataclasses.asdict(probe)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as partial:
                partial.write_text(json.dumps(stored, indent=1))
    log.info(
        "--dtype auto: %s (bf16 forward+backward at %s ran %.2fx fp32's speed on %s%s)",
        str(probe.choice).removeprefix("torch."),
        "x".join(map(str, shape)),
        probe.speedup,
        probe.machine,
        ", measured earlier" if probe.cached else "",
    )
    _measured[key] = probe
    return probe


def cgroup_cpus(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The CPUs a container's quota allows (cgroup v2 ``cpu.max``: ``quota period``), or
    None without a quota. torch counts the host's cores, not the quota."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = path.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the core count elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fit_threads_to_quota(quota_path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Under a container CPU quota smaller than torch's thread count (torch counts the
    host's cores), set torch's threads to the quota, so that its threads do not take turns
    on fewer CPUs than they are. ``OMP_NUM_THREADS`` set by the user is left alone. Returns
    the thread count set, or None when nothing changed."""
    quota = cgroup_cpus(quota_path)
    if quota is None or os.environ.get("OMP_NUM_THREADS"):
        return None
    wanted = max(1, int(quota))  # a fractional CPU gets its whole-CPU floor, at least 1
    if wanted >= torch.get_num_threads():
        return None
    log.info(
        "this container's CPU quota is %g CPUs: torch set to %d threads (was %d; "
        "OMP_NUM_THREADS overrides)",
        quota,
        wanted,
        torch.get_num_threads(),
    )
    torch.set_num_threads(wanted)
    return wanted


def thread_settings() -> dict:
    """The CPU parallelism this process runs with, for ``metrics.json``: torch's intra-op
    and inter-op threads, the CPUs it may use (and a container's quota), and the
    tokenizers' own thread pool (on unless ``TOKENIZERS_PARALLELISM`` turns it off)."""
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "usable_cpus": usable_cpus(),
        "cpu_quota": cgroup_cpus(),
        "tokenizers_parallelism": (
            "on (default)"
            if parallelism is None
            else ("off" if parallelism.lower() in ("0", "false", "off", "no") else "on")
        ),
    }


# glibc's malloc returns freed memory to the system and maps large blocks afresh, so a
# process that has not yet grown its heap pays page faults on every batch's activations:
# a freshly loaded bf16 SmolLM2 run predicted the demo's 426 test articles at 23-24
# examples/s, and at 36-37 with these two settings (2-core AMX Xeon, 2026-12-03).
MMAP_THRESHOLD = 32 * 2**20  # blocks up to this come from the heap (glibc's largest)
TRIM_THRESHOLD = 1 * 2**30  # free memory kept at the heap's top before giving it back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_malloc_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep freed activation memory in the process (glibc ``mallopt``: a fixed mmap
    threshold of 32 MiB and a 1 GiB trim threshold) instead of unmapping and faulting it
    in again every batch. Only with glibc, once per process, and not where the user set
    glibc's own ``MALLOC_*`` / ``GLIBC_TUNABLES`` (their settings stand). Whether to call
    it at all is the classifier's option (``backbone.place(..., tune_malloc=...)``).
    Returns whether the settings are in force."""
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        _malloc_tuned = bool(
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    if _malloc_tuned:
        log.debug("malloc: mmap threshold %d, trim threshold %d", MMAP_THRESHOLD, TRIM_THRESHOLD)
    return _malloc_tuned


def malloc_tuned() -> bool:
    """Whether ``tune_malloc`` has put its settings in force in this process."""
    return bool(_malloc_tuned)


# -- attention, chosen per shape by measurement -------------------------------------------
#
# torch's SDPA picks its CPU flash kernel whenever it can. Its backward pass was 22 % of a
# bf16 training step at 8 x 128 tokens on a 2-core AMX Xeon (13.6 ms a layer), where the
# plain math kernel (two batched matmuls and a softmax) was faster. Which one wins depends
# on the CPU, the dtype and the length, so a probe times both, forward and backward, at the
# batch's shape (lengths rounded up to a power of two), once per machine.

ATTENTION_PROBE_FILE = "attention_probe.json"
ATTENTION_BACKENDS = ("flash", "math")
ATTENTION_PROBE_VERSION = 1


def attention_bucket(length: int) -> int:
    """The probed length a batch of ``length`` tokens runs at: the next power of two, at
    least 32."""
    return max(32, 1 << max(0, int(length) - 1).bit_length())


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}[name]


def measure_attention(
    rows: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, reps: int = 3
) -> dict[str, float]:
    """Milliseconds of SDPA forward + backward (to q, k, v) per kernel, the fastest of
    ``reps`` after a warm-up, with a causal boolean mask as padded batches have."""
    with torch.inference_mode(False), torch.enable_grad():  # also from an evaluation pass
        return _measure_attention(rows, heads, length, head_dim, dtype, reps)


def _measure_attention(rows, heads, length, head_dim, dtype, reps) -> dict[str, float]:
    from torch.nn.attention import sdpa_kernel

    generator = torch.Generator().manual_seed(0)
    shape = (rows, heads, length, head_dim)
    q, k, v = (
        torch.randn(shape, generator=generator).to(dtype).requires_grad_(True) for _ in range(3)
    )
    mask = torch.ones(length, length, dtype=torch.bool).tril().expand(rows, 1, length, length)
    times = {}
    for name in ATTENTION_BACKENDS:
        best = float("inf")
        for rep in range(reps + 1):
            start = time.perf_counter()
            with sdpa_kernel(_sdpa_backend(name)):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out.sum().backward()
            if rep:  # the first is a warm-up
                best = min(best, (time.perf_counter() - start) * 1000)
        times[name] = round(best, 3)
    return times


_attention: dict[str, str] = {}  # this process's choices


def attention_backend(
    rows: int,
    heads: int,
    length: int,
    head_dim: int,
    dtype: torch.dtype,
    cache: Path | None = None,
):
    """The SDPA kernel that ran forward + backward fastest at this shape (its rows and
    length rounded up to powers of two), from this process, the cache file or measured
    now (and cached)."""
    bucket, rows = attention_bucket(length), 1 << max(0, int(rows) - 1).bit_length()
    shape = f"{rows}x{heads}x{bucket}x{head_dim}|{str(dtype).removeprefix('torch.')}"
    key = f"v{ATTENTION_PROBE_VERSION}|{machine_id()}|{shape}"
    if key not in _attention:
        path = (cache or cache_dir()) / ATTENTION_PROBE_FILE
        stored: dict = {}
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(path.read_text())
        stored = stored if isinstance(stored, dict) else {}
        times = stored.get(key)
        if not (isinstance(times, dict) and set(times) == set(ATTENTION_BACKENDS)):
            times = measure_attention(rows, heads, bucket, head_dim, dtype)
            stored[key] = times
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as partial:
                    partial.write_text(json.dumps(stored, indent=1))
        _attention[key] = min(ATTENTION_BACKENDS, key=lambda name: times[name])
        log.info(
            "attention at %s: %s kernel (forward+backward ms: %s)",
            shape,
            _attention[key],
            ", ".join(f"{name} {times[name]}" for name in ATTENTION_BACKENDS),
        )
    return _sdpa_backend(_attention[key])
