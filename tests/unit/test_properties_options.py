"""Property-based tests (hypothesis) of what came after test_properties.py: the serving
layer driven without HTTP by generated typed requests and raw bodies (and the route,
through FastAPI's TestClient, agreeing with it), every command's options class built from
generated values, and ``llmclf predict`` on generated tables.

Each test says what a valid outcome is and checks it: an answer per text in order, an
options object whose fields have their declared types, an output row per input row; or
one ``LlmclfError`` line (a 4xx for the server), never any other exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from pydantic import ValidationError  # noqa: E402

from llmclf.cli import commands, main  # noqa: E402
from llmclf.config import REQUIRED  # noqa: E402
from llmclf.errors import LlmclfError  # noqa: E402
from llmclf.runs import load_classifier  # noqa: E402
from llmclf.runs.predict import TABLE_SUFFIXES, PredictOptions  # noqa: E402
from llmclf.serve.app import ServeOptions  # noqa: E402
from llmclf.serve.protocol import ClassifyRequest, PredictRequest  # noqa: E402
from llmclf.serve.served import served_run  # noqa: E402
from llmclf.serve.serving import (  # noqa: E402
    ServedModels,
    ServingClassify,
    ServingError,
    ServingPredict,
)
from tests.conftest import FILLER, WORDS, make_texts  # noqa: E402
from tests.instruct_models import make_instruct_llama  # noqa: E402

# max_examples (60) and derandomize come from the profile tests/conftest.py loads
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCABULARY = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
CLASSES = ["money", "sport", "tech"]
MAX_TEXTS, MAX_CHARS = 8, 2000  # the served limits (--max-texts-per-request, -chars-per-text)
HAS_LOGITS = {"tf": True, "multi": True, "head": True, "gen": False}
# CPython's csv writer quotes a field holding a bare \r only from 3.11.9 / 3.12.3 on
# (gh-67044); before, a CSV written with "\n" line ends splits that row in two when read


def one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), repr(message)


# ---------------------------------------------------------------------------------------
# The serving classes, without HTTP
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(tiny_llama, tmp_path_factory):
    """Four runs a request may name: TF-IDF, multi-label TF-IDF, a tiny Llama head (16
    tokens: long texts are cut) and an instruct run that generates (no logits)."""
    from llmclf.methods.head import HeadClassifier
    from llmclf.methods.instruct.model import InstructClassifier
    from llmclf.methods.tfidf import TfidfClassifier

    texts, labels = make_texts(60, seed=1)
    sets = [[lab, "extra"] if i % 2 else [lab] for i, lab in enumerate(labels)]
    head = HeadClassifier(
        tiny_llama, progress=False, lora="none", epochs=1, max_length=16, dtype="float32"
    )
    instruct = make_instruct_llama(tmp_path_factory.mktemp("instruct-properties"))
    return {
        "tf": TfidfClassifier(min_df=1, progress=False).fit(texts, labels),
        "multi": TfidfClassifier(min_df=1, progress=False).fit(texts, sets),
        "head": head.fit(texts[:24], labels[:24]),
        "gen": InstructClassifier(
            instruct,
            progress=False,
            max_length=64,
            predict_mode="generate",
            max_new_tokens=4,
            dtype="float32",
        ).zero_shot(CLASSES),
    }


@pytest.fixture(scope="module")
def models(classifiers):
    runs = {name: served_run(name, clf) for name, clf in classifiers.items()}
    return ServedModels(runs, MAX_TEXTS, MAX_CHARS)


def weighted(*choices):
    """One of ``choices`` (strategies; repeat one to draw it more often): ``st.one_of``
    would merge the repeats, and its nested branches, into equal shares."""
    return st.sampled_from(choices).flatmap(lambda strategy: strategy)


# up to 40 known words: over the head's 16 tokens and the instruct prompt's budget
SENTENCE = st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=40).map(" ".join)
UNICODE = st.text(max_size=30)  # any unicode, control characters included
TEXT = weighted(
    UNICODE,
    UNICODE,
    st.sampled_from(["", " ", "\n\t ", "\u3000", "\x00", "bank", "Goal!"]),
    SENTENCE,
    SENTENCE,
    SENTENCE,
    st.sampled_from([MAX_CHARS - 1, MAX_CHARS, MAX_CHARS + 1]).map(lambda n: "x" * n),
)
LIST = st.lists(TEXT, max_size=MAX_TEXTS)
OVER = st.lists(TEXT, min_size=MAX_TEXTS + 1, max_size=MAX_TEXTS + 1) | st.integers(
    MAX_TEXTS + 2, 5000
).map(lambda n: ["bank"] * n)
TEXTS = weighted(TEXT, LIST, LIST, LIST, OVER)
SERVED = st.sampled_from([None, "tf", "multi", "head"])  # "gen" (0.5 s a text): examples only
MODEL = weighted(SERVED, SERVED, SERVED, SERVED, st.sampled_from(["TF", ""]) | st.text(max_size=6))


def expected_status(models: ServedModels, api: str, request) -> int:
    """What ``request`` must get, from the limits and the runs' own token counts."""
    value = request.input if api == "classify" else request.inputs
    if request.model is not None and request.model not in models.runs:
        return 404
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        return 422
    if len(texts) > MAX_TEXTS or max(len(t) for t in texts) > MAX_CHARS:
        return 413
    run = models.pick(request.model)
    real = [t for t in texts if t.strip()]
    if api == "predict" and real:
        cut = run.max_length is not None and request.truncate is False
        if cut and max(run.classifier.input_tokens(real)) > run.max_length:
            return 413
        if request.raw_scores and not HAS_LOGITS[run.name]:
            return 422
    return 200


