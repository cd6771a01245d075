"""The paper's claims, tested (issue 19): ``make study`` / ``make study-report``.

    python benchmarks/study.py                  # run the grids of examples/study/ (resumable),
                                                # collect, decide, render EXPERIMENTS.md
    python benchmarks/study.py --grids core     # only some grids (then collect and render)
    python benchmarks/study.py --report-only    # re-render from benchmarks/results/study/

Never part of ``make test``: the grids train SmolLM2-135M (about an hour on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.paper_study` when run as a script

from benchmarks.paper_study.run import default_study, run_study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-only", action="store_true", help="re-render EXPERIMENTS.md only")
    parser.add_argument("--grids", help="comma-separated grid names (default: all, in order)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.chdir(ROOT)  # the grids' output folders are relative to the repository
    study = default_study()
    only = set(args.grids.split(",")) if args.grids else None
    unknown = (only or set()) - {g.name for g in study.grids}
    if unknown:
        parser.error(f"unknown grid {', '.join(sorted(unknown))}")
    report = run_study(study, report_only=args.report_only, only=only)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
