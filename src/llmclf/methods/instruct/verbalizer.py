"""Verbalizers: the words a model answers each label with, and reading answers back.

A verbalizer maps every class of the label schema to an answer string: the class name
itself (``names``), a letter (``letters``), a number (``numbers``) or words from a mapping
file. ``AnswerParser`` turns a generated answer back into a class (or a set of classes),
and ``ambiguity_warnings`` says when two answers could not be told apart.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmclf.errors import LlmclfError

KINDS = ("names", "letters", "numbers")
MULTI_LABEL_SEPARATOR = ", "
# What may separate the labels of a generated multi-label answer.
_SPLIT = re.compile(r"[,;\n|]")
# Stripped around an answer before matching: quotes, brackets, markdown emphasis, full stops.
_EDGE = " \t\r\n\"'`*_.:;!?()[]{}<>"


@dataclass
class Verbalizer:
    """Answer words for each class, in schema order.

    Example:
        >>> Verbalizer.build("letters", ["business", "sport"]).words
        ['A', 'B']
    """

    kind: str
    classes: list[str]
    words: list[str]

    @classmethod
    def build(cls, spec: str, classes: list[str]) -> Verbalizer:
        """``spec`` is names, letters, numbers or the path of a JSON / YAML mapping file."""
        if spec == "names":
            words = list(classes)
        elif spec == "letters":
            if len(classes) > len(string.ascii_uppercase):
                raise LlmclfError(
                    f"--verbalizer letters covers at most 26 labels, not {len(classes)}: "
                    "use numbers or names"
                )
            words = list(string.ascii_uppercase[: len(classes)])
        elif spec == "numbers":
            words = [str(i + 1) for i in range(len(classes))]
        else:
            words = _read_mapping(Path(spec), classes)
            spec = "mapping"
        words = [" ".join(str(w).split()) for w in words]
        _check_distinct(words, classes)
        return cls(kind=spec, classes=list(classes), words=words)

    def labels_text(self) -> str:
        """What ``{labels}`` becomes in the prompt: the answers, with their meaning when the
        answer is a code (``A: business, B: sport``)."""
        if self.kind in ("letters", "numbers"):
            return ", ".join(f"{w}: {c}" for w, c in zip(self.words, self.classes))
        return ", ".join(self.words)


def _read_mapping(path: Path, classes: list[str]) -> list[str]:
    if not path.is_file():
        raise LlmclfError(
            f"--verbalizer {path}: not names, letters, numbers or an existing mapping file"
        )
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise LlmclfError(f"--verbalizer {path} is not valid JSON / YAML: {exc}") from None
    if not isinstance(mapping, dict):
        raise LlmclfError(f"--verbalizer {path} must map each label to its answer words")
    mapping = {str(k): v for k, v in mapping.items()}
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise LlmclfError(
            f"--verbalizer {path} has no answer for {', '.join(repr(m) for m in missing)}"
        )
    empty = [c for c in classes if not str(mapping[c] or "").strip()]
    if empty:
        raise LlmclfError(f"--verbalizer {path} gives an empty answer for {empty[0]!r}")
    return [str(mapping[c]) for c in classes]


def _check_distinct(words: list[str], classes: list[str]) -> None:
    seen: dict[str, str] = {}
    for word, label in zip(words, classes):
        if not word:
            raise LlmclfError(f"the answer for label {label!r} is empty")
        if word in seen:
            raise LlmclfError(
                f"labels {seen[word]!r} and {label!r} have the same answer {word!r}: "
                "give each label its own words"
            )
        seen[word] = label


# ---------------------------------------------------------------------------------------
# Ambiguity
# ---------------------------------------------------------------------------------------


def ambiguity_warnings(
    words: list[str],
    answer_ids: list[list[int]],
    end_ids: list[int],
    unknown_id: int | None,
    multi_label: bool,
) -> list[str]:
    """Reasons why scoring or parsing could confuse two answers (empty when none).

    Args:
        words: the answer of each class.
        answer_ids: the token ids each answer is scored and trained with, end marker excluded.
        end_ids: the tokens that close an answer (empty when the tokenizer has none).
        unknown_id: the tokenizer's unknown-token id, if any.
        multi_label: whether answers are joined with ", ".
    """
    problems = []
    for i, word in enumerate(words):
        if unknown_id is not None and unknown_id in answer_ids[i]:
            problems.append(f"{word!r} tokenizes to the unknown token: scores cannot tell it apart")
        if multi_label and _SPLIT.search(word):
            problems.append(f"{word!r} holds a separator (, ; | newline): answers will be misread")
        for j in range(i + 1, len(words)):
            other = words[j]
            if answer_ids[i] == answer_ids[j]:
                problems.append(
                    f"{word!r} and {other!r} are the same tokens: they always score the same"
                )
            elif word.casefold() == other.casefold():
                problems.append(
                    f"{word!r} and {other!r} differ only in case: generated answers are "
                    "matched case-insensitively"
                )
            else:
                short, long = sorted((i, j), key=lambda k: len(answer_ids[k]))
                if answer_ids[long][: len(answer_ids[short])] == answer_ids[short]:
                    tail = "" if end_ids else " and no end-of-answer token separates them"
                    problems.append(
                        f"{words[short]!r} is a token prefix of {words[long]!r}: a generated "
                        f"answer cut short reads as {words[short]!r}{tail}"
                    )
    return problems


# ---------------------------------------------------------------------------------------
# Parsing generated answers
# ---------------------------------------------------------------------------------------


class AnswerParser:
    """Reads a generated answer back into class indices.

    Matching is case-insensitive and ignores surrounding whitespace, quotes, brackets and a
    final full stop. In order: the whole answer equals an answer word; else the longest
    answer word that starts the answer and ends at a word boundary (so trailing text such
    as ``"sport. The article..."`` is fine, and ``"technology"`` beats ``"tech"``); else,
    for word-like answers (not letters or numbers), exactly one answer word mentioned
    anywhere as a whole word (``"The category is sport"``). Anything else is unparsed.

    Example:
        >>> parser = AnswerParser(["tech", "technology", "sport"], search_anywhere=True)
        >>> parser.parse("  Technology news"), parser.parse("I think: sport"), parser.parse("??")
        (1, 2, None)
    """

    def __init__(self, words: list[str], search_anywhere: bool = True):
        self.keys = [w.casefold() for w in words]
        # longest first, so the longest match wins
        self.order = sorted(range(len(words)), key=lambda i: -len(self.keys[i]))
        self.search_anywhere = search_anywhere

    def parse(self, answer: str) -> int | None:
        """The class index an answer names, or None when it names none (or several)."""
        return self._match(answer, self.search_anywhere)

    def parse_set(self, answer: str) -> tuple[list[int], bool]:
        """Multi-label: (sorted class indices, whether every part was understood).

        The answer is split on commas, semicolons, bars and new lines; each part is matched
        on its own (exact or longest prefix, no search inside it). An empty answer is the
        empty set.
        """
        found, understood = set(), True
        for part in _SPLIT.split(answer):
            if not part.strip(_EDGE):
                continue
            index = self._match(part, anywhere=False)
            if index is None:
                understood = False
            else:
                found.add(index)
        return sorted(found), understood

    def _match(self, answer: str, anywhere: bool) -> int | None:
        text = " ".join(answer.split()).strip(_EDGE).casefold()
        if not text:
            return None
        for i in self.order:
            if text == self.keys[i]:
                return i
        for i in self.order:
            key = self.keys[i]
            if text.startswith(key) and _boundary(text, len(key)):
                return i
        return self._mentioned(text) if anywhere else None

    def _mentioned(self, text: str) -> int | None:
        found: set[int] = set()
        covered = [False] * len(text)
        for i in self.order:  # longest first: "technology" hides the "tech" inside it
            for match in re.finditer(re.escape(self.keys[i]), text):
                start, end = match.span()
                whole_word = _boundary(text, end) and (start == 0 or not text[start - 1].isalnum())
                if whole_word and not any(covered[start:end]):
                    found.add(i)
                    covered[start:end] = [True] * (end - start)
        return found.pop() if len(found) == 1 else None


def _boundary(text: str, end: int) -> bool:
    """True when ``text`` ends at ``end`` or continues with a non-alphanumeric character."""
    return end == len(text) or not text[end].isalnum()