def serve(models: ServedModels, api: str, request):
    """The serving class's answer, or its ``ServingError``."""
    try:
        if api == "classify":
            return asyncio.run(ServingClassify(models).classify(request))
        return asyncio.run(ServingPredict(models).predict(request))
    except ServingError as error:
        assert 400 <= error.status < 500, error.status
        one_line(error.message)
        return error


def check_classify(run, texts: list[str], answer) -> None:
    """One ``data`` row per text, in order, with the classifier's own probabilities and
    labels for the same batch; an empty text's empty row; usage from its token counts."""
    real = [t for t in texts if t.strip()]
    assert answer.model == run.name
    assert [row.index for row in answer.data] == list(range(len(texts)))
    proba = run.classifier.predict_proba(real) if real else []
    labels = run.classifier.labels_from_proba(proba) if real else []
    rows = iter(zip(proba, labels))
    for text, row in zip(texts, answer.data):
        assert row.num_classes == len(run.classes)
        if not text.strip():
            assert (row.label, row.probs) == (None, [])
            assert row.labels == ([] if run.multi_label else None)
            continue
        probs, decided = next(rows)
        np.testing.assert_allclose(row.probs, probs, rtol=0, atol=1e-6)
        if run.multi_label:
            assert row.label == run.classes[int(np.argmax(probs))]
            assert row.labels == list(decided)
        else:
            assert row.label == decided and row.labels is None
    tokens = run.classifier.input_tokens(real) if real else []
    assert answer.usage.prompt_tokens == sum(tokens)
    limit = run.max_length
    assert answer.usage.truncated_inputs == sum(limit is not None and t > limit for t in tokens)


def check_predict(run, request, answer) -> None:
    """One list of ``{label, score}`` per text (one text: that list alone), every class
    once, highest first, the scores the classifier's own (logits with raw_scores)."""
    texts = [request.inputs] if isinstance(request.inputs, str) else list(request.inputs)
    answers = [answer.root] if isinstance(request.inputs, str) else answer.root
    assert len(answers) == len(texts)
    real = [t for t in texts if t.strip()]
    details = run.classifier.predict_details(real) if real else None
    scores = iter((details.logits if request.raw_scores else details.proba) if real else [])
    for text, pairs in zip(texts, answers):
        if not text.strip():
            assert pairs == []
            continue
        row = next(scores)
        assert sorted(pair.label for pair in pairs) == sorted(run.classes)
        got = [pair.score for pair in pairs]
        assert got == sorted(got, reverse=True)
        by_label = {pair.label: pair.score for pair in pairs}
        np.testing.assert_allclose([by_label[c] for c in run.classes], row, rtol=0, atol=1e-5)


