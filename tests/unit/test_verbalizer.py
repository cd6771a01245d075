import json

import pytest

from llmclf import LlmclfError
from llmclf.methods.instruct.verbalizer import AnswerParser, Verbalizer, ambiguity_warnings

CLASSES = ["business", "sport", "tech"]


def test_builtin_verbalizers():
    assert Verbalizer.build("names", CLASSES).words == CLASSES
    letters = Verbalizer.build("letters", CLASSES)
    assert letters.words == ["A", "B", "C"]
    assert letters.labels_text() == "A: business, B: sport, C: tech"
    assert Verbalizer.build("numbers", CLASSES).words == ["1", "2", "3"]
    assert Verbalizer.build("names", CLASSES).labels_text() == "business, sport, tech"


def test_mapping_file_json_and_yaml(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"business": "finance", "sport": " sports  news", "tech": "IT"}))
    assert Verbalizer.build(str(path), CLASSES).words == ["finance", "sports news", "IT"]
    yml = tmp_path / "map.yaml"
    yml.write_text("business: money\nsport: games\ntech: computers\nunused: x\n")
    verbalizer = Verbalizer.build(str(yml), CLASSES)
    assert verbalizer.kind == "mapping" and verbalizer.words == ["money", "games", "computers"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("business: a\nsport: b\n", "no answer for 'tech'"),
        ("business: a\nsport: a\ntech: c\n", "same answer 'a'"),
        ("business: a\nsport: ''\ntech: c\n", "empty answer for 'sport'"),
        ("- a\n- b\n", "must map each label"),
    ],
)
def test_bad_mapping_files(tmp_path, content, message):
    path = tmp_path / "map.yaml"
    path.write_text(content)
    with pytest.raises(LlmclfError, match=message):
        Verbalizer.build(str(path), CLASSES)


def test_unknown_verbalizer_and_too_many_letters():
    with pytest.raises(LlmclfError, match="not names, letters, numbers"):
        Verbalizer.build("colours", CLASSES)
    with pytest.raises(LlmclfError, match="at most 26"):
        Verbalizer.build("letters", [f"c{i}" for i in range(27)])


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("sport", 1),  # exact
        ("  Sport \n", 1),  # whitespace and casing
        ("SPORT.", 1),
        ('"tech"', 2),  # quotes
        ("**Business**", 0),  # markdown
        ("sport. The article is about football.", 1),  # trailing text
        ("business news", 0),
        ("sporting", None),  # a prefix inside a word is no match
        ("The category is tech", 2),  # one label mentioned as a word
        ("business or sport", 0),  # the answer starts with a label
        ("it is business or sport", None),  # two labels mentioned: ambiguous
        ("", None),
        ("?!", None),  # garbage
        ("xylophone", None),
    ],
)
def test_parser(answer, expected):
    assert AnswerParser(CLASSES).parse(answer) == expected


def test_parser_prefers_the_longest_label():
    parser = AnswerParser(["tech", "technology", "tech support"])
    assert parser.parse("technology") == 1
    assert parser.parse("tech support please") == 2
    assert parser.parse("Tech") == 0
    assert parser.parse("about technology mostly") == 1  # "tech" inside it is not counted


def test_letters_are_not_searched_inside_sentences():
    parser = AnswerParser(["A", "B", "C"], search_anywhere=False)
    assert parser.parse("b") == 1
    assert parser.parse("B) sport") == 1
    assert parser.parse("I think a cat") is None  # the word "a" is not the letter A


def test_parse_set():
    parser = AnswerParser(CLASSES)
    assert parser.parse_set("business, tech") == ([0, 2], True)
    assert parser.parse_set("Tech;business\nsport.") == ([0, 1, 2], True)
    assert parser.parse_set("tech, tech") == ([2], True)
    assert parser.parse_set("") == ([], True)
    assert parser.parse_set("business, weather") == ([0], False)
    assert parser.parse_set("no idea") == ([], False)


def test_ambiguity_warnings():
    words = ["tech", "technology", "Tech", "sport", "unk"]
    ids = [[5], [5, 6], [7], [5, 6], [0]]
    problems = ambiguity_warnings(words, ids, end_ids=[2], unknown_id=0, multi_label=False)
    text = "\n".join(problems)
    assert "'tech' is a token prefix of 'technology'" in text
    assert "'technology' and 'sport' are the same tokens" in text
    assert "'tech' and 'Tech' differ only in case" in text
    assert "'unk' tokenizes to the unknown token" in text
    assert len(problems) == 5  # tech/sport prefix too
    assert ambiguity_warnings(["a", "b"], [[1], [2]], [2], 0, False) == []
    comma = ambiguity_warnings(["x, y", "z"], [[1, 3, 4], [2]], [9], None, multi_label=True)
    assert comma and "separator" in comma[0]
