import json

import numpy as np
import pytest
import torch

from llmclf import InstructClassifier, LlmclfError
from llmclf.evaluation.metrics import classification_metrics
from llmclf.labels import NO_CLASS, LabelSchema
from tests.conftest import make_texts
from tests.instruct_models import make_instruct_llama

FAST = dict(
    epochs=4,
    batch_size=8,
    max_length=64,
    learning_rate=1e-2,
    eval_batch_size=8,
    early_stopping_patience=0,
)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return make_instruct_llama(tmp_path_factory.mktemp("instruct-plain"))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return make_instruct_llama(tmp_path_factory.mktemp("instruct-chat"), chat=True)


@pytest.fixture(scope="module")
def fitted(plain_model):
    texts, labels = make_texts(90)
    return InstructClassifier(plain_model, progress=False, **FAST).fit(texts, labels)


def multi_label_texts(n: int, seed: int):
    """Texts of one or two synthetic topics, labelled with their topics."""
    texts, labels = make_texts(2 * n, seed=seed)
    out_texts, out_labels = [], []
    for i in range(0, 2 * n, 2):
        if i % 4 == 0:
            out_texts.append(texts[i] + " " + texts[i + 1])
            out_labels.append(sorted({labels[i], labels[i + 1]}))
        else:
            out_texts.append(texts[i])
            out_labels.append([labels[i]])
    return out_texts, out_labels