def check_answer(models: ServedModels, api: str, request, outcome) -> None:
    status = outcome.status if isinstance(outcome, ServingError) else 200
    event(f"{api} {status}")
    assert status == expected_status(models, api, request), outcome
    if status != 200:
        return
    run = models.pick(request.model)
    if api == "classify":
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        check_classify(run, texts, outcome)
    else:
        check_predict(run, request, outcome)


LONG = " ".join(["goal", "match"] * 30)  # over the head's and the instruct run's budgets
MIXED = ["bank stock market", "", "goal match team win", "  ", "phone chip software app"]


@SETTINGS
@example(api="classify", texts=MIXED, model="head", truncate=None, raw_scores=False)
@example(api="predict", texts=MIXED, model="multi", truncate=None, raw_scores=True)
@example(api="predict", texts=[LONG, "bank"], model="head", truncate=False, raw_scores=False)
@example(api="predict", texts=["bank", ""], model="gen", truncate=None, raw_scores=True)
@example(api="classify", texts=["goal", "", "bank"], model="gen", truncate=None, raw_scores=False)
@example(api="classify", texts=[], model=None, truncate=None, raw_scores=False)
@example(
    api="predict", texts=["x" * MAX_CHARS] * MAX_TEXTS, model="tf", truncate=None, raw_scores=False
)
@example(
    api="classify", texts=["bank"] * (MAX_TEXTS + 1), model=None, truncate=None, raw_scores=False
)
@given(
    api=st.sampled_from(["classify", "predict"]),
    texts=TEXTS,
    model=MODEL,
    truncate=st.one_of(st.none(), st.booleans()),
    raw_scores=st.booleans(),
)
def test_typed_requests_get_an_answer_per_text_in_order_or_a_4xx(
    models, api, texts, model, truncate, raw_scores
):
    if api == "classify":
        request = ClassifyRequest(model=model, input=texts)
    else:
        request = PredictRequest(
            model=model, inputs=texts, truncate=truncate, raw_scores=raw_scores
        )
    check_answer(models, api, request, serve(models, api, request))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def bodies(key: str):
    """``/v1/classify`` (``key`` input) or ``/predict`` (inputs) bodies: mostly of the
    right shape with odd values here and there, or any JSON at all."""
    shaped = st.fixed_dictionaries(
        {key: weighted(TEXTS, TEXTS, JSON)},
        optional={
            "model": weighted(MODEL, MODEL, JSON),
            "truncate": st.sampled_from([None, True, False, "false", 0, 1, "no", 2, []]),
            "raw_scores": st.sampled_from([True, False, "true", 1, 0, None, "x", {}]),
            "user": JSON,
        },
    )
    return weighted(shaped, shaped, shaped, JSON)


@pytest.fixture(scope="module")
def client(classifiers):
    """One app over the same classifiers (with its batchers and bounded shapes)."""
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app

    app = create_app(
        dict(classifiers),
        max_texts_per_request=MAX_TEXTS,
        max_chars_per_text=MAX_CHARS,
        max_wait_ms=1,
        warm_up=False,
    )
    with TestClient(app) as client:
        yield client


@SETTINGS
@given(
    st.sampled_from(["classify", "predict"]).flatmap(
        lambda api: st.tuples(st.just(api), bodies("input" if api == "classify" else "inputs"))
    )
)
def test_raw_bodies_parse_or_are_refused_and_the_route_agrees(models, client, api_body):
    """A body the protocol's model accepts gets what the serving class gives (the route
    answers with the same status and as many answers); one it refuses is a 422, and
    never a 5xx over HTTP."""
    api, body = api_body
    kind = ClassifyRequest if api == "classify" else PredictRequest
    try:
        request = kind.model_validate(body)
    except ValidationError:
        request = None
        event("refused by the protocol")
    response = client.post("/v1/classify" if api == "classify" else "/predict", json=body)
    assert response.status_code < 500, response.text
    if request is None:
        assert response.status_code == 422, response.text
    else:
        outcome = serve(models, api, request)
        check_answer(models, api, request, outcome)
        status = outcome.status if isinstance(outcome, ServingError) else 200
        assert response.status_code == status, response.text
        if status == 200:
            wire = response.json()
            texts = request.input if api == "classify" else request.inputs
            if api == "classify":
                assert len(wire["data"]) == (1 if isinstance(texts, str) else len(texts))
            elif isinstance(texts, list):
                assert len(wire) == len(texts)
            return
    error = response.json()["error"]
    assert error["code"] == response.status_code
    one_line(error["message"])


