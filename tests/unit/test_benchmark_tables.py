"""benchmarks/table.py renders every checked-in results file, and every one says which
dtype it ran in (issue 15: the bf16 and fp32 figures must never be confused)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FILES = sorted(RESULTS.glob("*.json"))


def dtypes_in(value) -> list:
    """Every value stored under a ``dtype`` key, at any depth."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == "dtype"]
        return found + [d for v in value.values() for d in dtypes_in(v)]
    if isinstance(value, list):
        return [d for v in value for d in dtypes_in(v)]
    return []


@pytest.fixture(scope="module")
def table(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(RESULTS.parent))
    return importlib.import_module("table")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_results_file_records_its_dtype(path):
    assert [d for d in dtypes_in(json.loads(path.read_text())) if d], path.name


def test_every_results_file_is_rendered_with_its_dtype(table):
    assert FILES
    text = "\n".join(table.render(RESULTS))
    blocks = text.split("(from `benchmarks/results/")
    rendered = {block.split("`", 1)[0]: blocks[i - 1] for i, block in enumerate(blocks) if i}
    assert sorted(rendered) == [p.name for p in FILES]  # none left out
    for name, block in rendered.items():
        assert any(d in block for d in ("float32", "bfloat16", "none")), name
