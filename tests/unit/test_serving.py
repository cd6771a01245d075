"""The server's layers without HTTP: ``ServeOptions``, the serving classes (a typed
request in, a typed response out), the classifiers' token counts against their real
budget, and the methods' serving declarations."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

pytest.importorskip("fastapi")

from llmclf.errors import LlmclfError
from llmclf.methods.instruct.model import InstructClassifier
from llmclf.methods.tfidf import TfidfClassifier
from llmclf.serve.app import ServeOptions, load_runs, resolve_options
from llmclf.serve.protocol import ClassifyRequest, PredictRequest
from llmclf.serve.served import served_run
from llmclf.serve.serving import ServedModels, ServingClassify, ServingError, ServingPredict
from tests.conftest import make_texts
from tests.instruct_models import make_instruct_llama

TEXTS = ["bank stock market price", "goal match team win", "phone chip software app"]
CLASSES = ["money", "sport", "tech"]


@pytest.fixture(scope="module")
def tfidf():
    texts, labels = make_texts(60, seed=1)
    return TfidfClassifier(min_df=1, progress=False).fit(texts, labels)


@pytest.fixture(scope="module")
def multi():
    texts, labels = make_texts(60, seed=1)
    sets = [[lab, "extra"] if i % 2 else [lab] for i, lab in enumerate(labels)]
    return TfidfClassifier(min_df=1, progress=False).fit(texts, sets)


@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory):
    return make_instruct_llama(tmp_path_factory.mktemp("instruct-serve"))


@pytest.fixture(scope="module")
def instruct(instruct_model):
    """A zero-shot instruct run in score mode, its prompt of max_length 64."""
    return InstructClassifier(
        instruct_model, progress=False, max_length=64, dtype="float32"
    ).zero_shot(CLASSES)


def models_of(max_texts_per_request: int = 8, max_chars_per_text: int = 2000, **classifiers):
    runs = {name: served_run(name, clf) for name, clf in classifiers.items()}
    return ServedModels(runs, max_texts_per_request, max_chars_per_text)


def classify(models: ServedModels, **body):
    return asyncio.run(ServingClassify(models).classify(ClassifyRequest(**body)))


def predict(models: ServedModels, **body):
    return asyncio.run(ServingPredict(models).predict(PredictRequest(**body)))


# ---------------------------------------------------------------------------------------
# ServeOptions
# ---------------------------------------------------------------------------------------


def test_serve_options_hold_the_commands_defaults():
    options = ServeOptions()
    assert options.as_dict() == {
        "name": None,
        "host": "127.0.0.1",
        "port": 8000,
        "max_batch_size": 32,
        "max_wait_ms": 5.0,
        "max_texts_per_request": 64,
        "max_chars_per_text": 100_000,
        "api_key": None,
        "shape_multiple": 32,
        "warm_up": True,
    }
    name = next(f for f in dataclasses.fields(ServeOptions) if f.name == "name")
    assert name.metadata["repeat"] and all(
        f.metadata["help"] for f in dataclasses.fields(ServeOptions)
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_batch_size": 0}, "--max-batch-size must be > 0, not 0"),
        ({"max_wait_ms": -1}, "--max-wait-ms must be ≥ 0"),
        ({"max_texts_per_request": 0}, "--max-texts-per-request must be > 0"),
        ({"max_chars_per_text": -5}, "--max-chars-per-text must be > 0"),
        ({"shape_multiple": -1}, "--shape-multiple must be ≥ 0"),
        ({"port": 0}, "--port must be between 1 and 65535, not 0"),
        ({"port": 70000}, "--port must be between 1 and 65535"),
        ({"warm_up": "yes"}, "--warm-up must be true or false"),
        ({"port": "http"}, "--port must be a whole number"),
    ],
)
def test_a_bad_serve_option_is_refused_in_one_line(values, message):
    with pytest.raises(LlmclfError, match=message):
        ServeOptions(**values)


def test_keywords_part_into_serve_options_and_the_run_loaders_overrides():
    options, loader = resolve_options(None, {"int8": True}, {"port": 9000, "dtype": "float32"})
    assert options.port == 9000 and loader == {"int8": True, "dtype": "float32"}
    again, loader = resolve_options(options, None, {"max_wait_ms": 50, "device": "cpu"})
    assert (again.port, again.max_wait_ms, loader) == (9000, 50.0, {"device": "cpu"})
    with pytest.raises(LlmclfError, match="--max-wait-ms must be ≥ 0"):
        resolve_options(options, None, {"max_wait_ms": -2})  # checked when replaced too
    assert ServeOptions.from_values({"name": "news"}).name == ["news"]


def test_the_api_key_is_read_from_the_environment_when_serving_not_at_import(monkeypatch):
    monkeypatch.delenv("LLMCLF_API_KEY", raising=False)
    options = ServeOptions()
    assert options.resolved_api_key() is None
    monkeypatch.setenv("LLMCLF_API_KEY", "from-env")
    assert options.resolved_api_key() == "from-env"
    assert ServeOptions(api_key="given").resolved_api_key() == "given"
    assert ServeOptions(api_key="").resolved_api_key() is None  # --api-key '': open


def test_create_app_reads_the_key_from_the_environment(tfidf, monkeypatch):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app

    monkeypatch.setenv("LLMCLF_API_KEY", "s3cret")
    with TestClient(create_app({"tf": tfidf}, warm_up=False)) as client:
        assert client.get("/v1/models").status_code == 401
        good = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["data"][0]["id"] == "tf"
        assert client.get("/health").json() == {"status": "ok", "models": ["tf"]}


# ---------------------------------------------------------------------------------------
# ServingClassify and ServingPredict, without HTTP
# ---------------------------------------------------------------------------------------


def test_classify_answers_with_the_classifiers_own_probabilities_and_labels(tfidf, multi):
    tfidf.temperature_ = 2.5  # a calibrated run: predict_proba applies it
    try:
        answer = classify(models_of(tf=tfidf, multi=multi), model="tf", input=TEXTS)
        expected = tfidf.predict_proba(TEXTS)
    finally:
        tfidf.temperature_ = 1.0
    assert answer.model == "tf" and answer.id.startswith("classify-")
    np.testing.assert_allclose([row.probs for row in answer.data], expected, atol=1e-6)
    assert [row.label for row in answer.data] == tfidf.predict(TEXTS)
    wire = answer.model_dump(mode="json")
    assert [set(row) for row in wire["data"]] == [{"index", "label", "probs", "num_classes"}] * 3
    assert wire["usage"] == {
        "prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0,
        "prompt_tokens_details": None, "truncated_inputs": 0, "max_length": None,
    }  # fmt: skip


def test_multi_label_sets_follow_the_runs_own_thresholds(multi):
    saved = list(multi.schema_.thresholds)
    multi.schema_.thresholds = [0.99] * len(multi.classes_)  # nothing passes
    try:
        answer = classify(models_of(multi=multi), input=TEXTS)
        assert [row.labels for row in answer.data] == multi.predict(TEXTS) == [[], [], []]
    finally:
        multi.schema_.thresholds = saved
    answer = classify(models_of(multi=multi), input=TEXTS)
    assert [row.labels for row in answer.data] == multi.predict(TEXTS)
    top = [multi.classes_[i] for i in multi.predict_proba(TEXTS).argmax(axis=1)]
    assert [row.label for row in answer.data] == top
    assert all("labels" in row for row in answer.model_dump()["data"])


def test_empty_texts_get_the_empty_answer_and_never_reach_the_model(tfidf, multi):
    answer = classify(models_of(tf=tfidf), input=["", TEXTS[0], "  "])
    assert [(row.label, row.probs) for row in answer.data][::2] == [(None, [])] * 2
    assert answer.usage.prompt_tokens == 4
    empty = classify(models_of(multi=multi), input=[""]).model_dump()["data"][0]
    assert empty["labels"] == [] and empty["label"] is None
    assert predict(models_of(tf=tfidf), inputs="").root == []


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "nope", "input": "a"}, 404, "not served here; served: tf"),
        ({"input": []}, 422, "no texts"),
        ({"input": ["a"] * 9}, 413, "at most 8 (--max-texts-per-request)"),
        ({"input": "x" * 2001}, 413, "at most 2000 (--max-chars-per-text)"),
    ],
)
def test_a_clients_mistake_raises_the_status_that_says_so(tfidf, body, status, fragment):
    with pytest.raises(ServingError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as err:
        classify(models_of(tf=tfidf), **body)
    assert err.value.status == status


def test_predict_sorts_each_texts_scores_and_gives_logits_when_raw(tfidf):
    models = models_of(tf=tfidf)
    one = predict(models, inputs=TEXTS[0]).root
    assert [pair.score for pair in one] == sorted(tfidf.predict_proba([TEXTS[0]])[0])[::-1]
    assert one[0].label == tfidf.predict(TEXTS[0])
    many = predict(models, inputs=TEXTS).root
    assert [answer[0].label for answer in many] == tfidf.predict(TEXTS)
    raw = predict(models, inputs=TEXTS, raw_scores=True).root
    logits = tfidf.predict_logits(TEXTS)
    for answer, row in zip(raw, logits):
        by_label = {pair.label: pair.score for pair in answer}
        np.testing.assert_allclose([by_label[c] for c in tfidf.classes_], row, atol=1e-6)


def test_a_run_without_logits_is_served_through_its_own_predict_path(instruct_model):
    """A generating instruct classifier has probabilities (its parsed answers) and no
    logits: /v1/classify gives what its predict_proba and predict give, raw_scores is
    the client's mistake (422), never a 5xx."""
    clf = InstructClassifier(
        instruct_model, progress=False, max_length=64, predict_mode="generate"
    ).zero_shot(CLASSES)
    models = models_of(gen=clf)
    answer = classify(models, input=TEXTS)
    np.testing.assert_array_equal([row.probs for row in answer.data], clf.predict_proba(TEXTS))
    assert [row.label for row in answer.data] == clf.predict(TEXTS)
    with pytest.raises(ServingError, match="no raw scores") as err:
        predict(models, inputs=TEXTS, raw_scores=True)
    assert err.value.status == 422


