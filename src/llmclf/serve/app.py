"""The HTTP server: trained runs behind vLLM's ``/v1/classify`` and text-embeddings-
inference's ``/predict``, with dynamic micro-batching, limits, an API key, Prometheus
metrics and a page to try it.

FastAPI + uvicorn serve; ``batched`` (mixedbread's dynamic batcher) merges concurrent
requests into model batches of up to ``max_batch_size`` texts, waiting at most
``max_wait_ms``; the batch runs in the server's one model thread (torch releases the GIL),
each caller gets its own rows back, and the classifier sorts every batch by length itself.
Batches are padded to a bounded set of shapes (``batching.ShapeBuckets``; a width that is a
multiple of ``shape_multiple``, a row count from a short list), each run once at start-up,
so the server's memory stays flat however long it runs: the CPU kernels keep memory per
shape they have seen.
``prometheus-fastapi-instrumentator`` counts requests by status and times them.

Example:
    >>> app = create_app(["runs/bbc"], max_batch_size=32)  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations
# (Request, the request bodies), which are imported inside create_app.

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from llmclf.batching import ShapeBuckets, bounded_shapes
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import to_proba
from llmclf.long_text import tokens_read

log = logging.getLogger("llmclf")

SERVE_EXTRA = "pip install 'llmclf[serve]'"
DEFAULTS = {
    "max_batch_size": 32,
    "max_wait_ms": 5.0,
    "max_texts_per_request": 64,
    "max_chars_per_text": 100_000,
    "shape_multiple": 32,
}


def _imports():
    try:
        import batched  # noqa: F401
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import prometheus_fastapi_instrumentator  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise LlmclfError(f"serving needs {exc.name}: {SERVE_EXTRA}") from None


# ---------------------------------------------------------------------------------------
# The runs being served
# ---------------------------------------------------------------------------------------


@dataclass
class ServedRun:
    """One run behind the API: its classifier, what /v1/models says of it, and its
    batcher (made on first use, inside the server's event loop)."""

    name: str
    classifier: Any
    method: str
    base_model: str | None
    max_length: int | None
    tokenizer: Any = None
    shapes: ShapeBuckets | None = None  # None: every batch at its exact shape
    processor: Any = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.schema_.classes)

    @property
    def multi_label(self) -> bool:
        return bool(self.classifier.schema_.multi_label)

    def info(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "owned_by": "llmclf",
            "method": self.method,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "multi_label": self.multi_label,
            "max_length": self.max_length,
            "base_model": self.base_model,
        }

    def run_batch(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """Logits and token count of each text (the model thread runs this)."""
        with bounded_shapes(self.shapes):
            logits = self.classifier.predict_logits(texts)
        if self.tokenizer is not None:
            counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True).input_ids]
        else:  # TF-IDF: words, as its analyzer splits them roughly
            counts = [len(text.split()) for text in texts]
        return list(zip(logits, counts))

    def warm_up(self) -> bool:
        """Run every batch shape this run can be served at once, from two texts longer
        than its token limit (two: an instruct run shares their prompt's prefix, as in
        any batch); False for runs without token batches (TF-IDF) or bounded shapes."""
        if self.shapes is None or self.tokenizer is None:
            return False
        words = 4 * (self.max_length or 512) + 16
        with bounded_shapes(self.shapes, warm_up=True):
            self.classifier.predict_logits(["word " * words, "text " * words])
        return True


def served_run(
    name: str, classifier, folder: Path | None = None, shape_multiple: int | None = None
) -> ServedRun:
    """``shape_multiple``: pad batches to widths that are multiples of it and to row
    counts from a short list (``ShapeBuckets.for_batch_size``); None or 0: exact shapes."""
    config = getattr(classifier, "config_", None)
    model_cfg = getattr(config, "model", None)
    base = getattr(model_cfg, "model", None)
    tokenizer = getattr(classifier, "tokenizer_", None)
    limit = getattr(model_cfg, "max_length", None)
    long_text = getattr(config, "long_text", None)
    if long_text is not None and limit and tokenizer is not None:  # chunks read more
        limit = tokens_read(long_text, limit, tokenizer.num_special_tokens_to_add())
    train_cfg = getattr(config, "train", None)
    shapes = None
    if shape_multiple and train_cfg is not None:
        shapes = ShapeBuckets.for_batch_size(int(train_cfg.eval_batch_size), int(shape_multiple))
    return ServedRun(
        name=name,
        classifier=classifier,
        method=getattr(classifier, "method", "") or type(classifier).__name__,
        base_model=str(base) if base is not None else None,
        max_length=limit,
        tokenizer=tokenizer,
        shapes=shapes,
    )


