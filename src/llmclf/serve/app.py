"""``llmclf serve``: trained runs behind vLLM's ``/v1/classify`` and text-embeddings-
inference's ``/predict``, with dynamic micro-batching, limits, an API key, Prometheus
metrics and a page to try it.

What the command takes is ``ServeOptions``; ``create_app`` loads every run and builds the
FastAPI app, ``serve`` runs it under uvicorn. The layers below, as vLLM's entrypoints
have them: ``protocol.py`` (every request and response body), ``serving.py`` (one class
per API, a typed request in, a typed response out, no HTTP), ``api_server.py`` (thin
route handlers, auth, errors, metrics, the batchers: the part that needs the ``serve``
extra, imported only here) and ``served.py`` (a run and the one call its model thread
makes per batch).

``batched`` (mixedbread's dynamic batcher) merges concurrent requests into model batches
of up to ``max_batch_size`` texts, waiting at most ``max_wait_ms``; the batch runs in the
server's one model thread (torch releases the GIL), each caller gets its own rows back,
and the classifier sorts every batch by length itself. Batches are padded to a bounded
set of shapes (``batching.ShapeBuckets``; a width that is a multiple of
``shape_multiple``, a row count from a short list), each run once at start-up, so the
server's memory stays flat however long it runs: the CPU kernels keep memory per shape
they have seen.

Example:
    >>> app = create_app(["runs/bbc"], max_batch_size=32)  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmclf.config import NON_NEGATIVE, POSITIVE, Options, flag, option
from llmclf.errors import LlmclfError
from llmclf.serve.served import ServedRun, served_run

log = logging.getLogger("llmclf")

SERVE_EXTRA = "pip install 'llmclf[serve]'"
API_KEY_VARIABLE = "LLMCLF_API_KEY"


def _check_port(name: str, value: int) -> None:
    if not 0 < value < 65536:
        raise LlmclfError(f"{flag(name)} must be between 1 and 65535, not {value}")


@dataclass
class ServeOptions(Options):
    """How ``llmclf serve`` serves its runs.

    The run loader's options (``device``, ``dtype``, ``int8``, ...) are not among these:
    ``create_app`` and ``serve`` pass them on as ``overrides``."""

    name: list[str] | None = option(
        None,
        "the name a run is served under (repeat, in the runs' order; default: the run "
        "folder's name)",
        repeat=True,
    )
    host: str = option(
        "127.0.0.1",
        "address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes it to every "
        "network the machine is on, so set --api-key)",
    )
    port: int = option(8000, "port", check=_check_port)
    max_batch_size: int = option(32, "texts per model batch", bound=POSITIVE)
    max_wait_ms: float = option(
        5.0, "how long a batch waits for more requests, in ms", bound=NON_NEGATIVE
    )
    max_texts_per_request: int = option(64, "more is a 413", bound=POSITIVE)
    max_chars_per_text: int = option(
        100_000,
        "longer is a 413 (texts are cut at the run's max length anyway)",
        bound=POSITIVE,
    )
    api_key: str | None = option(
        None,
        f"require 'Authorization: Bearer KEY' on every endpoint but /health (none: "
        f"${API_KEY_VARIABLE} if set, else open; an empty key: open)",
    )
    shape_multiple: int = option(
        32,
        "pad each batch to a width that is a multiple of this and to a row count from a "
        "short list, so memory stays flat (0: exact shapes)",
        bound=NON_NEGATIVE,
    )
    warm_up: bool = option(True, "run each batch shape once before the port opens")

    def resolved_api_key(self) -> str | None:
        """The key every endpoint but ``/health`` needs: ``api_key``, else
        ``$LLMCLF_API_KEY`` (read now, not at import); None or empty: open."""
        key = os.environ.get(API_KEY_VARIABLE) if self.api_key is None else self.api_key
        return key or None


def resolve_options(
    options: ServeOptions | None, overrides: Mapping[str, Any] | None, values: Mapping[str, Any]
) -> tuple[ServeOptions, dict[str, Any]]:
    """``values`` parted into ``ServeOptions`` fields (over ``options``) and the run
    loader's options (with ``overrides``): ``device``, ``dtype``, ``int8``, ...

    Example:
        >>> options, loader = resolve_options(None, None, {"port": 9000, "dtype": "float32"})
        >>> options.port, loader
        (9000, {'dtype': 'float32'})
    """
    names = ServeOptions.names()
    mine = {k: v for k, v in values.items() if k in names}
    loader = {**(overrides or {}), **{k: v for k, v in values.items() if k not in names}}
    if options is None:
        return ServeOptions(**mine), loader
    return dataclasses.replace(options, **mine), loader  # validated again


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
# Loading the runs
# ---------------------------------------------------------------------------------------


def _named(runs: Sequence[str | Path] | Mapping[str, Any], names: Sequence[str] | None):
    """``(name, run)`` pairs: a mapping's keys, or ``names`` in order, then each run
    folder's name; refused when two would share a name."""
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
    return pairs