# ---------------------------------------------------------------------------------------
# Token counts from the real model input
# ---------------------------------------------------------------------------------------


def test_an_instruct_text_cut_only_because_of_its_prompt_is_counted_and_refused(instruct):
    long = " ".join(["bank"] * 40)  # 40 tokens alone: under max_length 64, not with the prompt
    assert len(instruct.tokenizer_(long)["input_ids"]) < 64
    budget = instruct.input_budget()
    assert budget == 64 - instruct.answer_length_
    tokens = instruct.input_tokens([long, "bank"])
    assert tokens[0] > budget >= tokens[1]
    # the count is the prompt's: exactly what the model reads when nothing is cut
    assert tokens[1] == len(instruct._encode(["bank"])[0])
    assert len(instruct._encode([long])[0]) == budget
    models = models_of(instruct=instruct)
    answer = classify(models, input=[long, "bank"])
    assert answer.usage.truncated_inputs == 1 and answer.usage.max_length == budget
    assert answer.usage.prompt_tokens == sum(tokens)
    with pytest.raises(ServingError, match=f"input 0 has {tokens[0]} tokens") as err:
        predict(models, inputs=[long], truncate=False)
    assert err.value.status == 413
    assert len(predict(models, inputs=[long]).root[0]) == 3  # cut, as predict cuts it
    assert models.model_list().data[0].max_length == budget


