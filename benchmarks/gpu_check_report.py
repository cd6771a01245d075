"""The two Python parts of gpu_check.sh: what the machine and the installed packages are
(``env``), and the results JSON of the whole check (``summary``): each step's status,
time and, for a step that failed, the end of its log; the benchmark results; a short
table printed last, which is what the device tool's reply shows.

Usage: python benchmarks/gpu_check_report.py env --output ENV_JSON
       python benchmarks/gpu_check_report.py summary --work DIR --results DIR --output JSON
           --mode gpu|cpu-dry-run --command "..." [--since EPOCH_SECONDS]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata
from pathlib import Path

from common import machine

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "llmclf")
TAIL_LINES = 25
TOOLS = {"ruff"}  # dev requirements that no test imports


def unmet_requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """llmclf's requirements (and those of ``extras``) that the environment does not meet."""
    from packaging.requirements import Requirement

    unmet = []
    for line in metadata.requires("llmclf") or []:
        requirement = Requirement(line)
        if requirement.name in TOOLS:
            continue
        marker = requirement.marker
        if marker and not any(marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement}: {version} installed")
    return unmet


def environment() -> dict:
    import torch

    packages = {}
    for name in PACKAGES:
        try:
            module = __import__(name)
            packages[name] = {"version": metadata.version(name), "from": module.__file__}
        except Exception as exc:  # a package that fails to import is what this records
            packages[name] = {"error": f"{type(exc).__name__}: {exc}"}
    cuda = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        cuda = {
            "device": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "torch_cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return {
        "machine": machine(),
        "cuda": cuda,
        "packages": packages,
        "unmet_requirements": unmet_requirements(),
    }


def read_steps(work: Path) -> list[dict]:
    steps = []
    for line in (work / "steps.jsonl").read_text().splitlines():
        step = json.loads(line)
        log = work / "logs" / f"{step['name']}.log"
        if step["status"] in ("failed", "timed_out") and log.is_file():
            step["log_tail"] = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        steps.append(step)
    return steps


def headline(results: dict) -> list[tuple[str, str]]:
    """The figures the issue asks for, as (what, value) rows; absent where a step failed."""
    rows = []
    train = next((r for n, r in results.items() if "train" in n), None)
    if train:
        sides = {"llmclf": train.get("llmclf"), "reference": train.get("reference")}
        sides |= {f"llmclf {v}": m for v, m in train.get("variants", {}).items()}
        for side, m in sides.items():
            if m:
                rows.append(
                    (
                        f"train {side}",
                        f"peak GPU {m.get('peak_gpu_mb')} MB, {m['real_tokens_per_s']} real tok/s, "
                        f"{m['train_seconds']} s, macro-F1 {m['macro_f1']}",
                    )
                )
    inference = next((r for n, r in results.items() if "inference" in n), None)
    if inference:
        rows.append(
            (
                "predict llmclf / pipeline",
                f"{inference['llmclf']['examples_per_s']} / "
                f"{inference['pipeline']['examples_per_s']} examples/s "
                f"({inference['inference_speedup_vs_pipeline']}x), "
                f"agreement {inference['prediction_agreement']}",
            )
        )
    instruct = next((r for n, r in results.items() if "instruct" in n), None)
    if instruct and "generate" in instruct:
        rows.append(
            (
                "instruct score / generate",
                f"{instruct['score']['examples_per_s']} / "
                f"{instruct['generate']['examples_per_s']} examples/s "
                f"({instruct.get('score_speedup_vs_generate')}x)",
            )
        )
    return rows


def summary(args: argparse.Namespace) -> None:
    steps = read_steps(args.work)
    results = {
        path.stem: json.loads(path.read_text())
        for path in sorted(args.results.glob("*.json"))
        if path.name != args.output.name and path.stat().st_mtime >= args.since
    }
    env_file = args.work / "env.json"
    report = {
        "check": "benchmarks/gpu_check.sh",
        "mode": args.mode,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": args.command,
        "environment": json.loads(env_file.read_text()) if env_file.is_file() else None,
        "ran": [s["name"] for s in steps if s["status"] == "ok"],
        "failed": [s["name"] for s in steps if s["status"] in ("failed", "timed_out")],
        "skipped": [s["name"] for s in steps if s["status"] == "skipped"],
        "steps": steps,
        "headline": dict(headline(results)),
        "results": results,
    }
    staging = args.output.with_suffix(".partial")
    staging.write_text(json.dumps(report, indent=2) + "\n")
    staging.replace(args.output)

    print(f"\n{args.mode}: {len(report['ran'])} steps ok, {len(report['failed'])} failed")
    for step in steps:
        why = step.get("why") or (step.get("log_tail") or [""])[-1]
        print(f"  {step['name']:<13} {step['status']:<9} {step['seconds']:>6.0f} s  {why[:90]}")
    for what, value in report["headline"].items():
        print(f"  {what}: {value}")
    print(f"wrote {args.output}")
    if report["failed"]:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command_name", required=True)
    env = commands.add_parser("env")
    env.add_argument("--output", type=Path, required=True)
    report = commands.add_parser("summary")
    report.add_argument("--work", type=Path, required=True)
    report.add_argument("--results", type=Path, required=True)
    report.add_argument("--output", type=Path, required=True)
    report.add_argument("--mode", required=True)
    report.add_argument("--command", default="")
    report.add_argument(
        "--since", type=float, default=0.0, help="only results files written after (epoch s)"
    )
    args = parser.parse_args()
    if args.command_name == "env":
        info = environment()
        args.output.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps({"cuda": info["cuda"], "unmet_requirements": info["unmet_requirements"]}))
        print({name: p.get("version", p.get("error")) for name, p in info["packages"].items()})
        broken = [name for name, p in info["packages"].items() if "error" in p]
        if broken or info["unmet_requirements"]:
            raise SystemExit(f"not ready: {broken or info['unmet_requirements']}")
    else:
        summary(args)


if __name__ == "__main__":
    main()
