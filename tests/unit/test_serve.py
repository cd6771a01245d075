"""`llmclf serve`: the real server (uvicorn on a free loopback port) with TF-IDF runs and
the tiny model, talked to over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclf.cli import main
from llmclf.runs import load_classifier
from llmclf.serve import create_app
from tests.conftest import make_texts

# a live uvicorn server (and a serve subprocess): make test runs them, make test-fast does not
pytestmark = pytest.mark.slow

TEXTS = ["bank stock market price", "goal match team win", "phone chip software app"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn in a thread on a free 127.0.0.1 port; stopped after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("serve")
    texts, labels = make_texts(60, seed=1)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    multi = [f"{lab}|extra" if i % 2 else lab for i, lab in enumerate(labels)]
    pd.DataFrame({"text": texts, "label": multi}).to_csv(folder / "m.csv", index=False)
    tfidf = ["train", "--method", "tfidf", "--min-df", "1"]
    assert main([*tfidf, "--data", str(folder / "d.csv"), "--output", str(folder / "tf")]) == 0
    args = [*tfidf, "--data", str(folder / "m.csv"), "--label-sep", "|"]
    assert main([*args, "--output", str(folder / "multi")]) == 0
    args = ["train", "--model", tiny_llama, "--data", str(folder / "d.csv"), "--epochs", "1"]
    assert main([*args, "--max-length", "16", "--output", str(folder / "head")]) == 0
    # an instruct run that generates: served in score mode
    args = ["evaluate", "--zero-shot", "--model", tiny_llama, "--method", "instruct"]
    args += ["--data", str(folder / "d.csv"), "--max-length", "64", "--predict-mode", "generate"]
    assert main([*args, "--output", str(folder / "instruct")]) == 0
    return folder


def test_every_method_is_served(runs, tiny_bert):
    args = ["train", "--method", "encoder", "--model", tiny_bert, "--data", str(runs / "d.csv")]
    assert main([*args, "--epochs", "1", "--max-length", "16", "--output", str(runs / "enc")]) == 0
    served = [runs / name for name in ("tf", "multi", "head", "instruct", "enc")]
    with running(create_app(served)) as address:
        models = {m["id"]: m for m in httpx.get(address + "/v1/models").json()["data"]}
        assert [models[n]["method"] for n in ("tf", "head", "instruct", "enc")] == [
            "tfidf", "head", "instruct", "encoder",
        ]  # fmt: skip
        for name in models:
            body = post(address, "/v1/classify", {"model": name, "input": TEXTS}).json()
            offline = (
                load_classifier(runs / name, dtype="float32", predict_mode="score")
                if (name == "instruct")
                else load_classifier(runs / name, dtype="float32")
            )
            expected = offline.predict_proba(TEXTS)
            got = np.array([row["probs"] for row in body["data"]])
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def url(runs):
    app = create_app(
        [runs / "tf", runs / "multi", runs / "head"], max_wait_ms=2, max_texts_per_request=8,
        max_chars_per_text=400,
    )  # fmt: skip
    with running(app) as address:
        yield address


def post(url, path, body, **kwargs):
    return httpx.post(url + path, json=body, timeout=30, **kwargs)


def test_classify_answers_as_vllm_does_with_the_offline_predictions(url, runs):
    response = post(url, "/v1/classify", {"model": "tf", "input": TEXTS})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "tf" and body["id"].startswith("classify-")
    assert isinstance(body["created"], int) and body["usage"]["prompt_tokens"] > 0
    offline = load_classifier(runs / "tf")
    expected = offline.predict_proba(TEXTS)
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    for row, proba, label in zip(body["data"], expected, offline.predict(TEXTS)):
        assert row["num_classes"] == 3 and row["label"] == label
        np.testing.assert_allclose(row["probs"], proba, atol=1e-6)
    assert post(url, "/classify", {"model": "tf", "input": TEXTS}).json()["data"] == body["data"]
    one = post(url, "/v1/classify", {"model": "tf", "input": TEXTS[0]}).json()
    assert len(one["data"]) == 1 and one["data"][0]["label"] == offline.predict(TEXTS[0])


def test_predict_answers_as_tei_does(url, runs):
    offline = load_classifier(runs / "head", dtype="float32")
    single = post(url, "/predict", {"inputs": TEXTS[1], "model": "head"}).json()
    assert [set(d) for d in single] == [{"label", "score"}] * 3
    scores = [d["score"] for d in single]
    assert scores == sorted(scores, reverse=True)
    assert single[0]["label"] == offline.predict(TEXTS[1])
    np.testing.assert_allclose(sum(scores), 1.0, atol=1e-5)
    batch = post(url, "/predict", {"inputs": TEXTS, "model": "head"}).json()
    assert [answer[0]["label"] for answer in batch] == offline.predict(TEXTS)
    raw = post(url, "/predict", {"inputs": TEXTS[1], "model": "head", "raw_scores": True}).json()
    logits = offline.predict_logits([TEXTS[1]])[0]
    assert max(d["score"] for d in raw) == pytest.approx(float(logits.max()), abs=1e-4)


def test_multi_label_runs_add_their_label_sets(url, runs):
    body = post(url, "/v1/classify", {"model": "multi", "input": TEXTS}).json()
    offline = load_classifier(runs / "multi")
    assert [row["labels"] for row in body["data"]] == offline.predict(TEXTS)
    assert all(len(row["probs"]) == 4 for row in body["data"])  # sigmoid per class


def test_models_health_docs_and_page(url):
    models = httpx.get(url + "/v1/models").json()["data"]
    by_name = {m["id"]: m for m in models}
    assert set(by_name) == {"tf", "multi", "head"}
    assert by_name["multi"]["multi_label"] and by_name["head"]["max_length"] == 16
    assert by_name["head"]["method"] == "head" and by_name["head"]["base_model"]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    assert {"/v1/classify", "/predict", "/v1/models", "/health", "/metrics"} <= set(paths)
    assert httpx.get(url + "/docs").status_code == 200
    page = httpx.get(url + "/")
    assert page.status_code == 200 and 'id="texts"' in page.text and "/v1/classify" in page.text


def test_empty_texts_get_predicts_empty_answer(url):
    body = post(url, "/v1/classify", {"model": "tf", "input": ["", TEXTS[0], "  "]}).json()
    assert [row["label"] for row in body["data"]][::2] == [None, None]
    assert body["data"][0]["probs"] == [] and body["data"][1]["label"] == "money"
    assert post(url, "/predict", {"inputs": "", "model": "tf"}).json() == []


def test_long_texts_are_cut_and_said_so_or_refused_when_asked(url):
    long = " ".join(["bank"] * 40)  # 40 tokens and EOS; the run keeps 16
    body = post(url, "/v1/classify", {"model": "head", "input": [long, "bank"]}).json()
    assert body["usage"]["truncated_inputs"] == 1 and body["usage"]["max_length"] == 16
    refused = post(url, "/predict", {"inputs": [long], "model": "head", "truncate": False})
    assert refused.status_code == 413 and "tokens" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/v1/classify", {"model": "tf", "input": ["a"] * 9}, 413, "at most 8"),
        ("/v1/classify", {"model": "tf", "input": "x" * 401}, 413, "at most 400"),
        ("/predict", {"inputs": ["a"] * 9}, 413, "--max-texts-per-request"),
        ("/v1/classify", {"model": "nope", "input": "a"}, 404, "served: tf, multi, head"),
        ("/v1/classify", {"model": "tf", "input": []}, 422, "no texts"),
        ("/v1/classify", {"model": "tf", "input": 3}, 422, "input"),
        ("/v1/classify", {"model": "tf", "input": [1, 2]}, 422, "input"),
        ("/v1/classify", {"model": "tf"}, 422, "input: Field required"),
        ("/predict", {"inputs": "a", "raw_scores": "maybe"}, 422, "raw_scores"),
        ("/v1/classify", [1, 2], 422, ""),
    ],
)
def test_a_bad_request_gets_a_4xx_that_says_what_is_wrong(url, path, body, status, fragment):
    response = post(url, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and fragment in error["message"]


def test_a_body_over_the_largest_valid_one_is_refused_unread(url):
    limit = 6 * 8 * 400 + 65536  # the url fixture's limits
    big = b'{"input": "' + b"a" * limit + b'"}'
    response = httpx.post(url + "/v1/classify", content=big)
    assert response.status_code == 413 and "request body is over" in response.text

    def chunks():
        for _ in range(limit // 4096 + 2):
            yield b"a" * 4096

    chunked = httpx.post(url + "/v1/classify", content=chunks())  # no Content-Length
    assert chunked.status_code == 413
    small = httpx.post(
        url + "/v1/classify",
        content=iter([b'{"model": "tf", ', b'"input": "bank"}']),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200 and small.json()["data"][0]["label"] == "money"


def test_malformed_json_is_a_400(url):
    response = httpx.post(
        url + "/v1/classify", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_concurrent_requests_share_batches_and_each_caller_gets_its_own_rows(runs):
    texts, _ = make_texts(24, seed=9)
    offline = load_classifier(runs / "tf")
    expected = offline.predict_proba(texts)
    app = create_app([runs / "tf"], max_wait_ms=150, max_batch_size=32)
    with running(app) as address:
        with ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(lambda t: post(address, "/v1/classify", {"input": t}).json(), texts)
            )
        metrics = httpx.get(address + "/metrics").text
    for answer, proba in zip(answers, expected):
        np.testing.assert_allclose(answer["data"][0]["probs"], proba, atol=1e-6)
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("llmclf_batch_size_")
    }
    batches = values['llmclf_batch_size_count{model="tf"}']
    assert values['llmclf_batch_size_sum{model="tf"}'] == 24
    assert batches < 24, "no two requests shared a batch"
    assert 'http_requests_total{handler="/v1/classify",method="POST",status="200"} 24.0' in metrics
    assert "http_request_duration_seconds_bucket" in metrics and "llmclf_queue_depth" in metrics


def test_batches_run_at_shapes_the_warm_up_ran_and_answers_do_not_change(runs):
    """Bounded shapes (the server's memory stays flat): the warm-up runs every (rows,
    width) bucket once before the app exists, every later batch has one of those shapes,
    and the answers are the offline ones."""
    classifier = load_classifier(runs / "head", dtype="float32", eval_batch_size=8)
    shapes = []
    classifier.model_.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape))
    )
    app = create_app({"head": classifier}, max_wait_ms=50, shape_multiple=8)
    # 8 rows at most: buckets 1, 2, 4, 8; --max-length 16: widths 8, 16; then the
    # warm-up's own two texts, at one of those
    warm = sorted((r, w) for r in (1, 2, 4, 8) for w in (8, 16))
    assert sorted(shapes[:8]) == warm and shapes[8:] == [(2, 16)]
    texts, _ = make_texts(20, seed=4)
    texts = [t * (1 + i % 3) for i, t in enumerate(texts)]  # of several lengths
    expected = load_classifier(runs / "head", dtype="float32").predict_proba(texts)
    with running(app) as address, ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(lambda t: post(address, "/v1/classify", {"input": t}).json(), texts)
        )
    served = shapes[9:]
    assert served and set(served) <= set(warm)
    got = np.array([a["data"][0]["probs"] for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    shapes.clear()
    create_app({"head": classifier}, shape_multiple=0)
    assert shapes == [], "shape_multiple=0 still warmed up"


def test_an_api_key_guards_everything_but_health(runs):
    app = create_app([runs / "tf"], api_key="s3cret")
    with running(app) as address:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/classify"),
                             ("POST", "/predict"), ("GET", "/metrics")):  # fmt: skip
            body = {"input": "a", "inputs": "a"}
            bare = httpx.request(method, address + path, json=body)
            wrong = httpx.request(
                method, address + path, json=body, headers={"Authorization": "Bearer nope"}
            )
            good = httpx.request(
                method, address + path, json=body, headers={"Authorization": "Bearer s3cret"}
            )
            assert bare.status_code == wrong.status_code == 401, path
            assert bare.headers["www-authenticate"] == "Bearer"
            assert good.status_code == 200, path
        assert httpx.get(address + "/health").status_code == 200


BODIES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["input", "inputs", "model", "raw_scores", "truncate", "x"]) | st.text(max_size=5),
        inner, max_size=4,
    ),
    max_leaves=8,
)  # fmt: skip


@settings(deadline=None, max_examples=60)
@given(body=BODIES, path=st.sampled_from(["/v1/classify", "/predict", "/v1/models", "/health"]))
def test_random_bodies_never_get_a_5xx(url, body, path):
    response = httpx.post(url + path, json=body, timeout=30)
    assert response.status_code < 500, response.text
    raw = httpx.post(url + path, content=json.dumps(body)[:7].encode(), timeout=30)
    assert raw.status_code < 500, raw.text


@settings(deadline=None, max_examples=40)
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=8))
def test_random_texts_get_an_answer_per_text(url, texts):
    for model in ("tf", "head", "multi"):
        response = post(url, "/v1/classify", {"model": model, "input": texts})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == len(texts)


def test_a_taken_port_is_refused_before_any_model_loads(runs, capsys, monkeypatch):
    import llmclf.serve.app as serving

    monkeypatch.setattr(serving, "load_runs", lambda *a, **k: pytest.fail("loaded models"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(runs / "tf"), "--port", str(port)]) == 2
    assert "pick another --port" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--name", "a", "--name", "b"], "2 --name values for 1 runs"),
        (["--max-batch-size", "0"], "--max-batch-size must be > 0, not 0"),
        (["--max-wait-ms", "-1"], "--max-wait-ms must be ≥ 0"),
        (["--shape-multiple", "-1"], "--shape-multiple must be ≥ 0"),
    ],
)
def test_bad_serve_options_get_one_line(runs, capsys, args, fragment):
    assert main(["serve", str(runs / "tf"), "--port", str(free_port()), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_sigterm_lets_the_request_in_flight_finish(runs):
    """A request waiting in a 1.5 s batch window when SIGTERM arrives still gets its 200;
    then the server exits (re-raising SIGTERM, as uvicorn does) and no longer listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmclf.cli", "serve", str(runs / "tf"), "--port", str(port),
         "--max-wait-ms", "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(address + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(post, address, "/v1/classify", {"input": TEXTS[0]})
            time.sleep(0.5)  # the request is waiting for its batch
            process.send_signal(signal.SIGTERM)
            response = future.result(timeout=60)
        assert response.status_code == 200 and response.json()["data"][0]["label"] == "money"
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        output = process.stdout.read().decode()
        assert "Traceback" not in output, output
        with pytest.raises(httpx.HTTPError):
            httpx.get(address + "/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