def _load(run: str | Path, overrides: dict[str, Any]):
    """A run folder's classifier, with the options its method declares for serving
    (``serve_overrides``: an instruct run scores, so it has probabilities)."""
    from llmclf.methods.registry import method_classes
    from llmclf.run_folder import RunFolder
    from llmclf.runs import load_classifier

    declared = method_classes().get(RunFolder(run).config().get("method"))
    serving = declared.serve_overrides if declared is not None else {}
    return load_classifier(run, progress=False, **{**overrides, **serving})


def load_runs(
    runs: Sequence[str | Path] | Mapping[str, Any],
    options: ServeOptions | None = None,
    **overrides,
) -> list[ServedRun]:
    """Load every run (paths, or ``{name: path or fitted classifier}``) before serving,
    named by ``options.name`` (default: the run folders' names), and with
    ``options.warm_up`` run each of its batch shapes once (see ``served_run``).
    ``overrides`` go to each run's loader (``device``, ``dtype``, ``int8``, ...).

    Example:
        >>> load_runs(["runs/bbc"], dtype="float32")[0].name  # doctest: +SKIP
        'bbc'
    """
    options = options or ServeOptions()
    served = []
    for name, run in _named(runs, options.name):
        if isinstance(run, (str, Path)):
            log.info("loading %s as %r", run, name)
            classifier = _load(run, overrides)
        else:
            classifier = run
        served.append(served_run(name, classifier, options.shape_multiple))
        start = time.perf_counter()
        if options.warm_up and served[-1].warm_up():
            log.info(
                "%r: ran each batch shape once in %.1f s (--no-warm-up skips this)",
                name, time.perf_counter() - start,
            )  # fmt: skip
    return served


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


def create_app(
    runs: Sequence[str | Path] | Mapping[str, Any],
    options: ServeOptions | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    **values,
):
    """A FastAPI app serving ``runs`` (every model is loaded, and with ``warm_up`` has run
    each of its batch shapes, before this returns).

    ``values`` are ``ServeOptions`` fields (``max_batch_size=16``) over ``options``; any
    other keyword, and ``overrides``, go to each run's loader (``device``, ``dtype``,
    ``eval_batch_size``, ``int8``, ``trust_remote_code``, predict-time options). With an
    API key (``api_key``, else ``$LLMCLF_API_KEY``), every endpoint but ``/health``, the
    page and the docs needs ``Authorization: Bearer <key>``.

    Example:
        >>> app = create_app({"news": clf}, max_wait_ms=10, api_key="s3cret")  # doctest: +SKIP
    """
    options, loader = resolve_options(options, overrides, values)
    _imports()
    from llmclf.serve.api_server import build_app

    # Every torch call of the server (loading, the dtype probe, every batch of every run)
    # happens in this one thread. Each thread that runs torch ops gets its own OpenMP team,
    # and once libgomp manages more threads than there are CPUs it stops spinning between
    # parallel regions: batches computed in a second thread ran 23 % slower on 2 cores.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-model")
    try:
        served = model_thread.submit(load_runs, runs, options, **loader).result()
    except BaseException:
        model_thread.shutdown(wait=False)
        raise
    return build_app(
        served,
        model_thread,
        max_batch_size=options.max_batch_size,
        max_wait_ms=options.max_wait_ms,
        max_texts_per_request=options.max_texts_per_request,
        max_chars_per_text=options.max_chars_per_text,
        api_key=options.resolved_api_key(),
    )


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
    options: ServeOptions | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    graceful_seconds: float = 30.0,
    **values,
) -> None:
    """Load every run, then serve until SIGTERM / Ctrl-C, which stops accepting new
    connections and lets the requests in flight finish (up to ``graceful_seconds``).
    ``options``, ``overrides`` and ``values`` as for ``create_app``.

    Example:
        >>> serve(["runs/bbc"], ServeOptions(port=9000), overrides={"dtype": "float32"})  # doctest: +SKIP
    """
    options, loader = resolve_options(options, overrides, values)
    _imports()
    import uvicorn

    check_port(options.host, options.port)
    app = create_app(runs, options, overrides=loader)
    if options.host not in ("127.0.0.1", "localhost", "::1") and app.state.api_key is None:
        log.warning(
            "serving on %s without --api-key: anyone who can reach this port can use it",
            options.host,
        )
    log.info(
        "serving %s on http://%s:%d (page: /, docs: /docs)",
        ", ".join(app.state.runs), options.host, options.port,
    )  # fmt: skip
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        timeout_graceful_shutdown=graceful_seconds,
    )
    uvicorn.Server(config).run()
