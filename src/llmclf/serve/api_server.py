"""The HTTP layer (vLLM's ``api_server.py``): thin route handlers over the serving classes,
the API key, the error bodies, the request-body limit, Prometheus metrics and the dynamic
batcher of each run. Imported by ``create_app`` only, as it needs the ``serve`` extra.

Every route handler is a few lines: it reads the serving class from ``app.state`` and
returns its typed response. A ``ServingError`` (the client's mistake) becomes the error
body with its status; so do FastAPI's own 404s, 401s and validation errors, so no request
a client can send gets a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from batched.aio import AsyncBatchProcessor
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException

from llmclf.serve.protocol import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Health,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from llmclf.serve.served import ServedRun
from llmclf.serve.serving import ServedModels, ServingClassify, ServingError, ServingPredict

# ---------------------------------------------------------------------------------------
# Auth, errors, the body limit
# ---------------------------------------------------------------------------------------


def check_key(request: Request) -> None:
    """With ``app.state.api_key`` set, a route needs ``Authorization: Bearer <key>``."""
    key = request.app.state.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), key):
        raise HTTPException(401, "a valid 'Authorization: Bearer <key>' is needed")


GUARDED = [Depends(check_key)]


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse.of(status, message).model_dump(), status, headers=headers)


async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return error_response(exc.status, exc.message)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return error_response(exc.status_code, str(exc.detail), headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON; 422 naming the fields for one of the wrong shape."""
    problems = exc.errors()
    invalid_json = next((p for p in problems if p.get("type") == "json_invalid"), None)
    if invalid_json is not None:
        where = (invalid_json.get("ctx") or {}).get("error", "")
        return error_response(400, f"the body is not valid JSON{f' ({where})' if where else ''}")
    parts = []
    for problem in problems[:5]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
    return error_response(422, "; ".join(parts) or "invalid request")


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with a 413 before it is read into
    memory (by its Content-Length, or while a chunked body arrives), so no client can
    exhaust the server's memory with one request. Plain ASGI middleware."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def refuse(self, send) -> None:
        message = f"the request body is over {self.limit} bytes: send fewer or shorter texts"
        body = json.dumps(ErrorResponse.of(413, message).model_dump()).encode()
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


def largest_body(max_texts_per_request: int, max_chars_per_text: int) -> int:
    """The largest body a valid request can have: every text at its limit, JSON-escaped
    (6 bytes a character at worst), and room for the rest."""
    return 6 * max_texts_per_request * max_chars_per_text + 65536


# ---------------------------------------------------------------------------------------
# Metrics and the batchers
# ---------------------------------------------------------------------------------------


class ServerMetrics:
    """llmclf's Prometheus metrics, in the app's own registry (``/metrics`` also carries
    the instrumentator's ``http_requests_total`` and ``http_request_duration_seconds``)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.batch_sizes = Histogram(
            "llmclf_batch_size",
            "texts per model batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "llmclf_batch_seconds",
            "seconds the model took per batch (busy time: its sum over the wall time)",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "llmclf_queue_depth", "texts waiting for a model batch", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.texts_per_request = Histogram(
            "llmclf_texts_per_request", "texts per request",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry,
        )  # fmt: skip


class ModelBatch:
    """What the batcher calls with a merged batch of one run's texts (``process``): the batch
    runs in the server's one model thread (torch releases the GIL, so requests keep
    arriving), timed."""

    def __init__(self, run: ServedRun, metrics: ServerMetrics, model_thread: ThreadPoolExecutor):
        self.run = run
        self.metrics = metrics
        self.model_thread = model_thread

    def timed(self, texts: list[str]):
        with self.metrics.batch_seconds.labels(self.run.name).time():
            return self.run.run_batch(texts)

    async def process(self, texts: list[str]):
        self.metrics.batch_sizes.labels(self.run.name).observe(len(texts))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.model_thread, self.timed, texts)


def attach_batcher(
    run: ServedRun,
    metrics: ServerMetrics,
    model_thread: ThreadPoolExecutor,
    max_batch_size: int,
    max_wait_ms: float,
) -> None:
    """Give ``run`` its dynamic batcher (``batched``): concurrent requests merge into
    batches of up to ``max_batch_size`` texts, each waiting at most ``max_wait_ms``."""
    run.processor = AsyncBatchProcessor(
        # a bound coroutine method: batched awaits it (a callable object it would not)
        ModelBatch(run, metrics, model_thread).process,
        batch_size=max_batch_size,
        timeout_ms=max_wait_ms,
    )
    queue = run.processor.batch_queue
    metrics.queue_depth.labels(run.name).set_function(lambda: len(queue))


# ---------------------------------------------------------------------------------------
# The routes
# ---------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/health", tags=["service"])
async def health(request: Request) -> Health:
    return request.app.state.models.health()


@router.get("/v1/models", dependencies=GUARDED, tags=["service"])
async def models(request: Request) -> ModelList:
    return request.app.state.models.model_list()


@router.post("/v1/classify", dependencies=GUARDED, tags=["classify"])
@router.post("/classify", dependencies=GUARDED, tags=["classify"])
async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
    """vLLM's classification API; ``labels`` added for multi-label runs. An empty text
    gets ``label`` null and ``probs`` [] (``llmclf predict``'s empty row)."""
    return await request.app.state.classify.classify(body)


@router.post("/predict", dependencies=GUARDED, tags=["classify"])
async def predict(body: PredictRequest, request: Request) -> PredictResponse:
    """text-embeddings-inference's predict API: ``[{"label", "score"}]`` sorted by score
    for one text, a list of those for a list. ``truncate: false`` refuses a text over the
    run's token limit (413) instead of cutting it as predict does; ``model`` (an llmclf
    addition) picks a run."""
    return await request.app.state.predict.predict(body)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return resources.files("llmclf.serve").joinpath("page.html").read_text("utf-8")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    app.state.model_thread.shutdown(wait=True)  # in-flight batches end first (graceful)


def build_app(
    runs: list[ServedRun],
    model_thread: ThreadPoolExecutor,
    *,
    max_batch_size: int,
    max_wait_ms: float,
    max_texts_per_request: int,
    max_chars_per_text: int,
    api_key: str | None,
) -> FastAPI:
    """The FastAPI app serving ``runs`` (already loaded) through ``model_thread``, which
    it shuts down when the server stops."""
    metrics = ServerMetrics()
    for run in runs:
        attach_batcher(run, metrics, model_thread, max_batch_size, max_wait_ms)
    served = ServedModels(
        {run.name: run for run in runs},
        max_texts_per_request,
        max_chars_per_text,
        on_texts=metrics.texts_per_request.observe,
    )
    app = FastAPI(
        title="llmclf",
        summary="Text classifiers trained with llmclf, behind vLLM's /v1/classify and "
        "text-embeddings-inference's /predict",
        lifespan=lifespan,
    )
    app.state.runs = served.runs
    app.state.models = served
    app.state.classify = ServingClassify(served)
    app.state.predict = ServingPredict(served)
    app.state.api_key = api_key
    app.state.model_thread = model_thread
    app.state.registry = metrics.registry
    app.add_middleware(BodyLimit, limit=largest_body(max_texts_per_request, max_chars_per_text))
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(router)
    Instrumentator(
        registry=metrics.registry, excluded_handlers=["/metrics"], should_group_status_codes=False
    ).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=True, dependencies=GUARDED, tags=["service"]
    )
    return app
