import pytest
import torch

from llmclf import LlmclfError
from llmclf.methods.instruct.batches import (
    IGNORE_INDEX,
    InstructCollator,
    answer_logits,
    answer_loss,
    join_prefix,
)
from llmclf.methods.instruct.prompts import (
    SINGLE_LABEL_TEMPLATE,
    PromptFormat,
    chat_template_for,
    check_template,
    read_template,
)
from llmclf.pooling import position_ids
from tests.instruct_models import instruct_tokenizer

WORDS = ["bank", "match goal", "chip"]


def plain_format(template=SINGLE_LABEL_TEMPLATE):
    tokenizer = instruct_tokenizer(chat=False)
    tokenizer.chat_template = chat_template_for(tokenizer, "auto")  # none of its own: plain
    return PromptFormat(tokenizer, template, WORDS, ", ".join(WORDS))


def chat_format():
    tokenizer = instruct_tokenizer(chat=True)
    tokenizer.chat_template = chat_template_for(tokenizer, "auto")
    return PromptFormat(tokenizer, SINGLE_LABEL_TEMPLATE, WORDS, ", ".join(WORDS))


def test_plain_format_prompt_and_answers():
    fmt = plain_format()
    prompt = fmt.prompt_text("stock market")
    assert prompt.startswith("Classify the text into exactly one of these categories: bank,")
    assert prompt.endswith("Text: stock market\nAnswer:")
    tokens = fmt.tokenizer.convert_ids_to_tokens
    assert tokens(fmt.pieces.complete((1,))) == ["match", "goal", "</s>"]
    assert tokens(fmt.pieces.complete((0, 2))) == ["bank", ",", "chip", "</s>"]
    assert fmt.lead == " " and fmt.pieces.end == [fmt.tokenizer.eos_token_id]


def test_chat_template_is_used_and_its_turn_end_closes_answers():
    fmt = chat_format()
    prompt = fmt.prompt_text("stock market")
    assert prompt.startswith("<|im_start|>user\nClassify")
    assert prompt.endswith("Text: stock market<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.tokenizer.convert_ids_to_tokens(fmt.pieces.end) == ["<|im_end|>"]
    # the prompt llmclf builds is the one the tokenizer's own template builds
    rendered = fmt.tokenizer.apply_chat_template(
        fmt.messages("stock market"), add_generation_prompt=True, tokenize=False
    )
    assert rendered == prompt
    assert fmt.prompt_ids("stock market", 1000) == fmt.ids(prompt)


def test_chat_template_modes():
    plain = instruct_tokenizer(chat=False)
    with pytest.raises(LlmclfError, match="has no chat template"):
        chat_template_for(plain, "on")
    chat = instruct_tokenizer(chat=True)
    assert chat_template_for(chat, "on") == chat.chat_template
    assert chat_template_for(chat, "off") != chat.chat_template
    assert "Answer:" in chat_template_for(chat, "off")


def test_long_texts_are_cut_inside_the_prompt():
    fmt = plain_format()
    text = " ".join(["market"] * 200) + " LASTWORD"
    ids = fmt.prompt_ids(text, 60)
    assert len(ids) == 60
    before = fmt.ids(fmt.before.rstrip())
    after = fmt.ids(fmt.after)
    assert ids[: len(before)] == before  # the instruction is whole
    assert ids[-len(after) :] == after  # and so is the cue after the text
    assert fmt.tokenizer.unk_token_id not in ids[len(before) : -len(after)]  # LASTWORD went
    assert fmt.prompt_ids("market stock", 60) == fmt.ids(fmt.prompt_text("market stock"))


def test_too_small_max_length_is_refused():
    fmt = plain_format()
    with pytest.raises(LlmclfError, match="raise --max-length"):
        fmt.check_room(fmt.overhead() + 10, 3)
    fmt.check_room(fmt.overhead() + 40, 3)


def test_custom_template_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Topic of: {text}\nOptions {labels}. JSON like {{}} is fine")
    template = read_template(str(path), multi_label=False)
    fmt = plain_format(template)
    assert (
        fmt.prompt_text("goal")
        == "Topic of: goal\nOptions bank, match goal, chip. JSON like {} is fine\nAnswer:"
    )
    for bad, message in [
        ("no field", "exactly once"),
        ("{text} {text}", "exactly once"),
        ("{text} {label}", "only {text} and {labels}"),
        ("{text} {", "only {text} and {labels}"),
    ]:
        with pytest.raises(LlmclfError, match=message):
            check_template(bad)
    with pytest.raises(LlmclfError, match="does not exist"):
        read_template(str(tmp_path / "missing.txt"), False)


def test_only_answer_tokens_carry_labels():
    fmt = plain_format()
    prompts = [fmt.prompt_ids("stock", 100), fmt.prompt_ids("match goal team win cup", 100)]
    answers = [fmt.pieces.complete((1,)), fmt.pieces.complete((0,))]
    rows = [
        {"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a, "answer_length": len(a)}
        for p, a in zip(prompts, answers)
    ]
    batch = InstructCollator(fmt.tokenizer.pad_token_id, multi_label=False)(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape and batch["answer_width"] == 3
    for row, answer in enumerate(answers):
        carried = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert carried == answer  # the answer, closing token included, and nothing else
        assert ids[row, -len(answer) :].tolist() == answer  # left padding: answers at the end
    assert (labels[mask == 0] == IGNORE_INDEX).all()  # padding carries none
    assert mask[0, 0] == 0 and mask[1, 0] == 1


def test_answer_loss_equals_transformers_own_loss(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.instruct_models import make_instruct_llama

    model = AutoModelForCausalLM.from_pretrained(make_instruct_llama(tmp_path / "m")).eval()
    fmt = plain_format()
    rows = []
    for text, label in [("stock bank", 0), ("match goal team", 1), ("chip", 2)]:
        p, a = fmt.prompt_ids(text, 100), fmt.pieces.complete((label,))
        rows.append(
            {"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a, "answer_length": len(a)}
        )
    pad = fmt.tokenizer.pad_token_id
    whole = InstructCollator(pad, False, share_prefix=False)(rows)
    assert whole["prefix_ids"].numel() == 0
    theirs = model(
        input_ids=whole["input_ids"],
        attention_mask=whole["attention_mask"],
        position_ids=position_ids(whole["attention_mask"]),
        labels=whole["labels"],
    ).loss
    assert torch.allclose(
        answer_loss(answer_logits(model, whole), whole["labels"]), theirs, atol=1e-5
    )
    # the rows' shared first tokens run once; the loss is the same
    batch = InstructCollator(pad, False)(rows)
    assert batch["prefix_ids"].numel() > 0
    assert batch["input_ids"].shape[1] + batch["prefix_ids"].numel() == whole["input_ids"].shape[1]
    mine = answer_loss(answer_logits(model, batch), batch["labels"])
    assert torch.allclose(mine, theirs, atol=1e-5)
    joined = join_prefix(batch, pad)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(joined[key], whole[key])