def test_one_training_step_changes_lora_only(plain_model):
    from llmclf.methods.instruct.batches import (
        InstructCollator,
        answer_logits,
        answer_loss,
        label_sets,
    )

    texts, labels = make_texts(8)
    schema = LabelSchema.from_labels(labels, multi_label=False)
    clf = InstructClassifier(plain_model, progress=False, lora_dropout=0.0, max_length=64)
    sets = label_sets(schema, labels)
    clf._new_format(schema, sets)
    from llmclf import backbone
    from llmclf.config import AdapterConfig

    model = backbone.add_lora(clf._load_base(), AdapterConfig(lora_dropout=0.0), "CAUSAL_LM")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # no head, no embeddings
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = clf._answer_dataset(texts, sets)
    batch = InstructCollator(clf.tokenizer_.pad_token_id, False)([data[i] for i in range(8)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    answer_loss(answer_logits(model, batch), batch["labels"]).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("lora_B" in n for n in changed) and changed <= trainable


@pytest.mark.parametrize("fallback", [False, True], ids=["shared", "joined back"])
def test_the_shared_prompt_prefix_gives_the_same_loss_and_gradients(plain_model, fallback):
    """A batch whose prompts' shared first tokens run once (at batch size 1, the rows
    attending to its cache) trains exactly like the whole rows: the same loss and LoRA
    gradients; gradient checkpointing joins the rows back."""
    from llmclf import backbone
    from llmclf.config import AdapterConfig
    from llmclf.methods.instruct.batches import (
        InstructCollator,
        answer_logits,
        answer_loss,
        label_sets,
    )

    texts, labels = make_texts(6, seed=8)
    schema = LabelSchema.from_labels(labels, multi_label=False)
    clf = InstructClassifier(plain_model, progress=False, max_length=64)
    sets = label_sets(schema, labels)
    clf._new_format(schema, sets)
    torch.manual_seed(0)
    model = backbone.add_lora(clf._load_base(), AdapterConfig(), "CAUSAL_LM")
    for name, p in model.named_parameters():  # B = 0 at the start: give every LoRA a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    if fallback:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    data = clf._answer_dataset(texts, sets)
    rows = [data[i] for i in range(len(texts))]
    pad = clf.tokenizer_.pad_token_id

    def loss_and_grads(share: bool):
        model.zero_grad()
        batch = InstructCollator(pad, False, share_prefix=share)(rows)
        assert (batch["prefix_ids"].numel() > 0) == share
        loss = answer_loss(answer_logits(model, batch), batch["labels"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    loss, grads = loss_and_grads(True)
    expected_loss, expected = loss_and_grads(False)
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert grads.keys() == expected.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected[name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "layers.0." in n)


def test_fit_learns_and_proba_follows_classes(fitted):
    texts, labels = make_texts(30, seed=1)
    proba = fitted.predict_proba(texts)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(fitted.classes_) == ["money", "sport", "tech"]
    assert fitted.predict(texts) == [fitted.classes_[i] for i in proba.argmax(axis=1)]
    assert fitted.score(texts, labels) > 0.6  # three separable classes: chance is 1/3
    assert isinstance(fitted.predict(texts[0]), str)
    assert fitted.predict_proba(texts[0]).shape == (3,)
    history = fitted.train_result_.log_history
    assert any("eval_macro_f1" in h for h in history)  # the best epoch is picked by macro-F1


def test_temperature_scales_the_scores(fitted):
    texts, _ = make_texts(5, seed=2)
    logits = fitted.predict_logits(texts)
    fitted.temperature_ = 2.0
    try:
        proba = fitted.predict_proba(texts)
    finally:
        fitted.temperature_ = 1.0
    scaled = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    assert np.allclose(proba, scaled, atol=1e-5)


def test_accounting_counts_lora_only(fitted):
    lora = sum(p.numel() for n, p in fitted.model_.named_parameters() if "lora_" in n)
    assert fitted.trainable_params_ == lora
    assert 0 < fitted.trainable_params_ < fitted.total_params_


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    from peft.tuners.lora import LoraLayer

    # merged after fit, as a loaded run is: the same numbers either way
    layers = [m for m in fitted.model_.modules() if isinstance(m, LoraLayer)]
    assert layers and all(layer.merged for layer in layers)
    texts, _ = make_texts(12, seed=3)
    folder = fitted.save(tmp_path / "run")
    loaded = InstructClassifier.load(folder, progress=False)
    np.testing.assert_allclose(loaded.predict_proba(texts), fitted.predict_proba(texts), atol=1e-5)
    generating = InstructClassifier.load(folder, progress=False, predict_mode="generate")
    assert generating.generate_answers(texts) == fitted.generate_answers(texts)
    state = json.loads((folder / "instruct.json").read_text())
    assert state["answers"] == {"money": "money", "sport": "sport", "tech": "tech"}
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


def test_generate_mode_parses_answers(fitted, tmp_path):
    folder = fitted.save(tmp_path / "run")
    clf = InstructClassifier.load(folder, progress=False, predict_mode="generate")
    texts, labels = make_texts(20, seed=4)
    answers = clf.generate_answers(texts)
    details = clf.predict_details(texts)
    proba = details.proba
    np.testing.assert_array_equal(clf.predict_proba(texts), proba)
    assert set(np.unique(proba)) <= {0.0, 1.0} and (proba.sum(axis=1) <= 1).all()
    assert details.logits is None  # generated answers have no scores
    assert details.columns["answer"] == answers
    unread = [i for i, row in enumerate(proba) if row.sum() == 0]
    assert details.figures == {
        "predict_mode": "generate",
        "unparsed": len(unread),
        "unparsed_rate": round(len(unread) / 20, 4),
    }
    predicted = clf.predict(texts)
    assert [predicted[i] for i in unread] == [None] * len(unread)
    assert clf.score(texts, labels) > 0.5
    with pytest.raises(LlmclfError, match="predict_mode='score'"):
        clf.predict_logits(texts)


def test_each_prediction_keeps_its_own_details(fitted, tmp_path):
    """What a call says about its rows is returned with them: a later call (another mode,
    other texts) changes nothing in what an earlier one gave, whatever the order."""
    folder = fitted.save(tmp_path / "run")
    generating = InstructClassifier.load(folder, progress=False, predict_mode="generate")
    first_texts, _ = make_texts(6, seed=5)
    second_texts, _ = make_texts(3, seed=6)
    first = generating.predict_details(first_texts)
    kept = (first.proba.copy(), dict(first.figures), list(first.columns["answer"]))
    second = generating.predict_details(second_texts)
    scored = fitted.predict_details(second_texts)
    np.testing.assert_array_equal(first.proba, kept[0])
    assert (first.figures, first.columns["answer"]) == (kept[1], kept[2])
    assert len(first.columns["answer"]) == 6 and len(second.columns["answer"]) == 3
    assert second.columns["answer"] == generating.generate_answers(second_texts)
    assert scored.figures == {"predict_mode": "score"} and scored.columns == {}
    np.testing.assert_allclose(scored.proba, fitted.predict_proba(second_texts), atol=1e-6)
    assert scored.logits.shape == (3, 3)


def test_unparsed_answers_are_wrong_never_class_0(plain_model, tmp_path):
    """An untrained model cut to one generated token mostly answers garbage: those rows
    decide no class, predict None, and count as errors even when the truth is class 0."""
    from llmclf.data import Examples
    from llmclf.runs import evaluate_examples

    clf = InstructClassifier(
        plain_model, progress=False, max_length=64, predict_mode="generate", max_new_tokens=1
    ).zero_shot(["money", "sport", "tech"])
    texts = make_texts(12, seed=5)[0]
    answers = clf.generate_answers(texts)
    proba = clf.predict_proba(texts)
    unread = [i for i, row in enumerate(proba) if row.sum() == 0]
    assert unread, answers  # the test needs garbage answers
    assert (clf.schema_.decide(proba)[unread] == NO_CLASS).all()
    import pandas as pd

    truth = ["money"] * len(texts)  # class 0 everywhere
    metrics, frame = evaluate_examples(
        clf, Examples(texts, truth, pd.DataFrame({"text": texts})), "synthetic"
    )
    parsed_right = sum(1 for i, row in enumerate(proba) if row.sum() and row.argmax() == 0)
    assert metrics["accuracy"] == pytest.approx(parsed_right / len(texts))
    assert metrics["unparsed"] == len(unread) and metrics["predict_mode"] == "generate"
    assert list(frame.loc[unread, "prediction"]) == [""] * len(unread)
    assert list(frame["answer"]) == answers


def test_no_class_rows_count_as_errors():
    schema = LabelSchema(["a", "b"])
    proba = np.array([[0.0, 0.0], [0.2, 0.8], [1.0, 0.0]])
    decided = schema.decide(proba)
    assert decided.tolist() == [NO_CLASS, 1, 0]
    assert schema.decode(decided) == [None, "b", "a"]
    metrics = classification_metrics(np.array([0, 1, 0]), decided, schema.classes)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["a"]["recall"] == 0.5


def test_plain_peft_load_reproduces_scores_and_answers(chat_model, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    texts, labels = make_texts(60, seed=6)
    clf = InstructClassifier(chat_model, progress=False, **{**FAST, "epochs": 2}).fit(texts, labels)
    folder = clf.save(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == clf.tokenizer_.chat_template
    assert "<|im_start|>" in tokenizer.chat_template
    model = AutoPeftModelForCausalLM.from_pretrained(folder).eval()
    state = json.loads((folder / "instruct.json").read_text())
    queries, _ = make_texts(6, seed=7)
    scores = clf.predict_logits(queries)
    for i, text in enumerate(queries):
        content = state["template"].format(text=text, labels="money, sport, tech")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        assert prompt == clf.format_prompt(text)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, label in enumerate(clf.classes_):
            answer = tokenizer(label + "<|im_end|>", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + answer])).logits[0]
            logprobs = logits.log_softmax(-1)
            plain = sum(logprobs[len(ids) - 1 + t, tok].item() for t, tok in enumerate(answer))
            assert plain == pytest.approx(float(scores[i, j]), abs=1e-4)
        generated = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False
        )[0, len(ids) :]
        answer_text = tokenizer.decode(generated).split("<|im_end|>")[0]  # the turn's end
        assert answer_text.strip() == clf.generate_answers([text])[0]


def test_saved_plain_template_reproduces_the_prompt(fitted, tmp_path):
    from transformers import AutoTokenizer

    folder = fitted.save(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "bank shares fell"
    messages = fitted.format_.messages(text)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == fitted.format_prompt(text) and rendered.endswith("\nAnswer:")


def test_multi_label_round_trip(plain_model, tmp_path):
    texts, labels = multi_label_texts(60, seed=8)
    clf = InstructClassifier(plain_model, progress=False, **FAST).fit(texts, labels)
    assert clf.schema_.multi_label and len(clf.schema_.thresholds) == 3
    test_texts, test_labels = multi_label_texts(16, seed=9)
    proba = clf.predict_proba(test_texts)
    assert proba.shape == (16, 3) and ((proba >= 0) & (proba <= 1)).all()
    predicted = clf.predict(test_texts)
    expected = [
        [c for c, p, t in zip(clf.classes_, row, clf.schema_.thresholds) if p >= t] for row in proba
    ]
    assert predicted == expected
    folder = clf.save(tmp_path / "multi")
    loaded = InstructClassifier.load(folder, progress=False)
    np.testing.assert_allclose(loaded.predict_proba(test_texts), proba, atol=1e-5)
    generating = InstructClassifier.load(folder, progress=False, predict_mode="generate")
    answers = generating.generate_answers(test_texts)
    sets = generating.predict(test_texts)
    assert all(isinstance(s, list) for s in sets)
    parser_view = [sorted(a.replace(" ", "").split(",")) for a in answers]
    for answer_labels, chosen in zip(parser_view, sets):
        assert set(chosen) <= set(answer_labels)  # only labels the answer named
    # the response lists labels joined by ", " in schema order
    pieces = clf.format_.pieces
    tokens = clf.tokenizer_.convert_ids_to_tokens(pieces.complete((0, 2)))
    assert tokens == ["money", ",", "tech", "</s>"]


def test_zero_shot_has_no_trainable_parameters(plain_model):
    clf = InstructClassifier(plain_model, progress=False, max_length=64).zero_shot(
        ["tech", "money", "sport"]
    )
    assert clf.trainable_params_ == 0 and clf.total_params_ > 0
    assert list(clf.classes_) == ["money", "sport", "tech"]
    assert clf.predict(["bank stock"])[0] in clf.classes_
    with pytest.raises(LlmclfError, match="at least two classes"):
        InstructClassifier(plain_model).zero_shot(["only"])


def test_options_are_checked(plain_model):
    with pytest.raises(LlmclfError, match="predict-mode must be one of"):
        InstructClassifier(plain_model, predict_mode="vote").zero_shot(["a", "b"])
    with pytest.raises(LlmclfError, match="no option pooling"):
        InstructClassifier(plain_model, pooling="mean")
    with pytest.raises(LlmclfError, match="raise --max-length"):
        InstructClassifier(plain_model, max_length=20).zero_shot(["money", "sport"])
