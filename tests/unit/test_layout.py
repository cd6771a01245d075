"""The package's two layout rules, its import structure, and the shipped YAML presets
(docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llmclf"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The llmclf modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmclf")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmclf"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(
                    sub
                    if (PACKAGE.parent / sub.replace(".", "/")).exists()
                    or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                    else node.module
                )
    return found


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_evaluation_works_on_arrays_and_never_touches_folders():
    for module, imported in GRAPH.items():
        if module.startswith("llmclf.evaluation"):
            bad = {
                m
                for m in imported
                if m.startswith(("llmclf.runs", "llmclf.methods", "llmclf.run_folder"))
            }
            assert not bad, f"{module} imports {bad}"


def test_methods_never_import_runs():
    for module, imported in GRAPH.items():
        if module.startswith("llmclf.methods"):
            assert not {m for m in imported if m.startswith("llmclf.runs")}, module


def test_nothing_inside_the_package_imports_the_package_root():
    for module, imported in GRAPH.items():
        if module != "llmclf":
            assert "llmclf" not in imported, f"{module} imports the package root"


def test_no_import_circles():
    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in GRAPH.get(start, ()):
            if nxt == target:
                return True
            if nxt not in seen and nxt in GRAPH:
                seen.add(nxt)
                if reaches(nxt, target, seen):
                    return True
        return False

    # a package's __init__ importing its own submodules is not a circle
    circles = [
        m for m in GRAPH if m != "llmclf" and not m.endswith("runs") and reaches(m, m, set())
    ]
    assert not circles, f"import circles through {circles}"


@pytest.mark.parametrize("preset", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_shipped_yaml_passes_the_cli_parser_and_config_checks(preset, monkeypatch):
    """Each train preset resolves into its method's typed config; the grid expands."""
    from llmclf.cli import build_parser, option_values
    from llmclf.config import DataConfig, build, field_names, read_yaml
    from llmclf.methods.registry import method_class
    from llmclf.runs.grid import expand, read_grid

    path = EXAMPLES / preset
    if "methods" in read_yaml(path) or preset.startswith("grid"):
        cells = expand(read_grid(path), Path("unused"))
        assert cells and all(c.name for c in cells)
        return
    args = build_parser().parse_args(["train", "--config", str(path), "--output", "x"])
    values = option_values(args)
    values.pop("output")
    config_class = method_class(values.pop("method", "head")).config_class
    assert set(values) <= field_names(DataConfig) | config_class.option_names()
    build(DataConfig, values)
    config_class.from_options({k: v for k, v in values.items() if k in config_class.option_names()})


def test_a_bad_yaml_value_fails_like_the_flag_before_any_data_loads(tmp_path, capsys):
    from llmclf.cli import main

    (tmp_path / "bad.yaml").write_text("pooling: maxx\ndata: no-such-file.csv\n")
    code = main(["train", "--config", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--pooling must be one of last, mean, max, token, auto, not 'maxx'" in err
    assert not (tmp_path / "r").exists()
    (tmp_path / "typed.yaml").write_text("epochs: two\n")
    code = main(
        ["train", "--config", str(tmp_path / "typed.yaml"), "--output", str(tmp_path / "r")]
    )
    assert code == 2 and "--epochs must be a number, not 'two'" in capsys.readouterr().err


def test_a_classifier_resolves_its_options_once_into_a_typed_config():
    from llmclf import HeadClassifier, LlmclfError

    clf = HeadClassifier("some-model", pooling="mean", lora_r=4, epochs=2)
    assert clf.config_.head.pooling == "mean" and clf.config_.adapter.lora_r == 4
    assert clf.config_.train.epochs == 2.0 and isinstance(clf.config_.train.epochs, float)
    assert clf.config_ is clf.config_  # resolved once
    clf.set_params(pooling="last")
    assert clf.config_.head.pooling == "last"
    with pytest.raises(LlmclfError, match="--lora-r must be > 0"):
        HeadClassifier(lora_r=0).resolve_config()


def test_runtime_options_are_marked_once_and_read_by_every_consumer():
    from llmclf.config import predict_time_names, runtime_names
    from llmclf.methods.registry import every_config_class

    runtime = runtime_names(*every_config_class())
    assert {"device", "dtype", "eval_batch_size", "resume", "keep_checkpoints"} <= runtime
    assert not runtime & {"model", "lora_r", "pooling", "learning_rate", "seed"}
    assert "predict_mode" in predict_time_names(*every_config_class())