def test_tfidf_counts_words_and_cuts_nothing(tfidf):
    assert tfidf.input_tokens(["a b  c", ""]) == [3, 0] and tfidf.input_budget() is None
    answer = classify(models_of(tf=tfidf, max_chars_per_text=30_000), input="bank " * 5000)
    assert answer.usage.truncated_inputs == 0 and answer.usage.prompt_tokens == 5000


# ---------------------------------------------------------------------------------------
# The methods' declarations
# ---------------------------------------------------------------------------------------


def test_load_runs_loads_each_run_with_its_methods_serve_overrides(
    instruct_model, tmp_path, monkeypatch
):
    clf = InstructClassifier(
        instruct_model, progress=False, max_length=64, predict_mode="generate"
    ).zero_shot(CLASSES)
    folder = clf.save(tmp_path / "instruct")
    declared = {"predict_mode": "score", "max_new_tokens": 3}
    monkeypatch.setattr(InstructClassifier, "serve_overrides", declared)
    [run] = load_runs([folder], ServeOptions(warm_up=False), dtype="float32")
    assert run.name == "instruct" and run.method == "instruct"
    instruct_cfg = run.classifier.config_.instruct
    assert (instruct_cfg.predict_mode, instruct_cfg.max_new_tokens) == ("score", 3)
    assert run.max_length == run.classifier.input_budget() < 64
