"""Fill the two folders gpu_check.sh carries to a lent GPU machine, which has no network:

- ``.whl/``: the wheels of benchmarks/gpu_wheels.txt for that machine's CPython (3.12),
  bitsandbytes trimmed to the CUDA 13.0 and CPU libraries (the image's torch is
  2.11+cu130; the full wheel is 43 MB of libraries for eleven CUDA and ROCm versions,
  two thirds of the 64 MiB that may travel);
- ``.gpu-assets/``: SmolLM2's tokenizer (make_random_model.py builds the 8B-shaped Llama
  on the device with it) and the benchmark data, a stratified 20 Newsgroups sample as
  CSV files with a ``split`` column (the built-in sets live in packages the device lacks).

It ends by printing what would travel: the tracked tree plus both folders, against the
64 MiB limit. For the CPU dry run, fetch the wheels for this machine's Python instead:
``--python-version 3.11 --wheels /tmp/gpu-check-wheels``.

Usage: python benchmarks/gpu_prepare.py [--python-version 3.12] [--wheels .whl]
           [--assets .gpu-assets]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from common import ROOT, bench_data

WHEEL_LIST = ROOT / "benchmarks" / "gpu_wheels.txt"
CARRY_LIMIT_MIB = 64
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
]
# bitsandbytes loads libbitsandbytes_cuda<torch.version.cuda>.so, or _cpu.so without CUDA
BNB_KEEP = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so")
# the benchmark data: training (bench_train, bench_inference) and zero-shot instruct
TRAIN_SPLITS = (320, 40, 80)
INSTRUCT_SPLITS = (0, 0, 48)


def wheel_names() -> list[str]:
    lines = (line.split("#")[0].strip() for line in WHEEL_LIST.read_text().splitlines())
    return [line for line in lines if line]


def download(names: list[str], python_version: str, folder: Path) -> None:
    """``pip download --no-deps`` of exactly ``names`` for that CPython on x86-64 Linux."""
    shutil.rmtree(folder, ignore_errors=True)  # one version of each, nothing stale
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
         *platforms, "--dest", str(folder), *names],
        check=True,
    )  # fmt: skip


def trim_bitsandbytes(folder: Path) -> Path:
    """Rewrite the bitsandbytes wheel without the native libraries the device cannot use;
    the file gets build tag 1 so it is never taken for the published wheel."""
    (wheel,) = folder.glob("bitsandbytes-*.whl")
    name, version, *tags = wheel.stem.split("-")
    trimmed = folder / f"{name}-{version}-1cu130-{'-'.join(tags[-3:])}.whl"

    def dropped(path: str) -> bool:
        file = path.rsplit("/", 1)[-1]
        return file.startswith("libbitsandbytes_") and file not in BNB_KEEP

    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w") as target:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines()
                data = ("\n".join(r for r in rows if not dropped(r.split(",")[0])) + "\n").encode()
            target.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
    wheel.unlink()
    return trimmed


def write_assets(folder: Path) -> None:
    from transformers import AutoTokenizer

    from llmclf.backbone import model_source

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_source("smollm2-135m"))
    tokenizer.save_pretrained(folder / "smollm2-tokenizer")
    shutil.copy(bench_data("20newsgroups", *TRAIN_SPLITS), folder / "train.csv")
    shutil.copy(bench_data("20newsgroups", *INSTRUCT_SPLITS), folder / "instruct.csv")


def mib(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the device's CPython")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--assets", type=Path, default=ROOT / ".gpu-assets")
    args = parser.parse_args()

    download(wheel_names(), args.python_version, args.wheels)
    trim_bitsandbytes(args.wheels)
    write_assets(args.assets)

    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    sizes = {
        "tracked tree": mib(ROOT / p for p in tracked if p),
        str(args.wheels): mib(args.wheels.rglob("*")),
        str(args.assets): mib(args.assets.rglob("*")),
    }
    for where, size in sizes.items():
        print(f"{size:7.1f} MiB  {where}")
    total = sum(sizes.values())
    print(f"{total:7.1f} MiB  in all (limit {CARRY_LIMIT_MIB} MiB, untracked files not counted)")
    if total > CARRY_LIMIT_MIB:
        raise SystemExit("over the carry limit: drop wheels from benchmarks/gpu_wheels.txt")


if __name__ == "__main__":
    main()