# ---------------------------------------------------------------------------------------
# Every command's options, from generated values
# ---------------------------------------------------------------------------------------

OPTION_CLASSES = sorted(
    {cls for command in commands() for cls in command.options}, key=lambda cls: cls.__name__
)
WRONG = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.integers(-(2**70), 2**70),
    st.floats(),  # nan and infinities too
    st.booleans(),
    st.lists(st.integers(-2, 2), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def kinds_of(f: dataclasses.Field) -> list[str]:
    return [k.strip() for k in str(f.type).split("|")]


def good_values(f: dataclasses.Field):
    """Values of the field's own type, in and out of its range."""
    base = kinds_of(f)[0]
    if f.metadata.get("choices"):
        return st.sampled_from(list(f.metadata["choices"]))
    if base == "bool":
        return st.booleans()
    if base == "int":
        return st.integers(-3, 70_000) | st.sampled_from([0, 1, 65535, 65536])
    if base == "float":
        return st.floats(-2, 100) | st.sampled_from([0.0, 1.0, float("inf"), "1e-3", "nan"])
    if base.startswith("list"):
        return st.lists(st.text(max_size=6), max_size=3) | st.text(max_size=6)
    return st.text(max_size=8) | st.sampled_from(["run", "out.csv", "out/", "0.5", "tuned"])


@st.composite
def option_values(draw, cls):
    """Some of ``cls``'s names (the required ones mostly) with values of their own type
    (in range or not) or, in half the draws, of any type; sometimes unknown names too."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    any_type = draw(st.booleans())
    given = draw(st.sampled_from([1, 4, 8]))  # in ten: few, some or most options given
    values = {}
    for name, f in fields.items():
        required = f.default is REQUIRED and f.default_factory is REQUIRED
        if draw(st.sampled_from(range(10))) < (9 if required else given):
            values[name] = draw(good_values(f) | WRONG if any_type else good_values(f))
    # printable: a name with a line break is echoed as it is (a two-line error, reported)
    unknown = st.text(min_size=1, max_size=10).filter(lambda n: n.isprintable())
    unknown = unknown.filter(lambda n: n not in fields)
    if draw(st.sampled_from(range(5))) == 0:
        values.update(draw(st.dictionaries(unknown, WRONG, min_size=1, max_size=2)))
    return values


def has_declared_type(value, f: dataclasses.Field) -> bool:
    kinds = kinds_of(f)
    if value is None:
        return "None" in kinds
    base = kinds[0]
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, float)
    if base.startswith("list"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def within_bounds(value, f: dataclasses.Field) -> bool:
    meta = f.metadata
    if value is None:
        return True
    if meta.get("choices") and value not in meta["choices"]:
        return False
    kind = (meta.get("bound") or (None, None))[0]
    return {
        ">": lambda v: v > 0,
        ">=": lambda v: v >= 0,
        "[0,1)": lambda v: 0 <= v < 1,
        None: lambda v: True,
    }[kind](value)


def check_options(cls, values: dict) -> None:
    try:
        options = cls.from_values(values)
    except LlmclfError as error:
        one_line(str(error))
        event("refused")
        return
    event("accepted")
    fields = dataclasses.fields(cls)
    assert set(values) <= {f.name for f in fields}, "an unknown name was taken"
    for f in fields:
        value = getattr(options, f.name)
        assert has_declared_type(value, f), (f.name, value)
        assert within_bounds(value, f), (f.name, value)
        if f.default is REQUIRED and f.default_factory is REQUIRED:
            assert f.name in values
    if isinstance(options, PredictOptions):
        defaults = PredictOptions.__dataclass_fields__
        if options.ray:
            assert Path(options.output).suffix.lower() not in TABLE_SUFFIXES
        else:
            assert all(
                getattr(options, n) == defaults[n].default for n in defaults if n.startswith("ray_")
            )
    if isinstance(options, ServeOptions):
        assert 1 <= options.port <= 65535


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda cls: cls.__name__)
def test_every_commands_options_are_typed_or_refused_in_one_line(cls):
    @SETTINGS
    @given(values=option_values(cls))
    def check(values):
        check_options(cls, values)

    check()


# ---------------------------------------------------------------------------------------
# llmclf predict on generated tables
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory):
    """A TF-IDF run folder (text column ``text``) and its loaded classifier."""
    folder = tmp_path_factory.mktemp("predict-properties")
    texts, labels = make_texts(60, seed=1)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(folder / "d.csv")]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--output", str(folder / "tf")]) == 0
    return str(folder / "tf"), load_classifier(folder / "tf", progress=False)


COLUMN = st.one_of(
    st.sampled_from(["text", "title", "body", "Text", " text", "1"]),
    st.text(st.characters(categories=["L", "N"]) | st.sampled_from(" _."), min_size=1, max_size=6),
).filter(lambda name: name != "row" and not name.startswith(("proba_", "prediction")))
CELL = st.one_of(
    st.text(max_size=12),
    st.none(),
    st.just(float("nan")),
    st.sampled_from(["", " ", "\t", "NA", "null", "None", "nan", "1", "1.50", "bank"]),
    st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=5).map(" ".join),
)


def is_empty(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return not str(value).strip()


def write_table(table: dict, path: Path) -> None:
    frame = pd.DataFrame(table)
    if path.suffix in (".csv", ".tsv"):
        sep = "," if path.suffix == ".csv" else "\t"  # CRLF: a bare \r in a text is quoted
        frame.to_csv(path, sep=sep, index=False, lineterminator="\r\n")
    elif path.suffix == ".jsonl":
        rows = [
            {k: (None if is_empty(v) and not isinstance(v, str) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")
        ]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    else:
        frame.astype({c: object for c in frame.columns if c != "row"}).to_parquet(path)


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix in (".csv", ".tsv"):
        sep = "," if path.suffix == ".csv" else "\t"
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    if path.suffix == ".jsonl":
        lines = path.read_text("utf-8").split("\n")  # not splitlines: a text may hold \x85
        return pd.DataFrame([json.loads(line) for line in lines if line])
    return pd.read_parquet(path)


@st.composite
def predict_cases(draw):
    """A table (a ``row`` id, then text columns: mostly the run's ``text``), how it is
    written and read, and the flags: mostly valid, sometimes not."""
    output = draw(st.sampled_from(TABLE_SUFFIXES))
    cell = CELL
    rows = draw(st.integers(0, 8))
    names = draw(st.lists(COLUMN, max_size=2, unique=True))
    if draw(st.sampled_from([True, True, True, True, False])):
        names = ["text", *(n for n in names if n != "text")]
    names = names or ["title"]
    table = {"row": list(range(rows))}
    for name in names:
        table[name] = draw(st.lists(cell, min_size=rows, max_size=rows))
    present = st.lists(st.sampled_from(names), min_size=1, max_size=2)
    maybe = st.lists(st.sampled_from(names) | COLUMN, min_size=1, max_size=2)
    asked = draw(st.sampled_from([None, None, present, present, maybe]))
    asked = draw(asked) if asked is not None else None
    return {
        "table": table,
        "input": draw(st.sampled_from(TABLE_SUFFIXES)),
        "output": output,
        "text_column": asked,
        "empty_text": draw(st.sampled_from(["drop", "drop", "error"])),
        "chunk_rows": draw(st.sampled_from([1, 2, 3, 5, 4096, 1, 2, 3, 5, 0])),
        "eval_batch_size": draw(st.sampled_from([None, None, None, 1, 2, 1, 2, 0])),
        "switches": draw(st.lists(st.sampled_from(["--batch-invariant", "--no-tune-malloc"]))),
        "int8": draw(st.sampled_from([False] * 9 + [True])),
    }


def expected_exit(case: dict) -> int:
    table, columns = case["table"], case["text_column"] or ["text"]
    if not table["row"] or any(c not in table for c in columns):
        return 2
    if case["chunk_rows"] < 1 or case["int8"] or case["eval_batch_size"] == 0:
        return 2
    empty = any(all(is_empty(table[c][i]) for c in columns) for i in table["row"])
    return 2 if case["empty_text"] == "error" and empty else 0


def changes_type(case: dict) -> bool:
    """CSV / TSV into Parquet, in more than one chunk: pandas infers each chunk's column
    types anew (an empty column is float64, "1" is int64), and the Parquet file keeps the
    first chunk's (``TableWriter``), so a later chunk can be refused in one line. See
    ``test_a_csv_column_empty_in_the_first_chunk_can_be_written_to_parquet``."""
    several = case["chunk_rows"] < len(case["table"]["row"])
    return case["input"] in (".csv", ".tsv") and case["output"] == ".parquet" and several


@SETTINGS
@given(case=predict_cases())
def test_predict_writes_a_row_per_row_in_order_or_refuses_in_one_line(tfidf_run, case):
    run, classifier = tfidf_run
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / f"in{case['input']}", Path(folder) / f"out{case['output']}"
        write_table(case["table"], source)
        argv = ["predict", run, "--input", str(source), "--output", str(target)]
        argv += ["--empty-text", case["empty_text"], "--chunk-rows", str(case["chunk_rows"])]
        if case["text_column"]:
            argv += ["--text-column", *case["text_column"]]
        if case["eval_batch_size"] is not None:
            argv += ["--eval-batch-size", str(case["eval_batch_size"])]
        argv += case["switches"] + (["--int8"] if case["int8"] else [])
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        # after the line a progress bar left open, when the error came mid-write
        lines = stderr.getvalue().splitlines()
        errors = [
            line.partition("llmclf: error: ")[2] for line in lines if "llmclf: error:" in line
        ]
        event(f"exit {code}")
        if code == 2 and changes_type(case) and "a column's type changes" in stderr.getvalue():
            event("exit 2: a CSV column's type changes between chunks (Parquet output)")
        else:
            assert code == expected_exit(case), (code, stderr.getvalue())
        if code == 2:
            assert len(errors) == 1, stderr.getvalue()
            one_line(errors[0])
            assert sorted(p.name for p in Path(folder).iterdir()) == [source.name]
            return
        assert not errors
        check_output(read_output(target), case, classifier)


def check_output(out: pd.DataFrame, case: dict, classifier) -> None:
    """A row per input row, in order; an empty text's empty prediction; every other
    row the classifier's own label for its text (the columns joined by a blank line)."""
    table, columns = case["table"], case["text_column"] or ["text"]
    assert [int(r) for r in out["row"]] == table["row"]
    texts = [
        "\n\n".join(str(table[c][i]).strip() for c in columns if not is_empty(table[c][i]))
        for i in table["row"]
    ]
    real = [t for t in texts if t]
    expected = iter(classifier.predict(real) if real else [])
    for text, got in zip(texts, out["prediction"]):
        assert got == (next(expected) if text else ""), (text, got)


def test_a_csv_column_empty_in_the_first_chunk_can_be_written_to_parquet(tfidf_run, tmp_path):
    run, _ = tfidf_run
    source = tmp_path / "in.csv"
    source.write_text("text,notes\nbank stock,\ngoal match,\nphone app,checked\n")
    argv = ["predict", run, "--input", str(source), "--output", str(tmp_path / "out.parquet")]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, "--chunk-rows", "2"])
    assert code == 0, stderr.getvalue()
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["notes"].isna().tolist() == [True, True, False] and out["notes"][2] == "checked"


def test_a_bare_carriage_return_in_a_text_survives_a_csv_output(tfidf_run, tmp_path):
    run, _ = tfidf_run
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "bank\\rstock"}\n{"text": "goal match"}\n', "utf-8")
    argv = ["predict", run, "--input", str(source), "--output", str(tmp_path / "out.csv")]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    out = read_output(tmp_path / "out.csv")
    assert out["text"].tolist() == ["bank\rstock", "goal match"]
