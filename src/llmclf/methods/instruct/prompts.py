"""Prompts and answers of the instruct approach, as token ids.

A prompt is the template (``{text}`` and ``{labels}`` filled in) sent as one user message
through a chat template: the tokenizer's own, or llmclf's plain one (``PLAIN`` below,
``prompt\\nAnswer: label<eos>``) for models without one or with ``--chat-template off``.
Either way the tokenizer saved with a run carries the chat template used, so plain
``tokenizer.apply_chat_template`` reproduces llmclf's prompts.

The answer is what the chat template puts in an assistant turn: its lead (``" "`` in the
plain format), the label words (several joined by ", "), and the tokens that close the
turn (``<|im_end|>``, EOS, ...). Those closing tokens are part of every scored answer, so
``tech`` and ``technology`` are different answers, not a prefix of one another.

Texts too long for ``max_length`` are cut inside the prompt (the end of the text goes, or
its middle with ``--long-text head-tail``), never the instructions, the label list or the
answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmclf.errors import LlmclfError
from llmclf.methods.instruct.verbalizer import MULTI_LABEL_SEPARATOR

SINGLE_LABEL_TEMPLATE = """Classify the text into exactly one of these categories: {labels}.
Answer with the category only.

Text: {text}"""

MULTI_LABEL_TEMPLATE = """Classify the text into one or more of these categories: {labels}.
Answer with every category that applies, separated by commas.

Text: {text}"""

# Placeholders swapped for the text / the answer after rendering (Unicode private use).
_TEXT_SLOT = "\ue000"
_ANSWER_SLOT = "\ue001"
# The fewest text tokens a prompt must leave room for.
MIN_TEXT_TOKENS = 16


def plain_chat_template(adds_bos: bool) -> str:
    """llmclf's chat template for models without one: ``prompt\\nAnswer: label<eos>``.

    ``adds_bos``: start with the BOS token (when the tokenizer itself would add one).
    """
    bos = "{{ bos_token }}" if adds_bos else ""
    return (
        bos + "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ message['content'] + '\nAnswer:' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] }}"
        "{% if eos_token %}{{ eos_token }}{% endif %}"
        "{% endif %}{% endfor %}"
    )


def read_template(path: str | None, multi_label: bool) -> str:
    """The prompt template: the file at ``path``, or the built-in one."""
    if path is None:
        return MULTI_LABEL_TEMPLATE if multi_label else SINGLE_LABEL_TEMPLATE
    file = Path(path)
    if not file.is_file():
        raise LlmclfError(f"--prompt-template {path} does not exist")
    template = file.read_text(encoding="utf-8")
    check_template(template, str(path))
    return template


def check_template(template: str, where: str = "the prompt template") -> None:
    """A template needs exactly one ``{text}``; ``{labels}`` is optional; no other field."""
    try:
        fill(template, _TEXT_SLOT, "labels")
    except (KeyError, IndexError, ValueError) as exc:
        raise LlmclfError(
            f"{where}: only {{text}} and {{labels}} fields are allowed (write {{{{ and }}}} "
            f"for a literal brace); found a problem with {exc}"
        ) from None
    if template.count("{text}") != 1:
        raise LlmclfError(f"{where} must contain {{text}} exactly once")


def fill(template: str, text: str, labels: str) -> str:
    return template.format_map({"text": text, "labels": labels})


def chat_template_for(tokenizer, mode: str) -> str:
    """The chat template to use: the tokenizer's (``on``, or ``auto`` when it has one) or
    llmclf's plain one (``off``, or ``auto`` without one)."""
    own = getattr(tokenizer, "chat_template", None)
    if mode == "on" and not own:
        raise LlmclfError(
            "--chat-template on: this tokenizer has no chat template; use auto or off"
        )
    if own and mode in ("on", "auto"):
        return own
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    return plain_chat_template(adds_bos)


@dataclass
class AnswerPieces:
    """Token ids of answers, built from per-label pieces so that a set of labels is always
    the same tokens in training, scoring and beam search.

    ``first[j]``: label j as the first (or only) answer; ``next[j]``: ", " + label j after
    another; ``empty``: the lead of an empty answer; ``end``: the tokens closing the turn.
    """

    first: list[list[int]]
    next: list[list[int]]
    empty: list[int]
    end: list[int]

    def partial(self, labels: tuple[int, ...] | list[int]) -> list[int]:
        """The answer listing ``labels`` (in that order), not yet closed."""
        if not labels:
            return list(self.empty)
        ids = list(self.first[labels[0]])
        for j in labels[1:]:
            ids += self.next[j]
        return ids

    def complete(self, labels: tuple[int, ...] | list[int]) -> list[int]:
        """The closed answer listing ``labels``: what the model is trained to produce."""
        return self.partial(labels) + self.end