def load_runs(
    runs: Sequence[str | Path] | Mapping[str, Any],
    names: Sequence[str] | None = None,
    shape_multiple: int | None = DEFAULTS["shape_multiple"],
    warm_up: bool = True,
    **overrides,
) -> list[ServedRun]:
    """Load every run (paths, or ``{name: path or fitted classifier}``) before serving,
    and with ``warm_up`` run each of its batch shapes once (see ``served_run``). Names
    default to the run folders' names; an instruct run is served in score mode."""
    from llmclf.runs import load_classifier

    if isinstance(runs, Mapping):
        pairs = list(runs.items())
    else:
        given = list(names or [])
        if len(given) > len(runs):
            raise LlmclfError(f"{len(given)} --name values for {len(runs)} runs")
        pairs = [
            (given[i] if i < len(given) else Path(run).resolve().name, run)
            for i, run in enumerate(runs)
        ]
    seen = [name for name, _ in pairs]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise LlmclfError(
            f"two runs would be served as {', '.join(duplicates)}: give each its own --name"
        )
    if not pairs:
        raise LlmclfError("serve needs at least one RUN")
    served = []
    for name, run in pairs:
        if isinstance(run, (str, Path)):
            from llmclf.run_folder import RunFolder

            method = RunFolder(run).config().get("method")
            extra = {"predict_mode": "score"} if method == "instruct" else {}
            log.info("loading %s as %r", run, name)
            classifier = load_classifier(run, progress=False, **{**overrides, **extra})
        else:
            classifier = run
        served.append(served_run(name, classifier, shape_multiple=shape_multiple))
        if warm_up:
            start = time.perf_counter()
            if served[-1].warm_up():
                log.info(
                    "%r: ran each batch shape once in %.1f s (--no-warm-up skips this)",
                    name, time.perf_counter() - start,
                )  # fmt: skip
    return served


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with a 413 before it is read into
    memory (by its Content-Length, or while a chunked body arrives), so no client can
    exhaust the server's memory with one request. Plain ASGI middleware."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def refuse(self, send) -> None:
        import json

        body = json.dumps(
            error_body(413, f"the request body is over {self.limit} bytes: send fewer or "
                       "shorter texts")
        ).encode()  # fmt: skip
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self.refuse(send)
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # a chunked body: read it here, up to the limit
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self.refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict:
    """OpenAI / vLLM style: {"error": {"message", "type", "code"}}."""
    return {"error": {"message": message, "type": kind, "code": status}}


