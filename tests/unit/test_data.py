import json
import logging

import pandas as pd
import pytest

from llmclf.config import DataConfig
from llmclf.data import (
    content_hash,
    examples_by_split,
    read_table,
    sample,
    to_examples,
    write_table,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema


def write(tmp_path, name, frame):
    path = tmp_path / name
    write_table(frame, path)
    return str(path)


def frame(n=30):
    labels = ["a", "b", "c"] * (n // 3)
    return pd.DataFrame({"text": [f"text number {i}" for i in range(n)], "label": labels})


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet"])
def test_every_format_round_trips(tmp_path, name):
    path = write(tmp_path, name, frame())
    splits, multi = examples_by_split(DataConfig(data=path))
    assert not multi
    assert sum(len(s) for s in splits.values()) == 30
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [24, 3, 3]
    # stratified: every class in every split
    assert all(set(splits[k].labels) == {"a", "b", "c"} for k in splits)


def test_split_is_seeded_and_reproducible(tmp_path):
    path = write(tmp_path, "d.csv", frame(90))
    first, _ = examples_by_split(DataConfig(data=path))
    again, _ = examples_by_split(DataConfig(data=path))
    other, _ = examples_by_split(DataConfig(data=path, split_seed=1))
    assert first["test"].texts == again["test"].texts
    assert first["test"].texts != other["test"].texts


def test_split_column_is_used(tmp_path):
    data = frame(30)
    data["split"] = ["train"] * 20 + ["dev"] * 5 + ["test"] * 5
    splits, _ = examples_by_split(DataConfig(data=write(tmp_path, "d.csv", data)))
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [20, 5, 5]


def test_missing_file(tmp_path):
    with pytest.raises(LlmclfError, match="does not exist"):
        examples_by_split(DataConfig(data=str(tmp_path / "none.csv")))


def test_unknown_extension_and_unreadable_file(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(LlmclfError, match="extension must be one of"):
        read_table(tmp_path / "d.xlsx")
    (tmp_path / "bad.parquet").write_text("this is not parquet")
    with pytest.raises(LlmclfError, match="cannot read .*bad.parquet as PARQUET"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{broken\n')
    with pytest.raises(LlmclfError, match="cannot read .*bad.jsonl as JSONL"):
        read_table(tmp_path / "bad.jsonl")


def test_unknown_data_name():
    with pytest.raises(LlmclfError, match="unknown data 'no-such-set'"):
        examples_by_split(DataConfig(data="no-such-set"))


def test_missing_column_names_the_flag(tmp_path):
    path = write(tmp_path, "d.csv", frame())
    with pytest.raises(LlmclfError, match="no column 'body'.*--text-column"):
        examples_by_split(DataConfig(data=path, text_column=["body"]))
    with pytest.raises(LlmclfError, match="no column 'topic'.*--label-column"):
        examples_by_split(DataConfig(data=path, label_column="topic"))


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(LlmclfError, match="has no rows"):
        examples_by_split(DataConfig(data=str(tmp_path / "empty.csv")))


def test_empty_texts_are_counted_then_dropped_or_refused(tmp_path, caplog):
    data = pd.DataFrame(
        {"text": ["good one", "", None, "   ", "fine"], "label": ["a", "b", "a", "b", "b"]}
    )
    config = DataConfig(data="x")
    with caplog.at_level(logging.WARNING, logger="llmclf"):
        examples = to_examples(data, config, False, "d.csv")
    assert examples.texts == ["good one", "fine"]
    assert "3 rows with an empty or missing text" in caplog.text
    with pytest.raises(
        LlmclfError, match="3 rows with an empty or missing text.*--empty-text drop"
    ):
        to_examples(data, DataConfig(data="x", empty_text="error"), False, "d.csv")
    with pytest.raises(LlmclfError, match="no rows left"):
        to_examples(data.iloc[1:4], config, False, "d.csv")


def test_only_one_class():
    with pytest.raises(LlmclfError, match="only one class \\('a'\\)"):
        LabelSchema.from_labels(["a", "a", "a"], multi_label=False)


def test_unseen_labels_at_evaluation():
    schema = LabelSchema.from_labels(["a", "b"], multi_label=False)
    with pytest.raises(LlmclfError, match="labels the model never saw: 'zzz'"):
        schema.check_known(["a", "zzz"], "test.csv")


def test_several_text_columns_are_joined(tmp_path):
    data = pd.DataFrame(
        {"title": ["T1", "T2", None], "abstract": ["A1", None, "A3"], "label": ["x", "y", "x"]}
    )
    examples = to_examples(
        data, DataConfig(data="x", text_column=["title", "abstract"]), False, "d"
    )
    assert examples.texts == ["T1\n\nA1", "T2", "A3"]


def test_multi_label_from_separator_json_and_lists(tmp_path):
    sep = pd.DataFrame({"text": ["a", "b"], "label": ["x|y", "y"]})
    examples = to_examples(sep, DataConfig(data="x", label_sep="|"), True, "d")
    assert examples.labels == [["x", "y"], ["y"]]
    as_json = pd.DataFrame({"text": ["a", "b"], "label": ['["y", "x"]', "[]"]})
    assert to_examples(as_json, DataConfig(data="x"), True, "d").labels == [["x", "y"], []]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"text": f"t{i}", "label": ["x", "z"][: 1 + i % 2]}) for i in range(20)
        )
    )
    splits, multi = examples_by_split(DataConfig(data=str(path)))
    assert multi and ["x", "z"] in splits["train"].labels


def test_train_limit_sample_is_stratified(tmp_path):
    data = frame(300)
    examples = to_examples(data, DataConfig(data="x"), False, "d")
    small = sample(examples, 30, seed=0, multi_label=False)
    assert len(small) == 30
    assert {lab: small.labels.count(lab) for lab in "abc"} == {"a": 10, "b": 10, "c": 10}


def test_content_hash_sees_content_not_names():
    assert content_hash(["a", "b"], ["x", "y"]) == content_hash(["a", "b"], ["x", "y"])
    assert content_hash(["a", "b"], ["x", "y"]) != content_hash(["a", "b"], ["x", "x"])
    assert content_hash(["ab"], ["x"]) != content_hash(["a", "b"], ["x", "x"])


def test_hf_datasets_folder_with_split_files(tmp_path):
    folder = tmp_path / "hfdata"
    folder.mkdir()
    frame(30).to_csv(folder / "train.csv", index=False)
    frame(9).to_csv(folder / "test.csv", index=False)
    splits, multi = examples_by_split(DataConfig(data=f"hf:{folder}"))
    assert len(splits["test"]) == 9
    assert len(splits["train"]) + len(splits["validation"]) == 30 and len(splits["validation"]) == 3


def test_hf_unknown_dataset_is_one_clear_error():
    with pytest.raises(
        LlmclfError, match="cannot load the Hugging Face dataset 'no/such-dataset-xyz'"
    ):
        examples_by_split(DataConfig(data="hf:no/such-dataset-xyz"))


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_a_header_naming_a_column_twice_is_refused(tmp_path, suffix, sep):
    from llmclf.data import read_table

    path = tmp_path / f"dup{suffix}"
    path.write_text(sep.join(["text", "label", "text"]) + "\n" + sep.join(["a", "x", "b"]) + "\n")
    with pytest.raises(LlmclfError, match="names the column 'text' more than once"):
        read_table(path)


def test_labels_differing_by_whitespace_stratify_as_one_class(tmp_path):
    """' sport', 'sport ' and 'sport' are one class, so the split stratifies them as one:
    10 % of its 20 rows (2) go to test, where the raw strings would give 0 of each."""
    texts = [f"text {i}" for i in range(40)]
    labels = ["sport", " sport", "sport ", "sport\t"] * 5 + ["money"] * 20
    path = write(tmp_path, "d.csv", pd.DataFrame({"text": texts, "label": labels}))
    splits, _ = examples_by_split(DataConfig(data=path))
    assert sorted(splits["test"].labels) == ["money", "money", "sport", "sport"]
    assert set(splits["train"].labels) == {"sport", "money"}


def test_an_empty_split_cell_is_named(tmp_path):
    data = frame(6)
    data["split"] = ["train", "", "test", "train", "train", "test"]
    with pytest.raises(LlmclfError, match=r"'split' column is empty in 1 of 6 rows \(data rows 2,"):
        examples_by_split(DataConfig(data=write(tmp_path, "d.csv", data)))


def test_test_and_validation_limits_take_the_same_stratified_sample_on_every_read(tmp_path):
    path = tmp_path / "d.csv"
    data = frame(300)
    data["split"] = ["train"] * 100 + ["validation"] * 50 + ["test"] * 150
    data.to_csv(path, index=False)
    whole, _ = examples_by_split(DataConfig(data=str(path)))
    config = DataConfig(data=str(path), validation_limit=9, test_limit=30)
    splits, _ = examples_by_split(config)
    again, _ = examples_by_split(config)
    assert len(splits["train"]) == len(whole["train"]) == 100  # train_limit's business
    assert len(splits["validation"]) == 9 and len(splits["test"]) == 30
    assert splits["test"].texts == again["test"].texts  # evaluate / compare see the same rows
    assert set(splits["test"].texts) <= set(whole["test"].texts)
    counts = {lab: splits["test"].labels.count(lab) for lab in "abc"}
    assert counts == {"a": 10, "b": 10, "c": 10}
    with pytest.raises(LlmclfError, match="--test-limit must be"):
        DataConfig(data=str(path), test_limit=0)