class PromptFormat:
    """Turns texts into prompt token ids and labels into answer token ids.

    Example:
        >>> fmt = PromptFormat(tokenizer, SINGLE_LABEL_TEMPLATE, ["business", "sport"])  # doctest: +SKIP
        >>> fmt.prompt_text("Shares fell.")  # doctest: +SKIP
        '<|im_start|>system ... Text: Shares fell.<|im_end|>\\n<|im_start|>assistant\\n'
    """

    def __init__(self, tokenizer, template: str, words: list[str], labels_text: str):
        if not tokenizer.is_fast:
            raise LlmclfError("the instruct method needs a fast (Rust) tokenizer for this model")
        check_template(template)
        self.tokenizer = tokenizer
        self.template = template
        self.words = words
        self.labels_text = labels_text
        self.before, self.after = self._split_prompt()
        self.lead, end_text = self._split_answer()
        end = self.ids(end_text) if end_text else []
        if not end and tokenizer.eos_token_id is not None:
            end = [tokenizer.eos_token_id]
        if not end:
            raise LlmclfError(
                "the chat template closes no answer and the tokenizer has no EOS token: "
                "the instruct method needs one to end answers"
            )
        self.pieces = AnswerPieces(
            first=[self.ids(self.lead + w) for w in words],
            next=[self.ids(MULTI_LABEL_SEPARATOR + w) for w in words],
            empty=self.ids(self.lead),
            end=end,
        )

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def messages(self, text: str) -> list[dict]:
        """The chat messages of one prompt, as ``apply_chat_template`` takes them."""
        content = fill(self.template, text.strip(), self.labels_text)
        return [{"role": "user", "content": content}]

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=False
            )
        except Exception as exc:  # jinja raises many types for templates it cannot render
            raise LlmclfError(
                f"the chat template cannot render a prompt ({str(exc).splitlines()[0]}); "
                "try --chat-template off"
            ) from None

    def _split_prompt(self) -> tuple[str, str]:
        rendered = self._render(self.messages(_TEXT_SLOT), generation_prompt=True)
        if rendered.count(_TEXT_SLOT) != 1:
            raise LlmclfError(
                "the chat template does not keep the prompt text; try --chat-template off"
            )
        before, after = rendered.split(_TEXT_SLOT)
        return before, after

    def _split_answer(self) -> tuple[str, str]:
        """(lead, closing text) around an assistant answer, e.g. ("", "<|im_end|>")."""
        messages = self.messages("x")
        prompt = self._render(messages, generation_prompt=True)
        full = self._render(
            [*messages, {"role": "assistant", "content": _ANSWER_SLOT}], generation_prompt=False
        )
        if not full.startswith(prompt) or full.count(_ANSWER_SLOT) != 1:
            raise LlmclfError(
                "the chat template writes the answer turn in a way llmclf cannot follow; "
                "use --chat-template off"
            )
        lead, tail = full[len(prompt) :].split(_ANSWER_SLOT)
        return lead, tail.rstrip()  # keep the turn's closing token, not the newline after it

    # -- prompts -----------------------------------------------------------------------

    def prompt_text(self, text: str) -> str:
        """The whole prompt as a string (the text not truncated)."""
        return self.before + text.strip() + self.after

    def overhead(self) -> int:
        """Tokens the prompt takes besides the text."""
        return len(self.ids(self.before + self.after))

    def check_room(self, max_length: int, answer_length: int) -> None:
        """Fail early when ``max_length`` leaves too little room for the text."""
        room = max_length - answer_length - self.overhead()
        if room < MIN_TEXT_TOKENS:
            raise LlmclfError(
                f"--max-length {max_length} leaves {max(room, 0)} tokens for the text (the prompt "
                f"takes {self.overhead()}, the longest answer {answer_length}): raise --max-length "
                "or shorten --prompt-template"
            )

    def prompt_ids(self, text: str, max_tokens: int, head_ratio: float = 1.0) -> list[int]:
        """Token ids of the prompt for ``text``, at most ``max_tokens`` of them: when too
        long, the text is cut, never the instruction or the label list around it. The text
        keeps its first ``head_ratio`` share of the tokens left for it and its last ones
        for the rest (1.0: the end of the text goes; ``--long-text head-tail``: a share)."""
        text = text.strip()
        encoded = self.tokenizer(
            self.before + text + self.after, add_special_tokens=False, return_offsets_mapping=True
        )
        ids = encoded["input_ids"]
        if len(ids) <= max_tokens:
            return ids
        start, stop = len(self.before), len(self.before) + len(text)
        in_text = [s < stop and e > start for s, e in encoded["offset_mapping"]]
        total = sum(in_text)
        keep = max(0, total - (len(ids) - max_tokens))
        head = int(round(keep * head_ratio))
        cut_from, cut_to = head, total - (keep - head)  # text tokens [cut_from, cut_to) go
        kept, seen = [], 0
        for token, is_text in zip(ids, in_text):
            if is_text:
                seen += 1
                if cut_from < seen <= cut_to:
                    continue
            kept.append(token)
        return kept