def create_app(
    runs: Sequence[str | Path] | Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    max_batch_size: int = DEFAULTS["max_batch_size"],
    max_wait_ms: float = DEFAULTS["max_wait_ms"],
    max_texts_per_request: int = DEFAULTS["max_texts_per_request"],
    max_chars_per_text: int = DEFAULTS["max_chars_per_text"],
    api_key: str | None = None,
    shape_multiple: int | None = DEFAULTS["shape_multiple"],
    warm_up: bool = True,
    **overrides,
):
    """A FastAPI app serving ``runs`` (every model is loaded, and with ``warm_up`` has run
    each of its batch shapes, before this returns).

    ``shape_multiple``: batches are padded to widths that are multiples of it and to row
    counts from a short list, so memory stays bounded (None or 0: exact shapes).
    ``overrides`` go to each run's loader (``device``, ``dtype``, ``eval_batch_size``,
    ``int8``). With ``api_key``, every endpoint but ``/health`` and the static page and
    docs needs ``Authorization: Bearer <api_key>``.
    """
    _imports()
    from batched.aio import AsyncBatchProcessor
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from prometheus_client import CollectorRegistry, Gauge, Histogram
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from llmclf.serve.schemas import ClassifyRequest, PredictRequest

    for name, value in (
        ("max_batch_size", max_batch_size),
        ("max_texts_per_request", max_texts_per_request),
        ("max_chars_per_text", max_chars_per_text),
    ):
        if int(value) < 1:
            raise LlmclfError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if max_wait_ms < 0:
        raise LlmclfError(f"--max-wait-ms must be >= 0, not {max_wait_ms}")
    if shape_multiple is not None and int(shape_multiple) < 0:
        raise LlmclfError(f"--shape-multiple must be >= 0 (0: exact shapes), not {shape_multiple}")
    # Every torch call of the server (loading, the dtype probe, every batch of every run)
    # happens in this one thread. Each thread that runs torch ops gets its own OpenMP team,
    # and once libgomp manages more threads than there are CPUs it stops spinning between
    # parallel regions: batches computed in a second thread ran 23 % slower on 2 cores.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-model")
    served = {
        run.name: run
        for run in model_thread.submit(
            load_runs, runs, names, shape_multiple, warm_up, **overrides
        ).result()
    }
    default = next(iter(served))

    registry = CollectorRegistry()
    batch_sizes = Histogram(
        "llmclf_batch_size",
        "texts per model batch",
        ["model"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        registry=registry,
    )
    batch_seconds = Histogram(
        "llmclf_batch_seconds",
        "seconds the model took per batch (busy time: its sum over the wall time)",
        ["model"],
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=registry,
    )
    queue_depth = Gauge(
        "llmclf_queue_depth", "texts waiting for a model batch", ["model"], registry=registry
    )
    texts_total = Histogram(
        "llmclf_texts_per_request", "texts per request", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        registry=registry,
    )  # fmt: skip

    def batch_function(run: ServedRun):
        def timed(texts: list[str]):
            with batch_seconds.labels(run.name).time():
                return run.run_batch(texts)

        async def run_batch(texts: list[str]):
            batch_sizes.labels(run.name).observe(len(texts))
            return await asyncio.get_running_loop().run_in_executor(model_thread, timed, texts)

        return run_batch

    for run in served.values():
        run.processor = AsyncBatchProcessor(
            batch_function(run), batch_size=int(max_batch_size), timeout_ms=float(max_wait_ms)
        )
        queue_depth.labels(run.name).set_function(
            lambda processor=run.processor: len(processor.batch_queue)
        )

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise StarletteHTTPException(401, "a valid 'Authorization: Bearer <key>' is needed")

    guarded = [Depends(check_key)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        model_thread.shutdown(wait=True)  # in-flight batches end first (graceful shutdown)

    app = FastAPI(
        title="llmclf",
        summary="Text classifiers trained with llmclf, behind vLLM's /v1/classify and "
        "text-embeddings-inference's /predict",
        lifespan=lifespan,
    )
    app.state.runs = served
    app.state.registry = registry
    # the largest body a valid request can have: every text at its limit, JSON-escaped
    app.add_middleware(BodyLimit, limit=6 * max_texts_per_request * max_chars_per_text + 65536)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)), exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            reason = next(p for p in problems if p.get("type") == "json_invalid")
            where = (reason.get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON{f' ({where})' if where else ''}"
            return JSONResponse(error_body(400, message), 400)
        parts = []
        for problem in problems[:5]:
            where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
            parts.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
        return JSONResponse(error_body(422, "; ".join(parts) or "invalid request"), 422)

    def pick(model: str | None) -> ServedRun:
        if model is None:
            return served[default]
        if model not in served:
            raise StarletteHTTPException(
                404, f"model {model!r} is not served here; served: {', '.join(served)}"
            )
        return served[model]

    def texts_of(value: str | list[str]) -> list[str]:
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise StarletteHTTPException(422, "no texts: give a string or a non-empty list")
        if len(texts) > max_texts_per_request:
            raise StarletteHTTPException(
                413,
                f"{len(texts)} texts in one request; at most {max_texts_per_request} "
                "(--max-texts-per-request)",
            )
        longest = max(len(t) for t in texts)
        if longest > max_chars_per_text:
            raise StarletteHTTPException(
                413,
                f"a text of {longest} characters; at most {max_chars_per_text} "
                "(--max-chars-per-text)",
            )
        texts_total.observe(len(texts))
        return texts

    async def classify(run: ServedRun, texts: list[str]):
        """(logits, tokens) per text; None for an empty text (as `llmclf predict`)."""
        real = [i for i, t in enumerate(texts) if t.strip()]
        out: list = [None] * len(texts)
        if real:
            results = await run.processor([texts[i] for i in real])
            for i, result in zip(real, results):
                out[i] = result
        return out

    def proba_of(run: ServedRun, logits: np.ndarray) -> np.ndarray:
        return to_proba(logits[None, :], run.multi_label, run.classifier.temperature_)[0]

    def usage(run: ServedRun, results: list) -> dict:
        tokens = sum(r[1] for r in results if r is not None)
        limit = run.max_length
        truncated = sum(1 for r in results if r is not None and limit and r[1] > limit)
        return {
            "prompt_tokens": int(tokens),
            "total_tokens": int(tokens),
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "truncated_inputs": int(truncated),
            "max_length": limit,
        }

    @app.get("/health", tags=["service"])
    async def health():
        return {"status": "ok", "models": list(served)}

    @app.get("/v1/models", dependencies=guarded, tags=["service"])
    async def models():
        return {"object": "list", "data": [run.info() for run in served.values()]}

    @app.post("/v1/classify", dependencies=guarded, tags=["classify"])
    @app.post("/classify", dependencies=guarded, tags=["classify"])
    async def classify_vllm(body: ClassifyRequest):
        """vLLM's classification API; ``labels`` added for multi-label runs. An empty
        text gets ``label`` null and ``probs`` [] (``llmclf predict``'s empty row)."""
        run = pick(body.model)
        texts = texts_of(body.input)
        results = await classify(run, texts)
        schema = run.classifier.schema_
        data = []
        for index, result in enumerate(results):
            row: dict[str, Any] = {"index": index, "num_classes": len(run.classes)}
            if result is None:
                row.update({"label": None, "probs": []})
                if run.multi_label:
                    row["labels"] = []
            else:
                proba = proba_of(run, result[0])
                row["probs"] = [float(p) for p in proba]
                row["label"] = run.classes[int(np.argmax(proba))]
                if run.multi_label:
                    row["labels"] = schema.decode(schema.decide(proba[None, :]))[0]
            data.append(row)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": run.name,
            "data": data,
            "usage": usage(run, results),
        }

    @app.post("/predict", dependencies=guarded, tags=["classify"])
    async def predict_tei(body: PredictRequest):
        """text-embeddings-inference's predict API: ``[{"label", "score"}]`` sorted by
        score for one text, a list of those for a list. ``truncate: false`` refuses a
        text over the run's token limit (413) instead of cutting it as predict does;
        ``model`` (an llmclf addition) picks a run."""
        run = pick(body.model)
        texts = texts_of(body.inputs)
        results = await classify(run, texts)
        limit = run.max_length
        if body.truncate is False and limit:
            over = [i for i, r in enumerate(results) if r is not None and r[1] > limit]
            if over:
                raise StarletteHTTPException(
                    413,
                    f"input {over[0]} has {results[over[0]][1]} tokens; the model takes "
                    f"{limit} (send truncate: true to cut it)",
                )
        answers = []
        for result in results:
            if result is None:
                answers.append([])
                continue
            scores = result[0] if body.raw_scores else proba_of(run, result[0])
            pairs = sorted(zip(run.classes, scores), key=lambda p: -float(p[1]))
            answers.append([{"label": label, "score": float(score)} for label, score in pairs])
        return answers[0] if isinstance(body.inputs, str) else answers

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("llmclf.serve").joinpath("page.html").read_text("utf-8")

    Instrumentator(
        registry=registry, excluded_handlers=["/metrics"], should_group_status_codes=False
    ).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=True, dependencies=guarded, tags=["service"]
    )
    return app


# ---------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before any model loads (a clear line, not a uvicorn
    traceback after minutes of loading)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LlmclfError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port"
            ) from None


def serve(
    runs: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    graceful_seconds: float = 30.0,
    **options,
) -> None:
    """Load every run, then serve until SIGTERM / Ctrl-C, which stops accepting new
    connections and lets the requests in flight finish (up to ``graceful_seconds``)."""
    _imports()
    import uvicorn

    if not 0 < int(port) < 65536:
        raise LlmclfError(f"--port must be between 1 and 65535, not {port}")
    check_port(host, int(port))
    app = create_app(runs, **options)
    if host not in ("127.0.0.1", "localhost", "::1") and options.get("api_key") is None:
        log.warning(
            "serving on %s without --api-key: anyone who can reach this port can use it", host
        )
    log.info(
        "serving %s on http://%s:%d (page: /, docs: /docs)", ", ".join(app.state.runs), host, port
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        log_level="warning",
        timeout_graceful_shutdown=graceful_seconds,
    )
    uvicorn.Server(config).run()
